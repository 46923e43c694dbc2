"""Gemma layer pieces shared by the PaliGemma prefix (``vla_backbones``) and the pi0 / pi0.5 experts
(``vla_heads``): RMSNorm and its adaptive (time-conditioned) variant, rotary positions, the MLP,
the attention projections and one decoder layer. Torch only.

Parameter names follow transformers' Gemma (``input_layernorm.weight``, ``self_attn.q_proj``,
``mlp.gate_proj`` ...) and, for the adaptive norm, LeRobot's ``PiGemmaRMSNorm``
(``input_layernorm.dense``), so checkpoints load by name.

Shapes: ``B`` batch, ``T`` query tokens, ``P`` tokens of an earlier K/V (a prefix), ``D`` width,
``C`` conditioning width, ``Hq`` query heads, ``Hkv`` K/V heads, ``d`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# openpi's additive mask value: finite, so a fully masked (padding) row stays finite.
MASK_VALUE = -2.3819763e38


def mask_value(dtype: torch.dtype) -> float:
    """openpi's value, or the most negative finite value of ``dtype`` where that is larger (fp16)."""
    return max(MASK_VALUE, torch.finfo(dtype).min)


def additive_bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """bool ``allowed`` (any shape) -> 0 where True, :func:`mask_value` where False, in ``dtype``."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, mask_value(dtype))


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotary tables for integer positions (B, T) -> cos, sin of shape (B, T, d), computed in fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    freqs = position_ids.float()[..., None] * (1.0 / (theta**exponent))
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, T, d) by tables (B, T, d) (Gemma's half-split convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RMSNorm(nn.Module):
    """Gemma's RMSNorm: ``x * rsqrt(mean(x^2) + eps) * (1 + weight)`` in fp32, cast back to x's dtype.

    ``weight`` (D,) starts at zero (identity scale). (..., D) -> (..., D).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).type_as(x)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class AdaptiveRMSNorm(nn.Module):
    """pi0.5's adaptive RMSNorm (openpi / LeRobot ``PiGemmaRMSNorm`` with ``cond_dim``).

    A linear map ``dense`` of the condition (B, C) gives per-channel scale, shift and gate:
    ``forward(x (B, T, D), cond (B, C)) -> (x_normed * (1 + scale) + shift, gate)``, both (B, T, D) in
    x's dtype; the normalization runs in fp32. ``dense`` starts with zero weights (its bias keeps
    torch's default init, as in LeRobot). The gate multiplies the residual branch this norm feeds.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.cond_dim = eps, cond_dim
        self.dense = nn.Linear(cond_dim, 3 * dim)
        nn.init.zeros_(self.dense.weight)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        if cond.shape[-1] != self.cond_dim:
            raise ValueError(f"AdaptiveRMSNorm: expected a condition of width {self.cond_dim}, received {tuple(cond.shape)}")
        var = x.float().pow(2).mean(-1, keepdim=True)
        normed = x * torch.rsqrt(var + self.eps)
        modulation = self.dense(cond)
        if x.dim() == 3:
            modulation = modulation[:, None]
        scale, shift, gate = modulation.chunk(3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


def init_linear(linear: nn.Linear, std: float = 0.02) -> None:
    """Gemma's initializer for a model trained without a checkpoint, widened for narrow layers: weights
    normal with std ``max(std, 1 / sqrt(fan_in))``, zero bias.

    At Gemma's widths (2048 in, MLP 16384 in) this is Gemma's std 0.02 (0.022 at 2048); at the widths
    of a from-scratch toy model (64 in: 0.125) a fixed 0.02 leaves attention logits near zero, so
    attention stays uniform and learns to pick one token (an image patch, a word) only slowly.
    """
    nn.init.normal_(linear.weight, std=max(std, linear.in_features**-0.5))
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class GemmaMLP(nn.Module):
    """Gated GELU-tanh MLP: ``down(gelu_tanh(gate(x)) * up(x))``, (..., D) -> (..., D), no biases."""

    def __init__(self, width: int, mlp_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaProjections(nn.Module):
    """The q/k/v/o projections of one Gemma attention block (no bias), named as in transformers."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def heads(self, proj: nn.Linear, h: Tensor) -> Tensor:
        """(B, T, D) -> (B, heads, T, d) through ``proj`` (one of this module's projections)."""
        b, t, _ = h.shape
        return proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)


class GemmaDecoderLayer(nn.Module):
    """One Gemma decoder layer (pre-norm attention + MLP) that hands out its post-RoPE K/V.

    ``forward(x (B, T, D), cos, sin (B, T, d), bias (B, 1, T, P + T), *, past_kv=None, cond=None,
    kv_only=False) -> (x_out (B, T, D) or None, k, v)``, k and v (B, Hkv, T, d) being this layer's own.

    - ``past_kv``: (k, v) of shape (B, Hkv, P, d) prepended to this layer's keys and values (an expert
      layer attending to the prefix layer's K/V); without it P = 0.
    - ``cond_dim`` set: both norms are :class:`AdaptiveRMSNorm` conditioned on ``cond`` (B, C), and
      their gates scale the two residual branches (pi0.5); otherwise plain :class:`RMSNorm`.
    - ``kv_only``: stop after k and v (x_out is None), for a last prefix layer whose output nobody reads.
    """

    def __init__(
        self, *, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.scale = head_dim**-0.5
        self.adaptive = cond_dim is not None
        norm = (lambda: AdaptiveRMSNorm(width, cond_dim, eps)) if self.adaptive else (lambda: RMSNorm(width, eps))
        self.input_layernorm = norm()
        self.self_attn = GemmaProjections(width, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = norm()
        self.mlp = GemmaMLP(width, mlp_dim)

    def _norm(self, norm: nn.Module, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if not self.adaptive:
            return norm(x), None
        if cond is None:
            raise ValueError("GemmaDecoderLayer: an adaptive (cond_dim) layer needs cond (B, C)")
        return norm(x, cond)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, *,
        past_kv: tuple[Tensor, Tensor] | None = None, cond: Tensor | None = None, kv_only: bool = False,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        attn = self.self_attn
        h, gate = self._norm(self.input_layernorm, x, cond)
        k = apply_rope(attn.heads(attn.k_proj, h), cos, sin)
        v = attn.heads(attn.v_proj, h).clone()  # own storage: FSDP2 hooks layer outputs and warns on views
        if kv_only:
            return None, k, v
        q = apply_rope(attn.heads(attn.q_proj, h), cos, sin)
        keys, values = k, v
        if past_kv is not None:
            keys = torch.cat([past_kv[0].to(k.dtype), k], dim=2)
            values = torch.cat([past_kv[1].to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=self.scale,
                                             enable_gqa=keys.shape[1] != q.shape[1])
        out = attn.o_proj(out.transpose(1, 2).flatten(2))
        x = x + (out if gate is None else out * gate)
        h, gate = self._norm(self.post_attention_layernorm, x, cond)
        out = self.mlp(h)
        return x + (out if gate is None else out * gate), k, v
