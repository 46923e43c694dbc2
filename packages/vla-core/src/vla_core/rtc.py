"""Real-time chunking (RTC) for flow-matching heads: the flow interface and the guidance.

Black, Galliker and Levine (2025), "Real-Time Execution of Action Chunking Flow Policies": while a
robot executes the previous chunk, the next one is computed; the first ``delay`` actions of the new
chunk are executed before it arrives, so they must equal what the robot is doing anyway, and the
rest should continue the previous chunk's unexecuted actions smoothly. RTC treats this as
inpainting: every denoising step adds a guidance term that pulls the denoiser's *predicted clean
actions* toward the previous chunk's actions (a vector-Jacobian product through the velocity
field), with soft weights over the overlap.

Conventions (shapes: ``B`` batch, ``H`` horizon, ``A`` action dim, ``Ap`` a head's padded action
dim, ``H'`` the previous chunk's actions given as the prefix):

- flow time ``tau`` runs from 0 (noise) to 1 (actions), as in the paper; a head whose own time runs
  the other way (pi0) flips it in :meth:`FlowActionHead.flow_field`;
- a :class:`FlowField` gives ``dx/dtau`` at Euler step ``k`` (``tau = k / steps``);
- prefix weights: 1 for the first ``delay`` actions (frozen), then exponentially decaying to 0 at
  ``execution_horizon`` (default H'), 0 after (the paper's "exp" schedule, as in its Kinetix code and
  LeRobot's ``get_prefix_weights``); padded action dims get weight 0;
- guidance weight ``min(max_guidance_weight, (1 - tau) / tau * (tau^2 + (1 - tau)^2) / (1 - tau)^2)``,
  ``max_guidance_weight`` = 5.0 (the paper's value) at tau = 0.

The first ``delay`` actions of the result are set to the prefix's exactly (:meth:`RTCGuide.freeze`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vla_core.interfaces import ActionHead, BackboneOutput

DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0


@dataclass(frozen=True)
class FlowField:
    """A head's velocity field for one batch, ready to integrate.

    noise: (B, H, Ap) the start point x at tau = 0. steps: Euler steps. velocity: ``(x (B, H, Ap), k)``
    -> ``dx/dtau`` (B, H, Ap) at ``tau = k / steps``.
    """

    noise: Tensor
    steps: int
    velocity: Callable[[Tensor, int], Tensor]

    def integrate(self, guide: RTCGuide | None = None) -> Tensor:
        """Euler from tau = 0 to 1: (B, H, Ap). With ``guide``, every step is RTC-guided and the
        first ``guide.delay`` actions of the result are the prefix's."""
        dt = 1.0 / self.steps
        x = self.noise
        for k in range(self.steps):
            if guide is None:
                v = self.velocity(x, k)
            else:
                v = guide.guided_velocity(x, k * dt, lambda y, _k=k: self.velocity(y, _k))
            x = x + dt * v
        return x if guide is None else guide.freeze(x)


class FlowActionHead(ActionHead):
    """An action head that samples by integrating a velocity field (flow matching).

    Subclasses implement :meth:`flow_field`; ``predict_action`` integrates it, RTC-guided when a
    :class:`RTCGuide` is given. :class:`~vla_core.policy.VLAPolicy` offers real-time chunking
    (``predict_action_chunk(..., prefix=, delay=)``) exactly for heads of this type.
    """

    @abc.abstractmethod
    def flow_field(
        self, context: BackboneOutput, batch: Any, *, noise: Tensor | None, generator: torch.Generator | None
    ) -> FlowField:
        """The velocity field (in tau: 0 noise, 1 actions) and its start noise (B, H, Ap) for this batch.

        ``noise`` (B, H, A) or (B, H, Ap), else drawn from ``generator``."""

    def predict_action(
        self,
        context: BackboneOutput,
        batch: Any,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        guide: RTCGuide | None = None,
    ) -> Tensor:
        """(Normalized) action chunk (B, H, A): the field integrated from its noise, guided by ``guide``."""
        field = self.flow_field(context, batch, noise=noise, generator=generator)
        return field.integrate(guide)[..., : self.action_dim]


def prefix_weights(delay: int, end: int, horizon: int) -> Tensor:
    """(horizon,) float32: 1 for steps < ``delay``, exponentially decaying over ``delay <= i < end``, 0 after.

    The decay is the paper's: linear ``w`` from 1 down to 0 (both ends excluded), then ``w * expm1(w) / (e - 1)``.
    """
    i = torch.arange(horizon, dtype=torch.float32)
    start = min(delay, end)
    w = ((start - 1 - i) / (end - start + 1) + 1).clamp(0.0, 1.0)
    w = w * torch.expm1(w) / (math.e - 1)
    w = torch.where(i < start, torch.ones_like(w), w)
    return torch.where(i >= end, torch.zeros_like(w), w)


def guidance_weight(tau: float, max_guidance_weight: float) -> float:
    """The paper's clipped guidance weight at flow time ``tau`` in [0, 1) (``max_guidance_weight`` at tau = 0)."""
    if tau <= 0.0:
        return max_guidance_weight
    inv_r2 = (tau**2 + (1 - tau) ** 2) / (1 - tau) ** 2
    return min(max_guidance_weight, (1 - tau) / tau * inv_r2)


class RTCGuide:
    """RTC guidance toward ``prefix`` (B, H', A): the previous chunk's unexecuted actions, normalized.

    ``delay``: the actions executed before the new chunk arrives (0 <= delay <= H'); they are frozen
    (weight 1 and, in the result, equal to the prefix). ``horizon``: H of the head (H' <= H).
    ``execution_horizon``: where the soft weights reach 0 (delay <= it <= H'; default H').
    """

    def __init__(self, prefix: Tensor, delay: int, horizon: int, *, execution_horizon: int | None = None,
                 max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT) -> None:
        check_prefix(prefix, delay, horizon)
        steps = prefix.shape[1]
        end = steps if execution_horizon is None else execution_horizon
        if isinstance(end, bool) or not isinstance(end, int) or not delay <= end <= steps:
            raise ValueError(f"execution_horizon: expected an int in [delay {delay}, prefix length {steps}], "
                             f"received {execution_horizon!r}")
        if not max_guidance_weight > 0:
            raise ValueError(f"max_guidance_weight: expected > 0, received {max_guidance_weight}")
        self.prefix, self.delay, self.horizon = prefix, delay, horizon
        self.max_guidance_weight = float(max_guidance_weight)
        self.weights = prefix_weights(delay, end, horizon)  # (H,)

    def _target(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The prefix padded to x's (B, H, Ap), and the weights (1, H, Ap) (0 on padded steps and dims)."""
        bsz, steps, dims = self.prefix.shape
        if x.shape[0] != bsz or x.shape[1] != self.horizon or x.shape[2] < dims:
            raise ValueError(f"RTC prefix of shape {tuple(self.prefix.shape)} does not fit the sample of shape "
                             f"{tuple(x.shape)}: expected (B, H, >= A) with B = {bsz}, H = {self.horizon}")
        target = x.new_zeros(x.shape)
        target[:, :steps, :dims] = self.prefix.to(x)
        weights = x.new_zeros((1, *x.shape[1:]))
        weights[..., :dims] = self.weights.to(x)[:, None]
        return target, weights

    def guided_velocity(self, x: Tensor, tau: float, velocity: Callable[[Tensor], Tensor]) -> Tensor:
        """``dx/dtau`` (B, H, Ap) at x (B, H, Ap), guided: ``v + w(tau) * (J^T) (weights * (prefix - x1))``
        where ``x1 = x + (1 - tau) v`` is the denoiser's predicted clean chunk and J = d x1 / d x."""
        target, weights = self._target(x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = velocity(x)
            x1 = x + (1 - tau) * v
            error = (target - x1) * weights
            (correction,) = torch.autograd.grad(x1, x, error)
        return v.detach() + guidance_weight(tau, self.max_guidance_weight) * correction.to(v.dtype)

    def freeze(self, x: Tensor) -> Tensor:
        """x (B, H, Ap) with its first ``delay`` actions (real dims) replaced by the prefix's."""
        if self.delay == 0:
            return x
        x = x.clone()
        x[:, : self.delay, : self.prefix.shape[2]] = self.prefix[:, : self.delay].to(x)
        return x


def check_prefix(prefix: Any, delay: Any, horizon: int, action_dim: int | None = None) -> None:
    """Raise ``ValueError`` naming the argument unless ``prefix`` is (B, H', A) with 1 <= H' <= horizon
    (A = ``action_dim`` when given), finite, and ``delay`` an int in [0, H']."""
    if not isinstance(prefix, Tensor) or prefix.dim() != 3 or not prefix.is_floating_point():
        got = f"shape {tuple(prefix.shape)} {prefix.dtype}" if isinstance(prefix, Tensor) else type(prefix).__name__
        raise ValueError(f"prefix: expected a float tensor (B, H', A) of the previous chunk's actions, received {got}")
    want_dim = prefix.shape[2] if action_dim is None else action_dim
    if not 1 <= prefix.shape[1] <= horizon or prefix.shape[2] != want_dim:
        raise ValueError(f"prefix: expected shape (B, H', {want_dim}) with 1 <= H' <= the horizon {horizon}, "
                         f"received {tuple(prefix.shape)}")
    if not bool(torch.isfinite(prefix).all()):
        raise ValueError(f"prefix: expected finite actions, received {int((~torch.isfinite(prefix)).sum())} NaN/Inf")
    if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= prefix.shape[1]:
        raise ValueError(f"delay: expected an int in [0, H' = {prefix.shape[1]}] (the prefix's length), "
                         f"received {delay!r}")
