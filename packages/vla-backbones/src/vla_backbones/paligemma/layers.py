"""The PaliGemma prefix's attention mask; the Gemma layer pieces live in :mod:`vla_core.gemma`.

Shapes: ``B`` batch, ``T`` prefix tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor
from vla_core.gemma import additive_bias


def prefix_attention_bias(pad_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bidirectional attention among valid tokens: (B, T) bool -> additive bias (B, 1, T, T)."""
    return additive_bias(pad_mask[:, None, :] & pad_mask[:, :, None], dtype)[:, None]
