"""``vla convert lerobot SRC DST``: LeRobot 0.6.x policy directories -> vla policies.

A LeRobot policy directory holds ``config.json`` (with ``"type"``: act, diffusion, pi0, ...),
``model.safetensors`` and its processor files with the normalization stats. Each policy type
has its own module exposing ``convert(src: Path, dst: Path) -> Path``; the module is imported
only when its type is converted.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from vla_core import ConfigError, load_tensors
from vla_core.paths import inside, missing_path_error

LEROBOT_CONVERTERS = {
    "act": "vla_train.convert.lerobot_act",
    "diffusion": "vla_train.convert.lerobot_diffusion",
    "groot": "vla_train.convert.lerobot_groot",  # LeRobot 0.5.1 (GR00T N1.5)
    "pi0": "vla_train.convert.lerobot_pi0",
}


def convert_lerobot(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> Path:
    """Convert the LeRobot policy directory ``src`` into a vla policy directory ``dst``.

    ``options`` go to the policy type's converter (groot: ``base_model``, ``eagle_config``, ``tokenizer``);
    an option the type's converter does not take is an error.
    """
    given, src, dst = src, Path(src).expanduser(), Path(dst)
    if not src.is_dir():
        raise missing_path_error(given, "LeRobot policy directory") if not src.exists() else NotADirectoryError(
            f"{src} is not a directory: expected a LeRobot policy directory")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a LeRobot policy directory")
    policy_type = read_json(config_path).get("type")
    if policy_type not in LEROBOT_CONVERTERS:
        raise ConfigError(
            f"{config_path}: LeRobot policy type {policy_type!r} has no converter; supported: "
            f"{', '.join(sorted(LEROBOT_CONVERTERS))}"
        )
    module = importlib.import_module(LEROBOT_CONVERTERS[policy_type])
    taken = set(inspect.signature(module.convert).parameters) - {"src", "dst"}
    if set(options) - taken:
        raise ConfigError(
            f"LeRobot {policy_type} conversion takes no option(s) {sorted(set(options) - taken)}; it takes "
            f"{sorted(taken) or 'none'}"
        )
    return module.convert(src, dst, **options)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; errors name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, received {type(data).__name__}")
    return data


def read_lerobot_stats(src: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{feature: {stat: tensor}}`` from the (un)normalizer steps of LeRobot's processor files
    (``policy_preprocessor*.json`` / ``policy_postprocessor*.json`` and the state files they name,
    which must lie inside ``src``)."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for pipeline in sorted(src.glob("policy_*processor*.json")):
        steps = read_json(pipeline).get("steps", [])
        for step in steps if isinstance(steps, list) else []:
            state_file = step.get("state_file") if isinstance(step, dict) else None
            if not state_file or "normalizer" not in str(step.get("registry_name", "")):
                continue
            path = inside(src, str(state_file), f"{pipeline.name}: state_file")
            for name, tensor in load_tensors(path).items():
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
