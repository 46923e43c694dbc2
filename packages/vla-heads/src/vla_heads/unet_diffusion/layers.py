"""Building blocks of the conditional 1D UNet (Diffusion Policy / LeRobot), plain PyTorch modules.

Activations are channel-major, as ``nn.Conv1d`` takes them: (B, C, T) with B batch, C channels,
T time (the horizon, halved at each UNet level). ``E + G`` is the width of the conditioning vector
``cond = [step embedding (E), global conditioning (G)]``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvNormMish(nn.Module):
    """Conv1d (odd kernel, 'same' padding) -> GroupNorm -> Mish: (B, C_in, T) -> (B, C_out, T).

    LeRobot's ``DiffusionConv1dBlock``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_channels)
        self.act = nn.Mish()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualBlock1d(nn.Module):
    """Diffusion Policy's conditional residual block with FiLM.

    ``out = conv2(film(conv1(x))) + residual(x)`` where ``film(h) = scale * h + shift`` (or
    ``h + shift`` without scale modulation) and ``[scale, shift] = Linear(Mish(cond))``; ``residual``
    is a 1x1 conv when the width changes, else the identity.

    Training runs the FiLM projection inside :meth:`forward`. Sampling may compute it for all its
    denoising steps at once with :meth:`film_table` (exact: Mish acts elementwise, so the projection
    splits into a step part and a global part) and pass each step's parameters as ``film``.
    """

    # Methods besides forward that use this module's parameters (the sampling-time FiLM table);
    # vla_train.parallelize registers them with torch.distributed.fsdp.register_fsdp_forward_method.
    fsdp_forward_methods: ClassVar[tuple[str, ...]] = ("film_table",)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        *,
        kernel_size: int,
        n_groups: int,
        scale_modulation: bool,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.scale_modulation = scale_modulation
        self.conv1 = ConvNormMish(in_channels, out_channels, kernel_size, n_groups)
        self.cond_act = nn.Mish()
        self.film = nn.Linear(cond_dim, 2 * out_channels if scale_modulation else out_channels)
        self.conv2 = ConvNormMish(out_channels, out_channels, kernel_size, n_groups)
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, cond: Tensor | None = None, *, film: Tensor | None = None) -> Tensor:
        """x (B, C_in, T) -> (B, C_out, T), FiLM-conditioned on ``cond`` (B, E+G).

        ``film`` (B, 2 C_out), or (B, C_out) without scale modulation: precomputed
        ``Linear(Mish(cond))`` (a row of :meth:`film_table`), used instead of ``cond``.
        """
        if film is None:
            if cond is None:
                raise ValueError("ResidualBlock1d: pass the conditioning `cond` or precomputed `film`")
            film = self.film(self.cond_act(cond))
        h = self.conv1(x)
        film = film.unsqueeze(-1)  # (B, 2C, 1): broadcast over time
        if self.scale_modulation:
            h = torch.addcmul(film[:, self.out_channels :], film[:, : self.out_channels], h)
        else:
            h = h + film
        h = self.conv2(h)
        return h + (x if self.residual is None else self.residual(x))

    def film_table(self, step_mish: Tensor, global_mish: Tensor) -> tuple[Tensor, Tensor]:
        """The FiLM projection split into its step and global parts, for a whole sampling run.

        step_mish (S, E) = ``Mish(step embedding)`` of the S denoising steps; global_mish (B, G) =
        ``Mish(global conditioning)``. Returns ``step_part`` (S, F) and ``global_part`` (B, F),
        F = 2 C_out (C_out without scale modulation), with
        ``Linear(Mish([e_s, g_b])) = step_part[s] + global_part[b]``: one small GEMM per part
        instead of the whole projection at every step.
        """
        e = step_mish.shape[-1]
        weight, bias = self.film.weight, self.film.bias
        return F.linear(step_mish, weight[:, :e]), F.linear(global_mish, weight[:, e:], bias)


class SinusoidalEmbedding(nn.Module):
    """Diffusion-step embedding: t (N,) -> (N, dim) as ``[sin(t f), cos(t f)]``,
    ``f_i = exp(-ln(10000) i / (dim/2 - 1))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
        angles = t.to(freqs.dtype).unsqueeze(-1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class StepEncoder(nn.Sequential):
    """Diffusion Policy's step encoder: ``SinusoidalEmbedding(E) -> Linear(E, 4E) -> Mish -> Linear(4E, E)``.

    A ``Sequential`` (its children are named ``0`` to ``3``, as in the reference checkpoints) whose
    forward casts the sinusoidal features, computed in float32 for exact angles, to ``dtype`` (the
    compute dtype, e.g. bf16 for a policy loaded in bf16) before the first ``Linear``.
    t (S,) -> (S, E).
    """

    def forward(self, t: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        embedding, *layers = self
        x = embedding(t)
        if dtype is not None:
            x = x.to(dtype)
        for layer in layers:
            x = layer(x)
        return x
