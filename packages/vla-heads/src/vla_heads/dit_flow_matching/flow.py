"""GR00T's flow-matching time convention: t = 0 is noise, t = 1 is data.

``x_t = (1 - t) * noise + t * action``, velocity target ``action - noise``, train times
``t = (s - u) / s`` with ``u ~ Beta(alpha, beta)``, integer buckets ``floor(t * buckets)`` fed to the
network, and Euler integration from t = 0 to 1. (pi0 uses the opposite direction; keep them apart.)
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_time(batch_size: int, *, alpha: float, beta: float, s: float) -> Tensor:
    """(B,) float32 train times ``(s - u) / s``, ``u ~ Beta(alpha, beta)``, from the global RNG (on CPU).

    With Beta(1.5, 1) the times lean toward 0, the noisy end; they lie in [1 - 1/s, 1].
    """
    u = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(beta))).sample((batch_size,))
    return (s - u) / s


def time_buckets(t: Tensor, num_buckets: int) -> Tensor:
    """Continuous times (B,) -> integer buckets (B,) long, truncated toward zero."""
    return (t * num_buckets).long()


def inference_buckets(num_steps: int, num_buckets: int) -> list[int]:
    """Bucket of each Euler step k: ``int(k / num_steps * num_buckets)`` (N1.5: 0, 250, 500, 750)."""
    return [int(k / float(num_steps) * num_buckets) for k in range(num_steps)]


def interpolate(noise: Tensor, action: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(B, H, A) noise and action, (B,) times -> noisy actions x_t and the velocity target."""
    tt = t.to(action.dtype).view(-1, *([1] * (action.dim() - 1)))
    return (1 - tt) * noise + tt * action, action - noise
