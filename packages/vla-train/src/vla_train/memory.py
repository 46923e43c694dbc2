"""``vla info CONFIG --memory``: per-rank memory of weights, gradients and AdamW state, before a run.

The policy is built on the meta device (shapes and dtypes, no storage), so full-size configs
(``configs/pi0.yaml``, ``configs/groot_n15.yaml``) are sized on any machine. For every parameter of
``numel`` elements and ``b`` bytes per element (its dtype: ``parallel.weight_dtype``; LoRA adapters stay
float32):

- weights: ``numel * b`` for every parameter;
- gradients: ``numel * b`` for every trainable parameter (torch keeps ``.grad`` in the parameter's dtype);
- AdamW state: ``exp_avg`` and ``exp_avg_sq`` (``2 * numel * b``) plus the float32 ``step`` scalar
  (4 bytes) per trainable parameter;
- FSDP2 over N ranks: every parameter (and so its gradient and state) is sharded on dim 0, padded to a
  multiple of N: a rank holds ``ceil(d0 / N) * numel / d0`` elements. While a unit runs, its parameters
  are gathered whole; with the next unit prefetched that is up to two units (the "gathered" column).

Activations, the CUDA context and allocator fragmentation are not included: they depend on the batch,
activation checkpointing and the device. The estimate is exact for what it counts (a test compares it
with the tensors of a tiny model after an optimizer step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vla_core import ConfigError, build_policy

from vla_train.adapters import PeftConfig, apply_peft

STEP_BYTES = 4  # AdamW's per-parameter float32 step counter


@dataclass(frozen=True)
class Memory:
    """Bytes per rank of one training setup. ``gathered``: FSDP2's transient whole units (0 unsharded)."""

    label: str
    parameters: int
    trainable: int
    weights: int
    grads: int
    optimizer: int
    gathered: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.gathered


def _shard(numel: int, shape: torch.Size, ranks: int) -> int:
    """Elements of one rank's dim-0 shard (padded), for a tensor of ``shape``."""
    if ranks == 1 or not shape:
        return numel
    rows = shape[0]
    return math.ceil(rows / ranks) * (numel // rows) if rows else 0


def measure(model: nn.Module, label: str, *, ranks: int = 1) -> Memory:
    """The memory of ``model``'s parameters (meta or real) for AdamW training, per rank of ``ranks``."""
    params = list(model.parameters())
    weights = grads = optimizer = 0
    for p in params:
        size = _shard(p.numel(), p.shape, ranks) * p.element_size()
        weights += size
        if p.requires_grad:
            grads += size
            optimizer += 2 * size + STEP_BYTES
    gathered = 0
    if ranks > 1:
        units = tuple(model.fsdp_units()) if hasattr(model, "fsdp_units") else ()
        sizes = sorted((sum(p.numel() * p.element_size() for p in m.parameters())
                        for m in model.modules() if units and isinstance(m, units)), reverse=True)
        gathered = sum(sizes[:2])
    return Memory(label, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
                  weights, grads, optimizer, gathered)


def meta_policy(spec: Mapping[str, Any], *, weight_dtype: str = "float32", peft: PeftConfig | None = None) -> nn.Module:
    """The policy of ``spec`` on the meta device (no storage), in ``weight_dtype``, with LoRA when ``peft``."""
    with torch.device("meta"):
        policy = build_policy(spec)
    if weight_dtype != "float32":
        policy.set_dtype(weight_dtype)
    if peft is not None:
        apply_peft(policy, peft)
    return policy


def estimate(spec: Mapping[str, Any], *, ranks: int = 1, lora: PeftConfig | None = None,
             weight_dtype: str = "float32") -> list[Memory]:
    """Full fine-tuning and (with ``lora``) LoRA, on one process and (``ranks`` > 1) FSDP2 per rank."""
    if ranks < 1:
        raise ConfigError(f"--ranks: expected >= 1, received {ranks}")
    setups = [("full fine-tuning", None)] + ([(f"LoRA r={lora.r}", lora)] if lora is not None else [])
    rows = []
    for label, peft in setups:
        policy = meta_policy(spec, weight_dtype=weight_dtype, peft=peft)
        rows.append(measure(policy, label))
        if ranks > 1:
            rows.append(measure(policy, f"{label}, FSDP2 x{ranks} (per rank)", ranks=ranks))
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:9.2f}"


def format_table(rows: list[Memory]) -> str:
    """A text table in GiB, one row per setup."""
    width = max(len(r.label) for r in rows)
    header = (f"{'setup':<{width}}  {'trainable':>22}  {'weights':>9}  {'grads':>9}  {'AdamW':>9}  {'gathered':>9}  "
              f"{'total GiB':>9}")
    lines = [header]
    for r in rows:
        share = f"{r.trainable:,} ({100 * r.trainable / max(r.parameters, 1):.1f}%)"
        lines.append(f"{r.label:<{width}}  {share:>22}  {_gib(r.weights)}  {_gib(r.grads)}  {_gib(r.optimizer)}  "
                     f"{_gib(r.gathered)}  {_gib(r.total)}")
    return "\n".join(lines)


def describe_memory(path: str | Path, *, ranks: int = 1, lora: bool = False) -> str:
    """``vla info CONFIG --memory``: the table for a YAML holding ``policy`` (with its features) and
    optionally ``peft`` and ``parallel.weight_dtype`` (a training config or a policy config like configs/pi0.yaml)."""
    from vla_train.config import load_yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    data = load_yaml(path.read_text(), str(path)) or {}
    spec = data.get("policy") if isinstance(data, Mapping) else None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{path}: expected a mapping with a 'policy' section, received {type(data).__name__}")
    for key in ("input_features", "output_features"):
        if key not in spec:
            raise ConfigError(f"{path}: policy.{key} is missing; --memory sizes the policy without its dataset, so "
                              "the features must be written in the config")
    peft = data.get("peft")
    lora_config = PeftConfig.from_dict(peft or {}) if (lora or peft) else None
    weight_dtype = (data.get("parallel") or {}).get("weight_dtype", "float32")
    rows = estimate(spec, ranks=ranks, lora=lora_config, weight_dtype=weight_dtype)
    kinds = f"{spec['backbone'].get('type')} + {spec['head'].get('type')}"
    return "\n".join([f"policy: {path} ({kinds}), weights in {weight_dtype}",
                      f"parameters: {rows[0].parameters:,}",
                      format_table(rows),
                      ("per rank; AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype; activations not "
                       "included")])


__all__ = ["Memory", "describe_memory", "estimate", "format_table", "measure", "meta_policy"]
