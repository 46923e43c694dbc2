"""Turning predicted chunks into one action per control step: a plain queue or ACT's temporal ensemble."""

from __future__ import annotations

import torch
from torch import Tensor


class ActionQueue:
    """Executes ``n_action_steps`` actions of each predicted chunk, from index ``start``, one per call."""

    def __init__(self, n_action_steps: int, start: int = 0) -> None:
        self.n_action_steps = n_action_steps
        self.start = start
        self._pending: list[Tensor] = []

    def reset(self) -> None:
        self._pending = []

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, chunk: Tensor) -> None:
        """chunk (B, H, A): queue actions start .. start + n_action_steps - 1 (each (B, A))."""
        self._pending = list(chunk[:, self.start : self.start + self.n_action_steps].unbind(1))

    def pop(self) -> Tensor:
        return self._pending.pop(0)


class TemporalEnsembler:
    """ACT's temporal ensembling: each step averages every prediction made for that step.

    A prediction made ``i`` steps after the first one that covered a time step gets weight
    ``exp(-coeff * i)``: with ``coeff > 0`` older predictions weigh more (ACT uses 0.01).
    The running average is kept incrementally, so memory is one chunk.
    """

    def __init__(self, coeff: float, horizon: int) -> None:
        self.coeff = coeff
        self.horizon = horizon
        self.weights = torch.exp(-coeff * torch.arange(horizon, dtype=torch.float64))
        self.weights_cumsum = self.weights.cumsum(0)
        self.reset()

    def reset(self) -> None:
        self._avg: Tensor | None = None  # (B, H', A) running averages for the coming steps
        self._count: Tensor | None = None  # (H',) predictions folded into each

    def update(self, chunk: Tensor) -> Tensor:
        """chunk (B, H, A) predicted now -> the ensembled action (B, A) to execute now."""
        if self._avg is None:
            self._avg = chunk.clone()
            self._count = torch.ones(self.horizon, dtype=torch.long)
        else:
            seen = self._count  # (H-1,)
            w_new = self.weights[seen].to(chunk)[None, :, None]
            prev_total = self.weights_cumsum[seen - 1].to(chunk)[None, :, None]
            new_total = self.weights_cumsum[seen].to(chunk)[None, :, None]
            avg = (self._avg * prev_total + chunk[:, :-1] * w_new) / new_total
            self._avg = torch.cat([avg, chunk[:, -1:]], dim=1)
            self._count = torch.cat([(seen + 1).clamp(max=self.horizon), seen.new_ones(1)])
        action, self._avg, self._count = self._avg[:, 0], self._avg[:, 1:], self._count[1:]
        return action
