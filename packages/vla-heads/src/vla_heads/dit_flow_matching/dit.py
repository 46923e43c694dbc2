"""The cross-attention DiT of GR00T N1.5 and the VL self-attention stack.

Shapes: ``B`` batch, ``L`` action-side tokens (state + future + actions), ``S`` context tokens,
``D`` DiT width (heads * head_dim), ``Dc`` context width, ``N`` rows of timestep conditioning.

Training (and uncached inference) runs plain module calls: each block computes its AdaLN modulation
from the timestep embedding it receives and, if it cross-attends, projects the context to its own
K/V. Inference caches what does not change across denoising steps: :meth:`DiT.precompute` asks each
block for its context K/V (:meth:`TransformerBlock.project_context`) once per chunk and for its
modulations of all steps (:meth:`TransformerBlock.modulation`) in one batched pass; both are methods
of the block, declared in ``fsdp_forward_methods`` so FSDP2 gathers the block's parameters for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]


class Attention(nn.Module):
    """Multi-head attention with ``scaled_dot_product_attention``; K/V from ``kv_dim``-wide tokens.

    ``forward(x (B, L, D), kv=(k, v) each (B, heads, S, head_dim) or None) -> (B, L, D)``; without
    ``kv`` it self-attends. ``mask`` is a bool (B, 1, 1, S) key mask (True = attend) or None.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(kv_dim or dim, inner)
        self.to_v = nn.Linear(kv_dim or dim, inner)
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, tokens: Tensor) -> KV:
        """(B, S, kv_dim) -> k, v each (B, heads, S, head_dim)."""
        return self._split(self.to_k(tokens)), self._split(self.to_v(tokens))

    def forward(
        self, x: Tensor, kv: KV | None = None, mask: Tensor | None = None, *, query_rows: int | None = None
    ) -> Tensor:
        """``query_rows``: attend only for the last that many rows of x (their output only)."""
        k, v = kv if kv is not None else self.project_kv(x)
        q = self._split(self.to_q(x if query_rows is None else x[:, -query_rows:]))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dropout(self.to_out(out.transpose(1, 2).flatten(2)))


class AdaLayerNorm(nn.Module):
    """``LayerNorm(x) * (1 + scale) + shift`` with ``scale, shift = linear(silu(temb)).chunk(2)``.

    ``forward(x (B, L, D), temb (B, D)) -> (B, L, D)``; :meth:`modulation` (N, D) -> (N, 2D) is the
    ``linear(silu(temb))`` part, which a cache may compute once for many timesteps and pass to
    ``forward`` as ``modulation`` (B, 2D) instead of ``temb``.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)

    def modulation(self, temb: Tensor) -> Tensor:
        return self.linear(F.silu(temb))

    def forward(self, x: Tensor, temb: Tensor | None = None, *, modulation: Tensor | None = None) -> Tensor:
        if modulation is None:
            modulation = self.modulation(temb)
        scale, shift = modulation.unsqueeze(1).chunk(2, dim=-1)
        return torch.addcmul(shift, self.norm(x), 1 + scale)


class TransformerBlock(nn.Module):
    """Pre-norm attention + feed-forward block (one attention: self or cross).

    ``ada_norm=True``: AdaLayerNorm on the timestep for ``norm1`` and a plain LayerNorm for ``norm3``
    (the DiT); else affine LayerNorms (the VL stack). ``kv_dim`` set: a cross-attention block.
    """

    # Methods besides forward that use this block's parameters (the inference caches of DiT.precompute);
    # vla_train.parallelize registers them with torch.distributed.fsdp.register_fsdp_forward_method.
    fsdp_forward_methods: ClassVar[tuple[str, ...]] = ("project_context", "modulation")

    def __init__(
        self, dim: int, heads: int, head_dim: int, *, kv_dim: int | None = None, ada_norm: bool, dropout: float
    ) -> None:
        super().__init__()
        self.is_cross, self.ada_norm = kv_dim is not None, ada_norm
        self.norm1 = AdaLayerNorm(dim) if ada_norm else nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim, kv_dim, dropout)
        self.final_dropout = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5, elementwise_affine=not ada_norm)
        self.ff = FeedForward(dim, mult=4, dropout=dropout, activation_fn="gelu-approximate", final_dropout=True)

    def project_context(self, context: Tensor) -> KV:
        """Cross-attention K/V of the context: (B, S, Dc) -> k, v each (B, heads, S, head_dim)."""
        return self.attn1.project_kv(context)

    def modulation(self, temb: Tensor) -> Tensor:
        """AdaLN modulation of timestep embeddings: (N, D) -> (N, 2D)."""
        return self.norm1.modulation(temb)

    def forward(
        self,
        x: Tensor,
        *,
        temb: Tensor | None = None,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        query_rows: int | None = None,
        modulation: Tensor | None = None,
        kv: KV | None = None,
    ) -> Tensor:
        """x (B, L, D) -> (B, L, D), or (B, query_rows, D) for the last ``query_rows`` rows only.

        An AdaLN block takes ``temb`` (B, D), or its precomputed :meth:`modulation` (B, 2D); a
        cross-attention block takes ``context`` (B, S, Dc), or its precomputed :meth:`project_context`
        ``kv``. ``mask``: bool (B, 1, 1, S) key mask or None.
        """
        h = self.norm1(x, temb, modulation=modulation) if self.ada_norm else self.norm1(x)
        # (not self.project_context: a registered FSDP method would free the parameters when it returns)
        if kv is None:
            kv = self.attn1.project_kv(context if self.is_cross else h)
        a = self.attn1(h, kv, mask, query_rows=query_rows)
        x = (x if query_rows is None else x[:, -query_rows:]) + self.final_dropout(a)
        return x + self.ff(self.norm3(x))


@dataclass(frozen=True)
class DiTCache:
    """What stays fixed over one chunk's denoising steps (exact; inference only).

    ``kv``: per block, the cross-attention (k, v) of the context, each (B, heads, S, head_dim), or
    None for a self-attention block. ``modulation``: per block the AdaLN modulation, then the output
    layer's, each (N, 2D) for N timestep rows (e.g. all steps' rows stacked step-major).
    """

    kv: list[KV | None]
    modulation: list[Tensor]

    def rows(self, start: int, stop: int) -> DiTCache:
        """The same cache for timestep rows ``start:stop`` (one step's batch)."""
        return DiTCache(self.kv, [m[start:stop] for m in self.modulation])


class DiT(nn.Module):
    """Timestep-conditioned transformer over action-side tokens, cross-attending to the context.

    Block i cross-attends when ``not interleave or i % 2 == 0``, else self-attends.
    ``forward(x (B, L, D), timesteps (B,), context (B, S, Dc)) -> (B, L or out_rows, out_dim)``.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        heads: int,
        head_dim: int,
        context_dim: int,
        out_dim: int,
        interleave_self_attention: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        dim = heads * head_dim
        self.time_proj = Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=1)
        self.time_embed = TimestepEmbedding(in_channels=256, time_embed_dim=dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim,
                heads,
                head_dim,
                kv_dim=None if (interleave_self_attention and i % 2 == 1) else context_dim,
                ada_norm=True,
                dropout=dropout,
            )
            for i in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, out_dim)

    def timestep_embedding(self, timesteps: Tensor, dtype: torch.dtype) -> Tensor:
        """(N,) integer timesteps -> (N, D) embeddings, computed from ``dtype`` inputs."""
        return self.time_embed(self.time_proj(timesteps).to(dtype))

    def precompute(self, context: Tensor, timesteps: Tensor) -> DiTCache:
        """The inference cache: every cross-attention block's context K/V, and every block's (and the
        output layer's) modulation for ``timesteps`` (N,). context (B, S, Dc)."""
        temb = self.timestep_embedding(timesteps, context.dtype)
        return DiTCache(
            kv=[blk.project_context(context) if blk.is_cross else None for blk in self.blocks],
            modulation=[blk.modulation(temb) for blk in self.blocks] + [self.proj_out_1(F.silu(temb))],
        )

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor | None,
        context: Tensor | None,
        *,
        mask: Tensor | None = None,
        out_rows: int | None = None,
        cache: DiTCache | None = None,
    ) -> Tensor:
        """x (B, L, D), timesteps (B,), context (B, S, Dc) -> (B, L, out_dim).

        ``out_rows``: compute the output only for the last that many tokens (the last block's
        queries and feed-forward shrink too). ``mask``: bool (B, 1, 1, S) context key mask or None.
        ``cache``: one step's :class:`DiTCache` (B rows), used instead of ``timesteps`` and ``context``
        (then ignored; they may be None).
        """
        temb = self.timestep_embedding(timesteps, x.dtype) if cache is None else None
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            rows = out_rows if i == last else None
            block_mask = mask if blk.is_cross else None
            if cache is None:
                x = blk(x, temb=temb, context=context if blk.is_cross else None, mask=block_mask, query_rows=rows)
            else:
                x = blk(x, modulation=cache.modulation[i], kv=cache.kv[i], mask=block_mask, query_rows=rows)
        modulation = self.proj_out_1(F.silu(temb)) if cache is None else cache.modulation[-1]
        shift, scale = modulation.unsqueeze(1).chunk(2, dim=-1)
        return self.proj_out_2(torch.addcmul(shift, self.norm_out(x), 1 + scale))


class VLSelfAttention(nn.Module):
    """LayerNorm-block self-attention stack over the context: (B, S, Dc) -> (B, S, Dc)."""

    def __init__(self, dim: int, *, num_layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, dim // heads, ada_norm=False, dropout=dropout) for _ in range(num_layers)
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask``: bool (B, 1, 1, S) key mask (True = attend) or None (N1.5 masks nothing)."""
        for blk in self.blocks:
            x = blk(x, mask=mask)
        return x
