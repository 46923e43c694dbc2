"""The action expert's Gemma layers: layer i attends to prefix layer i's K/V plus the suffix.

The prefix K/V arrive as tensors (one pair per layer), so each layer is a self-contained module
(FSDP can shard them one by one). Keys and values are ``[prefix | suffix]`` along the token axis and
``scaled_dot_product_attention`` (grouped-query) runs over them under pi0's block-causal mask.

Shapes: ``B`` batch, ``S`` suffix tokens (state + H actions), ``P`` prefix tokens, ``D`` width,
``Hq`` query heads, ``Hkv`` K/V heads, ``d`` head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vla_core.errors import require

MASK_VALUE = -2.3819763e38  # openpi's additive mask value (finite)


def gemma_modules():
    """transformers' Gemma module (the ``vla-heads[pi0]`` extra), imported on first use."""
    return require("transformers.models.gemma.modeling_gemma", "vla-heads[pi0]")


def mask_value(dtype: torch.dtype) -> float:
    return max(MASK_VALUE, torch.finfo(dtype).min)


def additive_bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """bool ``allowed`` -> 0 where True, a large negative value where False, in ``dtype``."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, mask_value(dtype))


def suffix_allowed(horizon: int, device: torch.device | None = None) -> Tensor:
    """(S, S) bool, S = 1 + H: the state token sees itself; action tokens see the state and every action."""
    allowed = torch.ones(1 + horizon, 1 + horizon, dtype=torch.bool, device=device)
    allowed[0, 1:] = False
    return allowed


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotary tables for integer positions (B, S) -> cos, sin (B, S, d), computed in fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=position_ids.device).float() / head_dim
    freqs = position_ids.float()[..., None] * (1.0 / (theta**exponent))
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, S, d) by tables (B, S, d) (Gemma's half-split convention)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def attention_bias(prefix_mask: Tensor, suffix_allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive bias (B, 1, S, P + S) for suffix queries over ``[prefix | suffix]`` keys.

    prefix_mask (B, P) bool (True = a valid prefix token, seen by every suffix token); suffix_allowed
    (S, S) bool (:func:`suffix_allowed`).
    """
    b, s = prefix_mask.shape[0], suffix_allowed.shape[0]
    allowed = torch.cat([prefix_mask[:, None, :].expand(b, s, -1), suffix_allowed.expand(b, s, s)], dim=-1)
    return additive_bias(allowed[:, None], dtype)


class ExpertProjections(nn.Module):
    """q/k/v/o projections of one expert attention block (no bias), named as in transformers."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)

    def heads(self, proj: nn.Linear, h: Tensor) -> Tensor:
        """(B, S, D) -> (B, heads, S, d) through ``proj``."""
        b, s, _ = h.shape
        return proj(h).view(b, s, -1, self.head_dim).transpose(1, 2)


class ExpertLayer(nn.Module):
    """One Gemma decoder layer of the expert: ``forward(x (B, S, D), ...) -> (B, S, D)``.

    The prefix K/V of the matching PaliGemma layer come in as arguments (never as parameters of
    another module), so the layer is its own FSDP unit.
    """

    def __init__(
        self, *, width: int, mlp_dim: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float
    ) -> None:
        super().__init__()
        gemma = gemma_modules()
        mlp_config = gemma.GemmaConfig(
            hidden_size=width, intermediate_size=mlp_dim, hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
        )
        self.scale = head_dim**-0.5
        self.input_layernorm = gemma.GemmaRMSNorm(width, eps=eps)
        self.self_attn = ExpertProjections(width, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = gemma.GemmaRMSNorm(width, eps=eps)
        self.mlp = gemma.GemmaMLP(mlp_config)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, prefix_k: Tensor, prefix_v: Tensor, bias: Tensor
    ) -> Tensor:
        """x (B, S, D); rotary tables cos, sin (B, S, d); prefix_k, prefix_v (B, Hkv, P, d); bias
        (B, 1, S, P + S) from :func:`attention_bias` -> (B, S, D)."""
        attn = self.self_attn
        h = self.input_layernorm(x)
        q = apply_rope(attn.heads(attn.q_proj, h), cos, sin)
        k = apply_rope(attn.heads(attn.k_proj, h), cos, sin)
        v = attn.heads(attn.v_proj, h)
        k = torch.cat([prefix_k.to(k.dtype), k], dim=2)
        v = torch.cat([prefix_v.to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale,
                                             enable_gqa=k.shape[1] != q.shape[1])
        x = x + attn.o_proj(out.transpose(1, 2).flatten(2))
        return x + self.mlp(self.post_attention_layernorm(x))
