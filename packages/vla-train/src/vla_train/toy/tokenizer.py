"""A word-level tokenizer for the toy task's instructions, for the language backbones.

The toy task's ``task`` strings ("reach the red target") use a handful of words; a policy with a
language backbone (``paligemma``, ``eagle``) trained from scratch on it needs a tokenizer that knows
them, not a 256k-word download. :func:`save_toy_tokenizer` writes one (``save_pretrained`` format,
what ``paligemma``'s ``tokenizer`` field names) that also knows pi0.5's prompt template and every
state bin number (``discrete_state_bins``), so no prompt token becomes the unknown token.

    vla convert toy-tokenizer runs/toy_tokenizer      # then: vla train pi05_toy

Needs ``vla-backbones`` (``pip install 'vla-train[models]'``), imported when called.
"""

from __future__ import annotations

import os

from vla_train.toy.task import COLORS, ReachGeometry, instruction


def toy_instructions() -> list[str]:
    """Every instruction the toy task gives, one per target colour."""
    geo = ReachGeometry(num_targets=len(COLORS))
    return [instruction(goal, geo) for goal in range(geo.num_targets)]


def save_toy_tokenizer(directory: str | os.PathLike, *, state_bins: int = 256) -> dict[str, int]:
    """Write the toy task's word-level tokenizer to ``directory``; returns its vocabulary (word -> id).

    Ids: ``<pad>`` 0, ``<bos>`` 1 (prepended to every text, PaliGemma's convention), ``<unk>`` 2, then
    the instruction words, pi0.5's prompt words ("Task", "State", "Action", punctuation) and the bin
    numbers ``0 .. state_bins - 1``. A policy's ``vocab_size`` must be at least ``len(vocabulary)``.
    """
    from vla_core import MissingExtraError

    if state_bins < 1:
        raise ValueError(f"save_toy_tokenizer: state_bins must be >= 1, received {state_bins}")
    try:
        from vla_backbones.paligemma import prompt_words
        from vla_backbones.word_tokenizer import save_word_tokenizer
    except ImportError as err:
        raise MissingExtraError(f"the toy tokenizer needs vla-backbones: pip install 'vla-train[models]' ({err})") from None
    return save_word_tokenizer(directory, [*toy_instructions(), prompt_words(state_bins)], bos_token="<bos>")
