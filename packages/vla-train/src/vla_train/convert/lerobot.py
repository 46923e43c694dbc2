"""``vla convert lerobot SRC DST``: LeRobot 0.6.x policy directories -> vla policies.

A LeRobot policy directory holds ``config.json`` (with ``"type"``: act, diffusion, pi0, ...),
``model.safetensors`` and its processor files with the normalization stats. Each policy type
has its own module exposing ``convert(src: Path, dst: Path) -> Path``; the module is imported
only when its type is converted.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from vla_core import ConfigError, load_tensors

LEROBOT_CONVERTERS = {
    "act": "vla_train.convert.lerobot_act",
    "diffusion": "vla_train.convert.lerobot_diffusion",
    "pi0": "vla_train.convert.lerobot_pi0",
}


def convert_lerobot(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert the LeRobot policy directory ``src`` into a vla policy directory ``dst``."""
    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a LeRobot policy directory")
    policy_type = json.loads(config_path.read_text()).get("type")
    if policy_type not in LEROBOT_CONVERTERS:
        raise ConfigError(
            f"{config_path}: LeRobot policy type {policy_type!r} has no converter; supported: "
            f"{', '.join(sorted(LEROBOT_CONVERTERS))}"
        )
    module = importlib.import_module(LEROBOT_CONVERTERS[policy_type])
    return module.convert(src, dst)


def read_lerobot_stats(src: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{feature: {stat: tensor}}`` from the (un)normalizer steps of LeRobot's processor files
    (``policy_preprocessor*.json`` / ``policy_postprocessor*.json`` and the state files they name)."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for pipeline in sorted(src.glob("policy_*processor*.json")):
        for step in json.loads(pipeline.read_text()).get("steps", []):
            state_file = step.get("state_file")
            if not state_file or "normalizer" not in step.get("registry_name", ""):
                continue
            for name, tensor in load_tensors(src / state_file).items():
                feature, _, stat = name.rpartition(".")
                stats.setdefault(feature, {})[stat] = tensor
    if not stats:
        raise FileNotFoundError(
            f"{src}: no normalizer stats found (expected policy_preprocessor.json and the "
            "*_normalizer_processor.safetensors it names, as LeRobot 0.6.x saves them)"
        )
    return stats


def count_indices(tensors: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many ``prefix.<i>.`` indices the checkpoint holds (e.g. layers of a stack)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in tensors if (m := pattern.match(k))})
