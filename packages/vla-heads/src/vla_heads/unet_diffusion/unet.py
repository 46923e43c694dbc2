"""Diffusion Policy's conditional 1D UNet (FiLM-conditioned residual conv blocks).

Structure (``down_dims = (d0, d1, d2)``, action dim A, horizon H), LeRobot's layout:

- ``step_encoder``: sinusoidal(E) -> Linear(E, 4E) -> Mish -> Linear(4E, E)
- ``encoder[i]``: ``res1`` (c_in -> d_i), ``res2`` (d_i -> d_i), then a stride-2 conv ``downsample``
  except at the last level
- ``mid[0..1]``: residual blocks at the widest level
- ``decoder[i]``: ``res1`` (2 d -> d'), ``res2``, ``upsample`` (transposed conv, x2); the input is the
  previous output concatenated with the matching encoder output (skip connection)
- ``final_block`` (Conv-GroupNorm-Mish at d0, ``final_n_groups`` groups: ``n_groups`` unless set, 8 in
  LeRobot whatever its ``n_groups``) and ``final_proj`` (1x1 conv to A)

Every residual block is FiLM-conditioned on ``cond = [step_embedding(t), global_cond]`` (B, E+G).
For sampling, :meth:`ConditionalUnet1d.film_table` computes every block's FiLM parameters for all
denoising steps of a run at once (each block through its own :meth:`ResidualBlock1d.film_table`),
so the per-step work is only the convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_heads.unet_diffusion.layers import ConvNormMish, ResidualBlock1d, SinusoidalEmbedding, StepEncoder


class EncoderLevel(nn.Module):
    """Two residual blocks, then (except at the deepest level) a stride-2 conv halving the time axis."""

    def __init__(self, res1: ResidualBlock1d, res2: ResidualBlock1d, downsample: nn.Conv1d | None) -> None:
        super().__init__()
        self.res1, self.res2, self.downsample = res1, res2, downsample


class DecoderLevel(nn.Module):
    """Two residual blocks on ``[x, skip]``, then a transposed conv doubling the time axis."""

    def __init__(self, res1: ResidualBlock1d, res2: ResidualBlock1d, upsample: nn.ConvTranspose1d) -> None:
        super().__init__()
        self.res1, self.res2, self.upsample = res1, res2, upsample


@dataclass(frozen=True)
class FilmTable:
    """FiLM parameters of every residual block for every step of a sampling run, factored.

    ``step_parts[k]`` (S, F_k) and ``global_parts[k]`` (B, F_k) for block ``k`` (execution order);
    block ``k``'s parameters at step ``i`` are ``step_parts[k][i] + global_parts[k]`` (B, F_k).
    """

    step_parts: tuple[Tensor, ...]
    global_parts: tuple[Tensor, ...]

    def at(self, i: int) -> list[Tensor]:
        """Every block's FiLM parameters at step ``i``: list of (B, F_k)."""
        return [s[i] + g for s, g in zip(self.step_parts, self.global_parts)]


class ConditionalUnet1d(nn.Module):
    """Denoiser: noisy chunk (B, H, A), step t (B,), global conditioning (B, G) -> (B, H, A)."""

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        *,
        down_dims: tuple[int, ...] = (512, 1024, 2048),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
        scale_modulation: bool = True,
        final_n_groups: int | None = None,
    ) -> None:
        super().__init__()
        cond_dim = step_embed_dim + global_cond_dim
        block = {"kernel_size": kernel_size, "n_groups": n_groups, "scale_modulation": scale_modulation}

        def res(c_in: int, c_out: int) -> ResidualBlock1d:
            return ResidualBlock1d(c_in, c_out, cond_dim, **block)

        self.step_encoder = StepEncoder(
            SinusoidalEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        widths = [action_dim, *down_dims]
        self.encoder = nn.ModuleList(
            EncoderLevel(
                res(widths[i], widths[i + 1]),
                res(widths[i + 1], widths[i + 1]),
                nn.Conv1d(widths[i + 1], widths[i + 1], 3, stride=2, padding=1)
                if i < len(down_dims) - 1
                else None,
            )
            for i in range(len(down_dims))
        )
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        # Decoder levels pair (d_{i+1} -> d_i) for i from the widest down; every one upsamples.
        self.decoder = nn.ModuleList(
            DecoderLevel(
                res(2 * down_dims[i + 1], down_dims[i]),
                res(down_dims[i], down_dims[i]),
                nn.ConvTranspose1d(down_dims[i], down_dims[i], 4, stride=2, padding=1),
            )
            for i in reversed(range(len(down_dims) - 1))
        )
        self.final_block = ConvNormMish(down_dims[0], down_dims[0], kernel_size, final_n_groups or n_groups)
        self.final_proj = nn.Conv1d(down_dims[0], action_dim, 1)

    def blocks(self) -> list[ResidualBlock1d]:
        """The residual blocks in execution order."""
        out: list[ResidualBlock1d] = []
        for level in self.encoder:
            out += [level.res1, level.res2]
        out += list(self.mid)
        for level in self.decoder:
            out += [level.res1, level.res2]
        return out

    def film_table(self, timesteps: Tensor, global_cond: Tensor) -> FilmTable:
        """FiLM parameters of every block for the steps ``timesteps`` (S,) and ``global_cond`` (B, G).

        Mish acts elementwise, so each block's ``Linear(Mish([e_t, g]))`` splits into a part that
        depends only on the step and a part that depends only on the sample
        (:meth:`ResidualBlock1d.film_table`): S + B rows per block instead of S * B.
        """
        step_mish = F.mish(self.step_encoder(timesteps, global_cond.dtype))  # (S, E)
        global_mish = F.mish(global_cond)  # (B, G)
        parts = [block.film_table(step_mish, global_mish) for block in self.blocks()]
        return FilmTable(tuple(s for s, _ in parts), tuple(g for _, g in parts))

    def forward(
        self,
        x: Tensor,
        timestep: Tensor | None = None,
        global_cond: Tensor | None = None,
        *,
        films: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """x (B, H, A), timestep (B,) int, global_cond (B, G) -> (B, H, A).

        ``films``: every block's precomputed FiLM parameters for this step (``FilmTable.at(i)``),
        used instead of ``timestep`` and ``global_cond`` (sampling).
        """
        cond = None
        if films is None:
            if timestep is None or global_cond is None:
                raise ValueError(
                    "ConditionalUnet1d: pass `timestep` and `global_cond`, or precomputed `films`"
                )
            cond = torch.cat([self.step_encoder(timestep, global_cond.dtype), global_cond], dim=-1)
        film = iter(films) if films is not None else None

        def res(block: ResidualBlock1d, h: Tensor) -> Tensor:
            return block(h, cond, film=None if film is None else next(film))

        h = x.transpose(1, 2)  # (B, A, H): channels first, as nn.Conv1d takes them
        skips = []
        for level in self.encoder:
            h = res(level.res2, res(level.res1, h))
            skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
        for block in self.mid:
            h = res(block, h)
        for level in self.decoder:
            h = torch.cat([h, skips.pop()], dim=1)
            h = res(level.res2, res(level.res1, h))
            h = level.upsample(h)
        return self.final_proj(self.final_block(h)).transpose(1, 2)
