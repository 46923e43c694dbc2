"""Write toy-task demonstrations as a LeRobotDataset v3.0 directory (so the quick start runs on real-format data).

Input: episodes as mappings of time-stacked arrays, ``{"observation.image" or "observation.images.<cam>":
uint8 (T, H, W, 3), "observation.state": (T, S), "action": (T, A), "task": str}`` (extra keys are kept).
A bare ``observation.image`` is renamed to ``observation.images.<camera>``, the batch-key convention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vla_core.features import OBS_IMAGE_PREFIX
from vla_train.data.lerobot.writer import write_lerobot_dataset


def toy_to_lerobot_episode(episode: Mapping[str, Any], camera: str = "top") -> dict[str, Any]:
    """Rename ``observation.image`` to ``observation.images.<camera>``; everything else passes through."""
    out = dict(episode)
    if "observation.image" in out:
        out[OBS_IMAGE_PREFIX + camera] = out.pop("observation.image")
    return out


def convert_toy(
    episodes: Iterable[Mapping[str, Any]],
    root: str | Path,
    *,
    fps: int = 10,
    camera: str = "top",
    video: bool = True,
    episodes_per_file: int | None = None,
) -> Path:
    """Write toy ``episodes`` to ``root`` as LeRobot v3.0 (mp4 cameras, or PNG in parquet with ``video=False``)."""
    return write_lerobot_dataset(
        root,
        (toy_to_lerobot_episode(ep, camera) for ep in episodes),
        fps=fps,
        video=video,
        episodes_per_file=episodes_per_file,
        robot_type="toy_reach",
    )
