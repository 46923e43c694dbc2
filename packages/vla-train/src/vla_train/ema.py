"""Exponential moving average of the trainable weights.

After every optimizer step ``t`` (0-based): ``ema = d_t * ema + (1 - d_t) * param`` with
``d_t = min(decay, (1 + t) / (10 + t))`` when ``warmup`` (so early averages follow the
weights) and ``d_t = decay`` otherwise. The shadow tensors are shaped (and sharded) like the
parameters, so they cost one extra copy of each rank's shard.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, *, decay: float, warmup: bool = True) -> None:
        self.decay, self.warmup = decay, warmup
        self.step = 0
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().clone() for n, p in self.params.items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.step) / (10 + self.step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach(), weight)
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": torch.tensor(self.step), "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        with torch.no_grad():
            for name, value in state["shadow"].items():
                if value is not self.shadow[name]:
                    self.shadow[name].copy_(value)
