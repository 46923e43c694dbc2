"""The experts' attention masks over ``[prefix | suffix]`` keys.

The expert layers themselves are :class:`vla_core.gemma.GemmaDecoderLayer` (with ``past_kv``: layer i
attends to prefix layer i's K/V plus the suffix); ``scaled_dot_product_attention`` runs under the
additive bias built here.

Shapes: ``B`` batch, ``S`` suffix tokens, ``P`` prefix tokens, ``H`` horizon.
"""

from __future__ import annotations

import torch
from torch import Tensor
from vla_core.gemma import additive_bias


def suffix_allowed(horizon: int, device: torch.device | None = None, *, state_token: bool = True) -> Tensor:
    """(S, S) bool. pi0 (``state_token``, S = 1 + H): the state token sees itself; action tokens see the
    state and every action. pi0.5 (S = H): action tokens see every action."""
    size = horizon + int(state_token)
    allowed = torch.ones(size, size, dtype=torch.bool, device=device)
    if state_token:
        allowed[0, 1:] = False
    return allowed


def attention_bias(prefix_mask: Tensor, suffix_allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive bias (B, 1, S, P + S) for suffix queries over ``[prefix | suffix]`` keys.

    prefix_mask (B, P) bool (True = a valid prefix token, seen by every suffix token); suffix_allowed
    (S, S) bool (:func:`suffix_allowed`).
    """
    b, s = prefix_mask.shape[0], suffix_allowed.shape[0]
    allowed = torch.cat([prefix_mask[:, None, :].expand(b, s, -1), suffix_allowed.expand(b, s, s)], dim=-1)
    return additive_bias(allowed[:, None], dtype)
