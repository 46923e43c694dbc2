"""Dropout with a cheaper CPU mask: one 64-bit random draw per four elements.

``torch.nn.functional.dropout`` on CPU draws its mask with ``bernoulli_``, which costs about as
much as a GEMM's worth of memory traffic on the big activations of a transformer training step
(ACT: ~8 % of a CPU step; PyTorch's vectorised MKL Bernoulli is only used on Intel CPUs). Here
the mask comes from ``random_`` over int64 (the generator's cost is per 64-bit draw) viewed as
four int16 lanes, each dropped when it falls below a threshold: P(drop) = round(p * 2^16) / 2^16,
within 7.7e-6 of ``p`` (FlashAttention's fused dropout rounds p to 8 bits). The kept elements are
scaled by 1 / (1 - p) and the backward pass multiplies by the same multiplier, exactly as
``F.dropout`` (which is used unchanged off the CPU, where its fused kernels win).
Random numbers come from the default CPU generator, so ``torch.manual_seed`` makes masks repeat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANE = torch.int16
_LANES_PER_DRAW = 4  # int16 lanes in one int64 draw
_LANE_SPAN = 2**16


def _random_lanes(shape: torch.Size | tuple[int, ...], device: torch.device | str) -> Tensor:
    """int16 tensor of ``shape``, uniform over all int16 values: the lanes of one 64-bit draw per four elements."""
    n = math.prod(shape)
    bits = torch.empty(-(-n // _LANES_PER_DRAW), dtype=torch.int64, device=device).random_(-(2**63), None)
    return bits.view(_LANE)[:n].view(shape)


def _threshold(p: float) -> int:
    """The int16 value below which a lane is dropped: P(lane < threshold) = round(p * 2^16) / 2^16
    (at most 1 - 2^-16: a threshold must fit in int16)."""
    return min(round(p * _LANE_SPAN), _LANE_SPAN - 1) - _LANE_SPAN // 2


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """Bool tensor of ``shape``: True (keep) with probability 1 - p, independently per element."""
    return _random_lanes(shape, device) >= _threshold(p)


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> Tensor:
    """``~keep_mask(shape, p, device)`` from the same random draw (so the same seed gives the complement)."""
    return _random_lanes(shape, device) < _threshold(p)


def keep_scale(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype,
               device: torch.device | str = "cpu") -> Tensor:
    """Float tensor of ``shape``: 1 / (1 - p) where kept (:func:`keep_mask`), 0 where dropped."""
    return keep_mask(shape, p, device).to(dtype).mul_(1.0 / (1.0 - p))


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheaper mask on CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p == 1.0:
        return F.dropout(x, p, training)
    # A float multiplier, not a bool mask: x * bool goes through PyTorch's slow casting loop, and
    # autograd's backward of the product is the same multiply by the saved multiplier.
    return x * keep_scale(x.shape, p, x.dtype, x.device)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same arguments, no state) using :func:`dropout`; ``inplace=True`` keeps the stock path."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


__all__ = ["Dropout", "drop_mask", "dropout", "keep_mask", "keep_scale"]
