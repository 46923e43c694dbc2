"""Per-embodiment ("category-specific") layers: one weight set per robot, selected by embodiment id.

Shapes: ``B`` batch, ``L`` tokens, ``C`` embodiment rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EmbodimentSelect:
    """The embodiment rows of a batch: ``ids`` (B,) long, and ``single`` when all rows are the same.

    Build it once per forward with :meth:`of`; with ``single`` every layer multiplies by one weight
    matrix instead of gathering B copies. Deciding that needs the ids on the host, so ids on an
    accelerator take the gather path (no device sync; the gather is cheap there).
    """

    ids: Tensor
    single: int | None

    @classmethod
    def of(cls, ids: Tensor) -> EmbodimentSelect:
        if ids.device.type != "cpu" or ids.numel() == 0:
            return cls(ids, None)
        first = int(ids[0])
        return cls(ids, first if bool((ids == first).all()) else None)

    @classmethod
    def constant(cls, row: int, batch_size: int, device: torch.device) -> EmbodimentSelect:
        """Every sample uses ``row`` (known on the host: no sync on any device)."""
        return cls(torch.full((batch_size,), row, dtype=torch.long, device=device), row)


class CategorySpecificLinear(nn.Module):
    """``x @ weight[c] + bias[c]`` with weight (C, in, out), bias (C, out): (B, L, in) -> (B, L, out).

    Note the (in, out) layout, transposed relative to ``nn.Linear``.
    """

    def __init__(self, num_categories: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.02 * torch.randn(num_categories, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_categories, out_dim))

    def forward(self, x: Tensor, select: EmbodimentSelect) -> Tensor:
        if select.single is not None:
            w, b = self.weight[select.single], self.bias[select.single]
            return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[-1])
        return torch.baddbmm(self.bias[select.ids].unsqueeze(1), x, self.weight[select.ids])


class CategorySpecificMLP(nn.Module):
    """``layer2(relu(layer1(x)))``, each a :class:`CategorySpecificLinear`: (B, L, in) -> (B, L, out)."""

    def __init__(self, num_categories: int, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layer1 = CategorySpecificLinear(num_categories, in_dim, hidden_dim)
        self.layer2 = CategorySpecificLinear(num_categories, hidden_dim, out_dim)

    def forward(self, x: Tensor, select: EmbodimentSelect) -> Tensor:
        return self.layer2(F.relu(self.layer1(x, select)), select)


def timestep_features(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of (integer) timesteps: (N,) -> (N, dim), ``[sin, cos]``, float32.

    Frequencies ``exp(-ln(10000) * k / (dim / 2))`` for k < dim / 2 (GR00T's action encoder).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(10000.0) / half))
    angles = timesteps.float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionEncoder(nn.Module):
    """Noisy actions + timestep -> action tokens: ``w3(swish(w2([w1(a), tau])))``.

    (B, H, A) actions and (B,) integer timesteps -> (B, H, D); ``tau`` is the sinusoidal timestep
    feature (B, D), repeated over the H tokens.
    """

    def __init__(self, num_categories: int, action_dim: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.w1 = CategorySpecificLinear(num_categories, action_dim, width)
        self.w2 = CategorySpecificLinear(num_categories, 2 * width, width)
        self.w3 = CategorySpecificLinear(num_categories, width, width)

    def forward(self, actions: Tensor, timesteps: Tensor, select: EmbodimentSelect) -> Tensor:
        """actions (B, H, A), timesteps (B,) -> (B, H, D)."""
        a = self.w1(actions, select)
        tau = timestep_features(timesteps, self.width).to(a.dtype).unsqueeze(1).expand_as(a)  # (B, H, D)
        return self.w3(F.silu(self.w2(torch.cat([a, tau], dim=-1), select)), select)
