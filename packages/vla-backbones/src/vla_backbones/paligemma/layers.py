"""Gemma pieces of the PaliGemma prefix: rotary positions, masks and the decoder layer.

Shapes: ``B`` batch, ``T`` prefix tokens, ``D`` width, ``Hq`` query heads, ``Hkv`` K/V heads,
``d`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.gemma.modeling_gemma import GemmaConfig, GemmaMLP, GemmaRMSNorm

# openpi's additive mask value: finite, so a fully masked (padding) row stays finite.
MASK_VALUE = -2.3819763e38


def mask_value(dtype: torch.dtype) -> float:
    """openpi's value, or the most negative finite value of ``dtype`` where that is smaller (fp16)."""
    return max(MASK_VALUE, torch.finfo(dtype).min)


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotary tables for integer positions (B, T) -> cos, sin of shape (B, T, d), computed in fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    freqs = position_ids.float()[..., None] * inv_freq
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, T, d) by tables (B, T, d) (the half-split convention of Gemma)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def prefix_attention_bias(pad_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Bidirectional attention among valid tokens: (B, T) bool -> additive bias (B, 1, T, T)."""
    allowed = pad_mask[:, None, :] & pad_mask[:, :, None]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=pad_mask.device)
    return bias.masked_fill_(~allowed, mask_value(dtype))[:, None]


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float) -> Tensor:
    """Grouped-query attention: q (B, Hq, T, d), k/v (B, Hkv, S, d), bias (B, 1, T, S) -> (B, Hq, T, d)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


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
        """(B, T, D) -> (B, heads, T, d) through ``proj``."""
        b, t, _ = h.shape
        return proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)


class GemmaPrefixLayer(nn.Module):
    """One Gemma decoder layer over the prefix that also hands out its post-RoPE K/V.

    ``forward(x (B, T, D), cos, sin (B, T, d), bias (B, 1, T, T)) -> (x_out (B, T, D), k, v)`` with
    k, v of shape (B, Hkv, T, d). With ``kv_only=True`` it stops after k and v (x_out is None): an
    expert that reads only the prefix K/V never needs the last layer's attention output or MLP.
    """

    def __init__(
        self, *, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float
    ) -> None:
        super().__init__()
        mlp_config = GemmaConfig(
            hidden_size=width, intermediate_size=mlp_dim, hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
        )
        self.scale = head_dim**-0.5
        self.input_layernorm = GemmaRMSNorm(width, eps=eps)
        self.self_attn = GemmaProjections(width, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = GemmaRMSNorm(width, eps=eps)
        self.mlp = GemmaMLP(mlp_config)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, *, kv_only: bool = False
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        attn = self.self_attn
        h = self.input_layernorm(x)
        k = apply_rope(attn.heads(attn.k_proj, h), cos, sin)
        v = attn.heads(attn.v_proj, h).clone()  # own storage: FSDP2 hooks layer outputs and warns on views
        if kv_only:
            return None, k, v
        q = apply_rope(attn.heads(attn.q_proj, h), cos, sin)
        out = attend(q, k, v, bias, self.scale)
        x = x + attn.o_proj(out.transpose(1, 2).flatten(2))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v
