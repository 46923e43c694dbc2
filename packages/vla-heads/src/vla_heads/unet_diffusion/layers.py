"""Building blocks of the conditional 1D UNet, computed as GEMMs in a (B, T, C) layout.

Diffusion Policy's temporal convolutions run over short horizons (T = 4..16) with wide channels
(512..4096), a shape CPU convolution kernels serve badly (LeRobot's UNet reaches ~10% of the matmul
peak). Here activations stay time-major, (B, T, C), and every convolution is one ``F.linear`` over
unfolded windows: ``(B*T, C*k) @ (C_out, C*k)^T``. The weights keep ``nn.Conv1d`` /
``nn.ConvTranspose1d`` layouts, so checkpoints load unchanged; ``weight.reshape(C_out, C*k)`` is a
view (no copy), and the window matrix is ordered (channel, tap) to match it.

GroupNorm runs on a channels-last 4D view of the (B, T, C) activations, so it needs no transpose
copies. Shapes: B batch, T time (horizon), C channels, E conditioning width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv1d_btc(
    x: Tensor, weight: Tensor, bias: Tensor | None, *, stride: int = 1, padding: int = 0
) -> Tensor:
    """``nn.Conv1d`` on time-major input as one GEMM.

    x: (B, T, C_in); weight: (C_out, C_in, k) (``nn.Conv1d`` layout); bias: (C_out,).
    Returns (B, T_out, C_out) with ``T_out = (T + 2 padding - k) // stride + 1``.
    """
    c_out, c_in, k = weight.shape
    if padding:
        x = F.pad(x, (0, 0, padding, padding))
    windows = x.unfold(1, k, stride) if k > 1 or stride > 1 else x.unsqueeze(-1)
    b, t_out = windows.shape[:2]  # windows (B, T_out, C_in, k): [b, t, c, j] = x[b, t*stride + j, c]
    return weight_times_rows(weight.reshape(c_out, c_in * k), windows.reshape(b * t_out, c_in * k), bias).view(
        b, t_out, c_out
    )


def weight_times_rows(weight: Tensor, rows: Tensor, bias: Tensor | None) -> Tensor:
    """``rows @ weight^T + bias`` computed as ``(weight @ rows^T)^T``: rows (M, K), weight (N, K) -> (M, N).

    Same result as ``F.linear``; the weight-on-the-left form streams the (large) weight matrix through
    the BLAS kernel the way it serves short-and-wide right-hand sides best. On CPU it runs 1.5-2.5x
    faster than ``F.linear`` for M = B*T in 4..128 (the UNet's shapes), which is near the memory
    bandwidth limit at batch 1.
    """
    out = torch.mm(weight, rows.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, rows.t())
    return out.t().contiguous()


def upsample2x_btc(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``nn.ConvTranspose1d(C_in, C_out, kernel_size=4, stride=2, padding=1)`` on time-major input.

    x: (B, T, C_in); weight: (C_in, C_out, 4) (``nn.ConvTranspose1d`` layout). Returns (B, 2T, C_out).
    One GEMM gives every tap's contribution ``z[b, t, o, j]``; output position ``p = 2t + j - 1``
    collects ``z[m, 1] + z[m-1, 3]`` at ``p = 2m`` and ``z[m, 2] + z[m+1, 0]`` at ``p = 2m + 1``.
    """
    c_in, c_out, k = weight.shape
    if k != 4:
        raise ValueError(
            f"upsample2x_btc: expected kernel size 4, received weight of shape {tuple(weight.shape)}"
        )
    b, t, _ = x.shape
    z = torch.matmul(x, weight.reshape(c_in, c_out * k)).view(b, t, c_out, k)
    zero = z.new_zeros(b, 1, c_out)
    even = z[:, :, :, 1] + torch.cat([zero, z[:, :-1, :, 3]], dim=1)
    odd = z[:, :, :, 2] + torch.cat([z[:, 1:, :, 0], zero], dim=1)
    out = torch.stack([even, odd], dim=2).view(b, 2 * t, c_out)
    return out if bias is None else out + bias


def group_norm_btc(x: Tensor, num_groups: int, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """GroupNorm over the channels of time-major x (B, T, C) -> (B, T, C), without transposing.

    (B, T, C) viewed as (B, C, T, 1) has channels-last strides, which PyTorch's GroupNorm kernels
    handle natively.
    """
    y = F.group_norm(x.transpose(1, 2).unsqueeze(-1), num_groups, weight, bias, eps)
    return y.squeeze(-1).transpose(1, 2)


class Conv1dGemm(nn.Module):
    """An ``nn.Conv1d`` (same parameters and state-dict layout) applied to time-major (B, T, C) input."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0
    ) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        ref = nn.Conv1d(in_channels, out_channels, kernel_size)  # PyTorch's default initialisation
        self.weight = nn.Parameter(ref.weight.detach())
        self.bias = nn.Parameter(ref.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C_in) -> (B, T_out, C_out)."""
        return conv1d_btc(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


class Upsample2x(nn.Module):
    """``nn.ConvTranspose1d(C, C, 4, stride=2, padding=1)`` (same parameters) on (B, T, C) input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        ref = nn.ConvTranspose1d(channels, channels, 4, 2, 1)
        self.weight = nn.Parameter(ref.weight.detach())
        self.bias = nn.Parameter(ref.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, 2T, C)."""
        return upsample2x_btc(x, self.weight, self.bias)


class ConvNormMish(nn.Module):
    """Conv1d(k, 'same' padding) -> GroupNorm -> Mish, on (B, T, C_in) -> (B, T, C_out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv = Conv1dGemm(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(n_groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return F.mish(
            group_norm_btc(y, self.norm.num_groups, self.norm.weight, self.norm.bias, self.norm.eps)
        )


class ResidualBlock1d(nn.Module):
    """Diffusion Policy's conditional residual block with FiLM, on time-major activations.

    ``out = conv2(film(conv1(x))) + residual(x)`` where ``film(h) = scale * h + shift`` (or
    ``h + shift`` without scale modulation) and ``[scale, shift] = Linear(Mish(cond))``. The FiLM
    parameters come from outside (:meth:`film_params`), so the UNet can compute them once per
    sampling run instead of once per denoising step.
    """

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
        self.film = nn.Linear(cond_dim, 2 * out_channels if scale_modulation else out_channels)
        self.conv2 = ConvNormMish(out_channels, out_channels, kernel_size, n_groups)
        self.residual = Conv1dGemm(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, film: Tensor) -> Tensor:
        """x (B, T, C_in), film (B, 2 C_out) or (B, C_out) -> (B, T, C_out)."""
        h = self.conv1(x)
        film = film.unsqueeze(1)
        if self.scale_modulation:
            h = torch.addcmul(film[..., self.out_channels :], film[..., : self.out_channels], h)
        else:
            h = h + film
        h = self.conv2(h)
        return h + (x if self.residual is None else self.residual(x))


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
