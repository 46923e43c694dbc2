"""ACT's DETR-style transformer: attention on ``scaled_dot_product_attention``, encoder and decoder.

Batch-first throughout: ``(B, L, D)``. Positions are added to queries and keys, never to values
(DETR). Parameter names follow ``nn.MultiheadAttention`` (packed ``in_proj_weight`` (3D, D)) and
LeRobot's layer names, so checkpoints map by prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_heads import fused_feed_forward as fused_ff
from vla_heads.cpu_linear import apply_linear, linear
from vla_heads.dropout import Dropout
from vla_heads.dropout import dropout as apply_dropout

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
    """Multi-head attention with packed q/k/v projections and fused SDPA.

    ``query`` (B, Lq, D), ``key`` (B, Lk, D), ``value`` (B, Lk, D) -> (B, Lq, D). ``mask`` (B, Lk)
    bool, True = attend. When ``query is key`` (self-attention with positions) their projections
    run as one matmul.
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

    def project_value(self, value: Tensor) -> Tensor:
        """(..., D) -> (..., D): the value projection alone."""
        d = self.dim
        return linear(value, self.in_proj_weight[2 * d :], self.in_proj_bias[2 * d :])

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, heads, L, D / heads)."""
        return x.reshape(x.shape[0], x.shape[1], self.n_heads, self.dim // self.n_heads).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(B, heads, L, D / heads) -> (B, L, D), then the output projection."""
        bsz, _, length, _ = x.shape
        return apply_linear(self.out_proj, x.transpose(1, 2).reshape(bsz, length, self.dim))

    def probabilities(self, q: Tensor, k: Tensor, mask: Tensor | None = None) -> Tensor:
        """Softmax attention weights (B, heads, Lq, Lk) from projected, head-split q and k."""
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)

    def project_query_key(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(..., D) -> q, k (..., D) each, in one matmul: self-attention, where queries and keys are one input."""
        d = self.dim
        q, k = linear(x, self.in_proj_weight[: 2 * d], self.in_proj_bias[: 2 * d]).chunk(2, dim=-1)
        return q, k

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The input projections: (B, Lq, D), (B, Lk, D), (B, Lk, D) -> q, k, v of the same shapes."""
        d, w, b = self.dim, self.in_proj_weight, self.in_proj_bias
        if query is key:
            q, k = self.project_query_key(query)
        else:
            q = linear(query, w[:d], b[:d])
            k = linear(key, w[d : 2 * d], b[d : 2 * d])
        return q, k, self.project_value(value)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(*self.project(query, key, value), mask)

    def attend_one_query(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        """One query row over unprojected keys and values: query (B, 1, D), key / value (B, L, D) -> (B, 1, D).

        Equal to ``forward`` without projecting the L keys and values: per head, q . (Wk k + bk) =
        (Wk^T q) . k + q . bk, whose last term is the same for every key and cancels in the softmax;
        and sum_j p_j (Wv v_j + bv) = Wv (sum_j p_j v_j) + bv sum_j p_j (the sum is 1 unless attention
        dropout dropped weights). A CLS readout then costs O(L D) per head instead of O(L D^2).
        """
        bsz, d, heads = query.shape[0], self.dim, self.n_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        q = linear(query, w[:d], b[:d]).reshape(bsz, heads, d // heads)  # (B, H, D/H)
        q_in_key_space = torch.einsum("bhe,hed->bhd", q * (d // heads) ** -0.5, w[d : 2 * d].reshape(heads, -1, d))
        scores = q_in_key_space @ key.transpose(1, 2)  # (B, H, L)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            probs = apply_dropout(probs, self.dropout)
        weighted = probs @ value  # (B, H, D): the probability-weighted raw values
        out = torch.einsum("bhd,hed->bhe", weighted, w[2 * d :].reshape(heads, -1, d))  # (B, H, D/H)
        out = out + b[2 * d :].reshape(heads, -1) * probs.sum(dim=-1, keepdim=True)
        return apply_linear(self.out_proj, out.reshape(bsz, 1, d))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention from projected q (B, Lq, D), k and v (B, Lk, D) -> (B, Lq, D), output projection included."""
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            # SDPA's CPU dropout path is the same math with a costlier mask (see vla_heads.dropout).
            out = apply_dropout(self.probabilities(q, k, mask), self.dropout) @ v
        else:
            attn_mask = None if mask is None else mask[:, None, None, :]
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.merge_heads(out)


class _Block(nn.Module):
    """Shared feed-forward of the encoder and decoder layers (LeRobot's names linear1 / linear2)."""

    def _init_ff(self, dim: int, ff_dim: int, dropout: float, activation: str) -> None:
        self.linear1, self.linear2 = nn.Linear(dim, ff_dim), nn.Linear(ff_dim, dim)
        self.dropout, self.activation = Dropout(dropout), ACTIVATIONS[activation]

    def ff(self, x: Tensor) -> Tensor:
        """linear1 -> activation -> dropout -> linear2: (..., D) -> (..., D)."""
        if self.activation is F.relu and self.dropout.training and fused_ff.applies(
            x, self.linear1, self.linear2, self.dropout.p
        ):
            return fused_ff.relu_dropout_feed_forward(x, self.linear1, self.linear2, self.dropout.p)
        if self.activation is F.relu:
            h = apply_linear(self.linear1, x, relu=True)
        else:
            h = self.activation(apply_linear(self.linear1, x))
        return apply_linear(self.linear2, self.dropout(h))


class EncoderLayer(_Block):
    """Self-attention + feed-forward, post-norm (ACT's default) or pre-norm. (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout)
        self._init_ff(dim, ff_dim, dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None = None, *, first_only: bool = False,
                projected: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """x (B, L, D), pos (B or 1, L, D) added to queries and keys, mask (B, L) True = valid.

        ``first_only``: return only the first token's output (B, 1, D), skipping the other rows'
        queries and feed-forward (their keys and values are still used).
        ``projected``: the self-attention's q, k, v (B, L, D) each, already computed by the caller
        from x and pos (post-norm only, where they are projections of x itself).
        """
        if self.pre_norm:
            if projected is not None:
                raise ValueError("EncoderLayer: `projected` q/k/v need post-norm (pre-norm projects norm1(x))")
            y = self.norm1(x)
            qk = y if pos is None else y + pos
            if first_only:
                x = x[:, :1] + self.dropout1(self.self_attn.attend_one_query(qk[:, :1], qk, y, mask))
            else:
                x = x + self.dropout1(self.self_attn(qk, qk, y, mask))
            return x + self.dropout2(self.ff(self.norm2(x)))
        if projected is not None:
            if first_only:
                projected = (projected[0][:, :1], *projected[1:])
            attended = self.self_attn.attend(*projected, mask)
        else:
            qk = x if pos is None else x + pos
            if first_only:
                attended = self.self_attn.attend_one_query(qk[:, :1], qk, x, mask)
            else:
                attended = self.self_attn(qk, qk, x, mask)
        skip = x[:, :1] if first_only else x
        x = self.norm1(skip + self.dropout1(attended))
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

    def forward(self, x: Tensor, pos: Tensor | None, mask: Tensor | None = None, *, first_only: bool = False,
                first_projected: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
        """x (B, L, D) -> (B, L, D), or (B, 1, D) with ``first_only`` (a CLS readout: the last layer
        then computes the first row alone). ``first_projected``: the first layer's q, k, v (see
        :meth:`EncoderLayer.forward`)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, mask, first_only=first_only and i == last, projected=first_projected if i == 0 else None)
        return self.norm(x)


class DecoderLayer(_Block):
    """Self-attention over the queries, cross-attention to the memory, feed-forward. (B, H, D)."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float, activation: str, pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout)
        self.multihead_attn = Attention(dim, n_heads, dropout)
        self._init_ff(dim, ff_dim, dropout, activation)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.pre_norm = pre_norm

    def _self_attention(self, x: Tensor, query_pos: Tensor, constant: bool) -> Tensor:
        """x (B, H, D) -> (B, H, D).

        ``constant``: every row of x is the same vector, so every value row is that vector's value
        projection v and each query's output is v times the sum of its attention weights: 1 without
        attention dropout; with it, the row sum of the dropped weights, and the weights themselves
        come from the learned positions alone, so they are computed once, not per sample.
        """
        attn = self.self_attn
        if not constant:
            qk = x + query_pos
            return attn(qk, qk, x)
        v = attn.project_value(x[:1, :1])  # (1, 1, D)
        if not (self.training and attn.dropout > 0):
            return apply_linear(attn.out_proj, v).expand_as(x)
        q, k = attn.project_query_key(x[:1] + query_pos)
        q, k = attn.split_heads(q), attn.split_heads(k)  # (1, heads, H, D / heads)
        probs = attn.probabilities(q, k).expand(x.shape[0], -1, -1, -1)  # (B, heads, H, H)
        row_sums = apply_dropout(probs, attn.dropout).sum(-1, keepdim=True)  # (B, heads, H, 1)
        return attn.merge_heads(row_sums * attn.split_heads(v))

    def forward(self, x: Tensor, memory: Tensor, query_pos: Tensor, memory_pos: Tensor | None,
                memory_mask: Tensor | None = None, *, constant_input: bool = False) -> Tensor:
        """x (B, H, D) queries, memory (B, L, D) with memory_pos (B or 1, L, D) and memory_mask (B, L).

        ``constant_input``: x is the same vector everywhere (the zero queries of the first layer).
        """
        mem_k = memory if memory_pos is None else memory + memory_pos
        if self.pre_norm:
            y = self.norm1(x)
            x = x + self.dropout1(self._self_attention(y, query_pos, constant_input))
            x = x + self.dropout2(self.multihead_attn(self.norm2(x) + query_pos, mem_k, memory, memory_mask))
            return x + self.dropout3(self.ff(self.norm3(x)))
        x = self.norm1(x + self.dropout1(self._self_attention(x, query_pos, constant_input)))
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
        """query_pos (H, D) learned queries, memory (B, L, D) -> (B, H, D)."""
        bsz, (horizon, dim) = memory.shape[0], query_pos.shape
        x = memory.new_zeros(bsz, horizon, dim)
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, query_pos[None], memory_pos, memory_mask, constant_input=i == 0)
        return self.norm(x)


def init_xavier(module: nn.Module) -> None:
    """Xavier-uniform on every parameter with 2+ dims (ACT's transformer init)."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


__all__ = ["Attention", "Decoder", "DecoderLayer", "Encoder", "EncoderLayer", "init_xavier", "sine_table_1d"]
