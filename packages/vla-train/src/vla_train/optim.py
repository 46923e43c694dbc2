"""AdamW with decay only on weight matrices, per-component learning rates, and the LR schedule.

No weight decay on 1-D parameters (norm scales, biases) and embedding tables. ``lr_scales``
maps parameter-name prefixes to LR factors (``{"backbone": 0.1}``); the longest prefix wins.
Build the optimizer after FSDP so it holds the sharded parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from vla_core import ConfigError

from vla_train.config import OptimConfig, ScheduleConfig


def _scale_of(name: str, lr_scales: Mapping[str, float]) -> float:
    best, scale = -1, 1.0
    for prefix, value in lr_scales.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, scale = len(prefix), value
    return scale


def param_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    """Trainable parameters grouped by (decay or not, lr scale); each group is tagged with its names."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for prefix in config.lr_scales:
        if not any(n == prefix or n.startswith(prefix + ".") for n, _ in model.named_parameters()):
            raise ConfigError(f"optim.lr_scales: {prefix!r} is the prefix of no parameter name")
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and id(param) not in embeddings
        scale = _scale_of(name, config.lr_scales)
        group = groups.setdefault((decay, scale), {
            "params": [], "names": [], "lr": config.lr * scale, "weight_decay": config.weight_decay if decay else 0.0,
        })
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("the policy has no trainable parameter: every parameter is frozen")
    return [groups[key] for key in sorted(groups)]


_FUSED_DEVICES = {"cpu", "cuda"}


def implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """``{"fused": True}`` when every parameter is a floating-point tensor on a device with torch's
    fused AdamW kernel (CPU, CUDA; FSDP's DTensor shards included), else ``{"foreach": True}``.

    On CPU the fused kernel is ~8x faster than the per-tensor loop (one pass over the parameters
    instead of a dozen), which matters for 100M+ parameter heads.
    """
    if all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params):
        return {"fused": True}
    return {"foreach": True}


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    groups = param_groups(model, config)
    for group in groups:
        group.pop("names")
    params = [p for group in groups for p in group["params"]]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, eps=config.eps, **implementation(params)
    )


def lr_factor(step: int, *, total_steps: int, config: ScheduleConfig) -> float:
    """Multiplier of the base LR at ``step``: linear warmup from 0, then cosine or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.name == "constant":
        return 1.0
    span = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps=total_steps, config=config))


def clip_gradients(parameters: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm`` (``None``: no clipping) and return the norm before
    clipping as a plain scalar tensor. FSDP's gradients are DTensor shards: torch reduces their norms
    across ranks, and ``full_tensor()`` makes the result a local value."""
    grads = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm is not None else math.inf)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
