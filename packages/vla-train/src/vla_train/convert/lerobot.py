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
from pathlib import Path

from vla_core import ConfigError

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
