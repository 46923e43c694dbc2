"""pi0 flow-matching numerics (openpi convention: t = 1 is noise, t = 0 is the action chunk).

``x_t = t * noise + (1 - t) * action``; the network regresses ``u_t = noise - action``; sampling
integrates with Euler from t = 1 down to t = 0 (``dt = -1 / steps``). GR00T runs time the other way:
do not share these with a GR00T head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def sinusoidal_time_embedding(time: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine features of scalar times (B,) -> (B, dim) in ``time``'s dtype.

    Periods are spaced geometrically from ``min_period`` to ``max_period``; computed in float64
    (float32 on devices without it).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal_time_embedding: dim must be even, received {dim}")
    dtype = torch.float32 if time.device.type == "mps" else torch.float64
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * time[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(time.dtype)


def sample_time(batch_size: int, device: torch.device, *, alpha: float, beta: float, scale: float, offset: float) -> Tensor:
    """Training times (B,) float32: ``Beta(alpha, beta) * scale + offset`` (drawn on the CPU generator)."""
    dist = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(beta))
    return (dist.sample((batch_size,)) * scale + offset).to(device=device, dtype=torch.float32)


def interpolate(action: Tensor, noise: Tensor, time: Tensor) -> tuple[Tensor, Tensor]:
    """Noisy input ``x_t`` and velocity target ``u_t`` for action/noise (B, H, A) and time (B,)."""
    t = time[:, None, None]
    return t * noise + (1 - t) * action, noise - action


def euler_sample(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int) -> Tensor:
    """Integrate ``dx/dt = velocity(x, t)`` from t = 1 (``noise``, (B, H, A)) to t = 0 in ``steps`` steps.

    ``velocity`` receives x (B, H, A) and t (B,) float32 at t = 1, 1 - 1/steps, ..., 1/steps.
    """
    dt = -1.0 / steps
    x = noise
    for step in range(steps):
        t = torch.full((noise.shape[0],), 1.0 + step * dt, dtype=torch.float32, device=noise.device)
        x = x + dt * velocity(x, t)
    return x
