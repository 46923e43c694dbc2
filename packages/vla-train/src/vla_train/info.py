"""``vla info``: what a policy checkpoint holds (config, parameter counts per component, normalization stats)."""

from __future__ import annotations

import json
from pathlib import Path

from vla_core import load_policy

from vla_train.eval import resolve_policy_dir


def describe(path: str | Path) -> str:
    policy_dir = resolve_policy_dir(path)
    policy = load_policy(policy_dir)
    lines = [f"policy: {policy_dir}", "config:", json.dumps(policy.config.to_dict(), indent=2, sort_keys=True),
             "parameters:"]
    total = trainable = 0
    for name, child in policy.named_children():
        count = sum(p.numel() for p in child.parameters())
        if count:
            train = sum(p.numel() for p in child.parameters() if p.requires_grad)
            lines.append(f"  {name:<10} {count:>12,}  ({train:,} trainable)")
            total, trainable = total + count, trainable + train
    lines.append(f"  {'total':<10} {total:>12,}  ({trainable:,} trainable)")
    lines.append("normalization:")
    for key, mode in policy.normalizer.modes.items():
        stats = policy.normalizer.stats_of(key)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in stats.items())
        lines.append(f"  {key} ({mode}){': ' + shown if shown else ''}")
    return "\n".join(lines)


def _short(tensor) -> str:
    values = [round(float(v), 4) for v in tensor.flatten()[:6]]
    return str(values) + ("..." if tensor.numel() > 6 else "")
