"""ACT's DETR-style transformer: attention on ``scaled_dot_product_attention``, encoder and decoder.

Batch-first throughout: ``(B, L, D)``. Positions are added to queries and keys, never to values
(DETR). Parameter names follow ``nn.MultiheadAttention`` (packed ``in_proj_weight`` (3D, D)) and
LeRobot's layer names, so checkpoints map by prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def sine_table_1d(n_positions: int, dim: int) -> Tensor:
    """(n_positions, dim) fixed sinusoid: sin on even, cos on odd columns of pos / 10000^(2 (j // 2) / dim).

    Computed in float64 and cast to float32, as the original ACT's numpy table.
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    table = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table[:, 0::2] = table[:, 0::2].sin()
    table[:, 1::2] = table[:, 1::2].cos()
    return table.float()


class Attention(nn.Module):
    """Multi-head attention: packed q/k/v projections, ``scaled_dot_product_attention``, output projection.

    ``query`` (B, Lq, D), ``key`` (B, Lk, D), ``value`` (B, Lk, D) -> (B, Lq, D); ``mask`` (B, Lk)
    bool, True = attend. ``Lq`` may be smaller than ``Lk`` (e.g. a CLS readout, Lq = 1). When
    ``query is key`` (self-attention with positions) their projections run as one matmul.
    Attention dropout is SDPA's ``dropout_p`` (torch's RNG).
    """

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.dim, self.n_heads, self.dropout = dim, n_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, heads, L, D / heads)."""
        return x.unflatten(-1, (self.n_heads, self.dim // self.n_heads)).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        # One split of the packed weights (its backward writes the three gradients into one tensor).
        d = self.dim
        if query is key:
            (w_qk, w_v), (b_qk, b_v) = self.in_proj_weight.split([2 * d, d]), self.in_proj_bias.split([2 * d, d])
            q, k = F.linear(query, w_qk, b_qk).chunk(2, dim=-1)
        else:
            (w_q, w_k, w_v), (b_q, b_k, b_v) = self.in_proj_weight.split(d), self.in_proj_bias.split(d)
            q, k = F.linear(query, w_q, b_q), F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v)
        out = F.scaled_dot_product_attention(
            self._split_heads(q), self._split_heads(k), self._split_heads(v),
            attn_mask=None if mask is None else mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, heads, Lq, D / heads)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class _Block(nn.Module):
    """Shared feed-forward of the encoder and decoder layers (LeRobot's names linear1 / linear2)."""

    def _init_ff(self, dim: int, ff_dim: int, dropout: float, activation: str) -> None:
        self.linear1, self.linear2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.dropout, self.activation = nn.Dropout(dropout), ACTIVATIONS[activation]

    def ff(self, x: Tensor) -> Tensor:
        """linear1 -> activation -> dropout -> linear2: (..., D) -> (..., D)."""
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderLayer(_Block):
    """Self-attention + feed-forward, post-norm (ACT's default) or pre-norm. (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout)
        self._init_ff(dim, ff_dim, dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None = None, *, first_only: bool = False) -> Tensor:
        """x (B, L, D), pos (B or 1, L, D) added to queries and keys, mask (B, L) True = valid.

        ``first_only``: return only the first token's output (B, 1, D), a CLS readout: the other
        rows' queries, attention outputs and feed-forward are not computed (their keys and values
        are, as always).
        """
        rows = slice(0, 1) if first_only else slice(None)
        if self.pre_norm:
            y = self.norm1(x)
            qk = y if pos is None else y + pos
            x = x[:, rows] + self.dropout1(self.self_attn(qk[:, rows] if first_only else qk, qk, y, mask))
            return x + self.dropout2(self.ff(self.norm2(x)))
        qk = x if pos is None else x + pos
        x = self.norm1(x[:, rows] + self.dropout1(self.self_attn(qk[:, rows] if first_only else qk, qk, x, mask)))
        return self.norm2(x + self.dropout2(self.ff(x)))


class Encoder(nn.Module):
    """A stack of encoder layers, with a final LayerNorm when pre-norm (Identity otherwise)."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str,
                 pre_norm: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, n_heads, ff_dim, dropout, activation, pre_norm) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()

    def forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None = None, *, first_only: bool = False) -> Tensor:
        """x (B, L, D) -> (B, L, D), or (B, 1, D) with ``first_only`` (a CLS readout: the last layer
        then computes the first row alone)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, mask, first_only=first_only and i == last)
        return self.norm(x)


class DecoderLayer(_Block):
    """Self-attention over the queries, cross-attention to the memory, feed-forward. (B, H, D)."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout)
        self.multihead_attn = Attention(dim, n_heads, dropout)
        self._init_ff(dim, ff_dim, dropout, activation)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, memory: Tensor, query_pos: Tensor, memory_pos: Tensor | None,
                memory_mask: Tensor | None = None) -> Tensor:
        """x (B, H, D) queries with query_pos (1, H, D), memory (B, L, D) with memory_pos (B or 1, L, D)
        and memory_mask (B, L) True = valid."""
        mem_k = memory if memory_pos is None else memory + memory_pos
        if self.pre_norm:
            y = self.norm1(x)
            qk = y + query_pos
            x = x + self.dropout1(self.self_attn(qk, qk, y))
            x = x + self.dropout2(self.multihead_attn(self.norm2(x) + query_pos, mem_k, memory, memory_mask))
            return x + self.dropout3(self.ff(self.norm3(x)))
        qk = x + query_pos
        x = self.norm1(x + self.dropout1(self.self_attn(qk, qk, x)))
        x = self.norm2(x + self.dropout2(self.multihead_attn(x + query_pos, mem_k, memory, memory_mask)))
        return self.norm3(x + self.dropout3(self.ff(x)))


class Decoder(nn.Module):
    """DETR decoder from zero queries: layers then a final LayerNorm (always, as ACT and LeRobot)."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str,
                 pre_norm: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(dim, n_heads, ff_dim, dropout, activation, pre_norm) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, query_pos: Tensor, memory: Tensor, memory_pos: Tensor | None,
                memory_mask: Tensor | None = None) -> Tensor:
        """query_pos (1, H, D) learned query positions, memory (B, L, D) -> (B, H, D)."""
        x = memory.new_zeros(memory.shape[0], query_pos.shape[1], query_pos.shape[2])
        for layer in self.layers:
            x = layer(x, memory, query_pos, memory_pos, memory_mask)
        return self.norm(x)


def init_xavier(module: nn.Module) -> None:
    """Xavier-uniform on every parameter with 2+ dims (ACT's transformer init)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


__all__ = ["Attention", "Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "init_xavier", "sine_table_1d"]
