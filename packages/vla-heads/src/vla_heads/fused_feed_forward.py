"""The transformer feed-forward ``linear2(dropout(relu(linear1(x))))`` as one autograd function, for CPU training.

Eager autograd keeps three hidden-sized tensors per feed-forward (the ReLU output, the dropout
multiplier, the dropped activations) and makes eight passes over them; on a CPU, where these
(tokens x 3200) activations do not fit in cache, those passes and the fresh pages behind them
cost about as much as a third of the two GEMMs. Here the hidden activation is made once and
changed in place: ReLU, then the dropped elements set to zero. The 1 / (1 - p) scale is not
applied to it but folded into the second GEMM (``addmm``'s ``alpha``) and, in the backward pass,
into the (tokens x D) incoming gradient. The one tensor kept for backward is that masked hidden
activation: it is positive exactly where the gradient passes (ReLU active and kept).

Same mask as :func:`vla_heads.dropout.dropout` for the same seed, same result up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from vla_heads.dropout import drop_mask

FLOAT_TYPES = (torch.float32, torch.bfloat16)


def applies(x: Tensor, linear1: nn.Module, linear2: nn.Module, p: float) -> bool:
    """True when :func:`relu_dropout_feed_forward` serves this call: a gradient is being recorded,
    x is a float32 / bfloat16 CPU tensor, 0 < p < 1, and both layers are plain ``nn.Linear`` with
    bias and no hooks (a replaced layer, e.g. LoRA, goes through its own forward)."""
    return (
        torch.is_grad_enabled()
        and 0.0 < p < 1.0
        and x.device.type == "cpu"
        and x.dtype in FLOAT_TYPES
        and all(
            type(m) is nn.Linear and m.bias is not None and not (m._forward_hooks or m._forward_pre_hooks)
            and m.weight.dtype == x.dtype
            for m in (linear1, linear2)
        )
    )


class _ReluDropoutFeedForward(torch.autograd.Function):
    """rows (N, D) -> (N, D) through (N, F) hidden; see the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, rows: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, p: float) -> Tensor:
        hidden = torch.addmm(b1, rows, w1.t()).relu_()
        hidden.masked_fill_(drop_mask(hidden.shape, p, hidden.device), 0.0)
        scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(rows, w1, w2, hidden)
        ctx.scale = scale
        return torch.addmm(b2, hidden, w2.t(), alpha=scale)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        rows, w1, w2, hidden = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2, _ = ctx.needs_input_grad
        grad = grad.contiguous()
        scaled = grad * ctx.scale  # (N, D): d out / d hidden carries the dropout scale
        g_w2 = scaled.t().mm(hidden) if need_w2 else None
        g_b2 = grad.sum(0) if need_b2 else None
        g_x = g_w1 = g_b1 = None
        if need_x or need_w1 or need_b1:
            g_hidden = scaled.mm(w2)  # (N, F)
            # Zero where ReLU was inactive or the element was dropped: exactly where hidden <= 0.
            torch.ops.aten.threshold_backward(g_hidden, hidden, 0, grad_input=g_hidden)
            g_x = g_hidden.mm(w1) if need_x else None
            g_w1 = g_hidden.t().mm(rows) if need_w1 else None
            g_b1 = g_hidden.sum(0) if need_b1 else None
        return g_x, g_w1, g_b1, g_w2, g_b2, None


def relu_dropout_feed_forward(x: Tensor, linear1: nn.Linear, linear2: nn.Linear, p: float) -> Tensor:
    """``linear2(dropout(relu(linear1(x)), p))`` for x (..., D) -> (..., D); check :func:`applies` first."""
    rows = x.reshape(-1, x.shape[-1])
    out = _ReluDropoutFeedForward.apply(rows, linear1.weight, linear1.bias, linear2.weight, linear2.bias, p)
    return out.reshape(*x.shape[:-1], out.shape[-1])


__all__ = ["applies", "relu_dropout_feed_forward"]
