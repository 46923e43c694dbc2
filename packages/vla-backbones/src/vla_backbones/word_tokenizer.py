"""Tiny local word-level tokenizers for the language backbones: smoke runs and tests, nothing downloaded.

:func:`save_word_tokenizer` writes a directory that ``transformers.AutoTokenizer.from_pretrained``
loads (what ``eagle``'s ``tokenizer_path`` and ``paligemma``'s ``tokenizer`` expect). Text is split
on whitespace and punctuation (``tokenizers``' ``Whitespace`` pre-tokenizer); a word outside the
vocabulary becomes the unknown token. Special tokens are matched whole before the split (prompt
markers such as ``<|im_start|>`` or ``<IMG_CONTEXT>``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# Words the tiny configs' tokenizers know: the contract suite's tasks and the built-in toy task's.
TINY_TASK_WORDS = ("pick up the red cube", "open the top drawer", "reach the red blue target")


def save_word_tokenizer(
    directory: str | os.PathLike,
    words: Iterable[str],
    *,
    special_tokens: Iterable[str] = (),
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
    bos_token: str | None = None,
) -> dict[str, int]:
    """Write a word-level tokenizer to ``directory`` (``save_pretrained`` format). Returns its vocabulary.

    Ids: ``pad_token`` 0, ``bos_token`` (if given) 1, ``unk_token`` next, then ``words`` (split the
    way text is; duplicates dropped, sorted), then ``special_tokens`` in the order given. With
    ``bos_token`` every encoded text starts with it (PaliGemma's convention). Needs ``transformers``
    (which brings ``tokenizers``).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    pieces = {piece for text in words for piece, _ in splitter.pre_tokenize_str(text)}
    specials = list(dict.fromkeys(special_tokens))
    fixed = [pad_token, *([bos_token] if bos_token else []), unk_token]
    clash = sorted(set(fixed) & set(specials))
    if clash:
        raise ValueError(f"save_word_tokenizer: special_tokens repeat the pad/bos/unk tokens {clash}")
    vocab = {token: i for i, token in enumerate([*fixed, *sorted(pieces - set(fixed) - set(specials)), *specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
    tok.pre_tokenizer = splitter
    tok.add_special_tokens(specials)
    if bos_token:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos_token} $A", special_tokens=[(bos_token, 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad_token, unk_token=unk_token, bos_token=bos_token)
    fast.save_pretrained(str(directory))
    return dict(vocab)
