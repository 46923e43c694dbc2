"""Diffusion Policy's conditional 1D UNet (FiLM-conditioned residual conv blocks), time-major.

Structure (``down_dims = (d0, d1, d2)``, action dim A, horizon H):

- ``step_encoder``: sinusoidal(E) -> Linear(E, 4E) -> Mish -> Linear(4E, E)
- ``encoder[i]``: ``res1`` (c_in -> d_i), ``res2`` (d_i -> d_i), then a stride-2 conv ``downsample``
  except at the last level
- ``mid[0..1]``: residual blocks at the widest level
- ``decoder[i]``: ``res1`` (2 d -> d'), ``res2``, ``upsample`` (transposed conv, x2); the input is the
  previous output concatenated with the matching encoder output (skip connection)
- ``final_block`` (Conv-GroupNorm-Mish at d0) and ``final_proj`` (1x1 conv to A)

Every residual block is FiLM-conditioned on ``cond = [step_embedding(t), global_cond]``. Because
``Linear(Mish(cond))`` splits into a step part and a global part, :meth:`ConditionalUnet1d.film_table`
computes every block's FiLM parameters for all denoising steps of a sampling run at once; the
per-step work is then only the convolutions (:meth:`ConditionalUnet1d.denoise`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_heads.unet_diffusion.layers import (
    Conv1dGemm,
    ConvNormMish,
    ResidualBlock1d,
    SinusoidalEmbedding,
    Upsample2x,
)


class EncoderLevel(nn.Module):
    def __init__(self, res1: ResidualBlock1d, res2: ResidualBlock1d, downsample: Conv1dGemm | None) -> None:
        super().__init__()
        self.res1, self.res2, self.downsample = res1, res2, downsample


class DecoderLevel(nn.Module):
    def __init__(self, res1: ResidualBlock1d, res2: ResidualBlock1d, upsample: Upsample2x) -> None:
        super().__init__()
        self.res1, self.res2, self.upsample = res1, res2, upsample


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
    ) -> None:
        super().__init__()
        self.step_embed_dim = step_embed_dim
        cond_dim = step_embed_dim + global_cond_dim
        block = dict(kernel_size=kernel_size, n_groups=n_groups, scale_modulation=scale_modulation)

        def res(c_in: int, c_out: int) -> ResidualBlock1d:
            return ResidualBlock1d(c_in, c_out, cond_dim, **block)

        self.step_encoder = nn.Sequential(
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
                Conv1dGemm(widths[i + 1], widths[i + 1], 3, stride=2, padding=1)
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
                Upsample2x(down_dims[i]),
            )
            for i in reversed(range(len(down_dims) - 1))
        )
        self.final_block = ConvNormMish(down_dims[0], down_dims[0], kernel_size, n_groups)
        self.final_proj = Conv1dGemm(down_dims[0], action_dim, 1)

    # ------------------------------------------------------------------ conditioning
    def blocks(self) -> list[ResidualBlock1d]:
        """The residual blocks in execution order."""
        out: list[ResidualBlock1d] = []
        for level in self.encoder:
            out += [level.res1, level.res2]
        out += list(self.mid)
        for level in self.decoder:
            out += [level.res1, level.res2]
        return out

    def film_params(self, timestep: Tensor, global_cond: Tensor) -> list[Tensor]:
        """Per-block FiLM parameters for one step per sample: timestep (B,), global_cond (B, G)
        -> list of (B, 2C) (or (B, C) without scale modulation)."""
        step = self.step_encoder(timestep)
        cond = F.mish(torch.cat([step.to(global_cond.dtype), global_cond], dim=-1))
        return [block.film(cond) for block in self.blocks()]

    def film_table(self, timesteps: Tensor, global_cond: Tensor) -> list[Tensor]:
        """FiLM parameters of every block for every step of a sampling run.

        timesteps (S,), global_cond (B, G) -> list of (S, B, 2C). Mish acts elementwise, so
        ``Linear(Mish([e_t, g])) = W_e Mish(e_t) + W_g Mish(g) + b``: the step part is one GEMM
        over the S steps and the global part one GEMM over the batch, per block.
        """
        e = self.step_embed_dim
        step = F.mish(self.step_encoder(timesteps).to(global_cond.dtype))  # (S, E)
        glob = F.mish(global_cond)  # (B, G)
        table = []
        for block in self.blocks():
            w, b = block.film.weight, block.film.bias
            table.append(F.linear(step, w[:, :e]).unsqueeze(1) + F.linear(glob, w[:, e:], b))
        return table

    # ------------------------------------------------------------------ denoising
    def denoise(self, x: Tensor, films: list[Tensor]) -> Tensor:
        """x (B, H, A) and per-block FiLM parameters (from :meth:`film_params` or one row of
        :meth:`film_table`) -> (B, H, A)."""
        films = iter(films)
        skips = []
        for level in self.encoder:
            x = level.res1(x, next(films))
            x = level.res2(x, next(films))
            skips.append(x)
            if level.downsample is not None:
                x = level.downsample(x)
        for block in self.mid:
            x = block(x, next(films))
        for level in self.decoder:
            x = torch.cat([x, skips.pop()], dim=-1)
            x = level.res1(x, next(films))
            x = level.res2(x, next(films))
            x = level.upsample(x)
        return self.final_proj(self.final_block(x))

    def forward(self, x: Tensor, timestep: Tensor, global_cond: Tensor) -> Tensor:
        """x (B, H, A), timestep (B,) int, global_cond (B, G) -> (B, H, A)."""
        return self.denoise(x, self.film_params(timestep, global_cond))
