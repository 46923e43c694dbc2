"""Write toy-task demonstrations as a LeRobotDataset v3.0 directory (so the quick start runs on real-format data).

Input: episodes as mappings of time-stacked arrays, ``{"observation.image" or "observation.images.<cam>":
uint8 (T, H, W, 3), "observation.state": (T, S), "action": (T, A), "task": str}`` (extra keys are kept).
A bare ``observation.image`` is renamed to ``observation.images.<camera>``, the batch-key convention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vla_core.features import OBS_IMAGE_PREFIX

from vla_train.data.lerobot.writer import write_lerobot_dataset


def toy_to_lerobot_episode(episode: Mapping[str, Any], camera: str = "top") -> dict[str, Any]:
    """Rename ``observation.image`` to ``observation.images.<camera>``; everything else passes through."""
    out = dict(episode)
    if "observation.image" in out:
        out[OBS_IMAGE_PREFIX + camera] = out.pop("observation.image")
    return out


def episodes_from_arrays(
    images: np.ndarray,
    state: np.ndarray,
    action: np.ndarray,
    episode_index: np.ndarray,
    tasks: Sequence[str] | str,
) -> list[dict[str, Any]]:
    """Split flat frame arrays (as a toy generator returns them) into the episodes ``convert_toy`` takes.

    ``images`` (N, 3, S, S) float in [0, 1] (or uint8 (N, S, S, 3)), ``state`` (N, S), ``action`` (N, A),
    ``episode_index`` (N,) with each episode's frames contiguous; ``tasks`` one string per episode
    (or one for all). Images become uint8 (T, S, S, 3), rounded.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
    episode_index = np.asarray(episode_index)
    starts = np.flatnonzero(np.r_[True, np.diff(episode_index) != 0])
    ends = np.r_[starts[1:], len(episode_index)]
    if len(np.unique(episode_index)) != len(starts):
        raise ValueError("episodes_from_arrays: each episode's frames must be contiguous")
    task_list = [tasks] * len(starts) if isinstance(tasks, str) else list(tasks)
    if len(task_list) != len(starts):
        raise ValueError(f"episodes_from_arrays: {len(task_list)} tasks for {len(starts)} episodes")
    return [
        {
            "observation.image": images[a:b],
            "observation.state": np.asarray(state[a:b], np.float32),
            "action": np.asarray(action[a:b], np.float32),
            "task": task,
        }
        for a, b, task in zip(starts, ends, task_list)
    ]


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


def export_toy_dataset(root: str | Path, toy: Mapping[str, Any] | None = None, *, video: bool = True,
                       fps: int = 10) -> Path:
    """Write the toy task's expert demonstrations (``toy``: a ``toy_reach`` data config) as a
    LeRobot v3.0 dataset at ``root``, so training can run from the real-data format."""
    from vla_train.data.toy_reach import IMAGE_KEY, ToyReachConfig, ToyReachDataset

    dataset = ToyReachDataset(ToyReachConfig.from_dict({k: v for k, v in (toy or {}).items() if k != "type"}))
    frames = np.arange(len(dataset.state))
    tasks = [dataset.task_of(int(i)) for i in np.flatnonzero(np.r_[True, np.diff(dataset.episode_index) != 0])]
    episodes = episodes_from_arrays(dataset.read_frames(IMAGE_KEY, frames), dataset.state, dataset.action,
                                    dataset.episode_index, tasks)
    return convert_toy(episodes, root, fps=fps, video=video)
