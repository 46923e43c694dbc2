"""The dataset protocol and the windowing shared by episode datasets.

A training dataset is map-style: ``dataset[i]`` is one sample holding the batch keys of
``vla_core.features`` without a batch dimension (observation windows ``(T_obs, ...)`` when
``n_obs_steps > 1``, the action chunk ``(H, A)`` and ``action_is_pad`` ``(H,)``).

Windows come from index offsets ("delta indices"), as LeRobot's ``delta_timestamps * fps``:
frame ``i`` with offsets ``d`` reads frames ``i + d`` clamped to its episode, and marks the
clamped ones as padding (``<key>_is_pad``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from vla_core import ACTION, ACTION_IS_PAD, ConfigError, FeatureType, PolicyFeature


@runtime_checkable
class Dataset(Protocol):
    """What the trainer needs from a dataset."""

    features: dict[str, PolicyFeature]  # per-frame features, the action included

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def set_delta_indices(self, delta_indices: Mapping[str, Sequence[int]]) -> None:
        """Offsets to read around each frame, per key (keys not listed: the frame itself)."""

    def read_frames(self, key: str, indices: np.ndarray) -> np.ndarray:
        """Frames of one feature at the given frame indices: (N, *feature.shape) float32."""


def policy_delta_indices(features: Mapping[str, PolicyFeature], n_obs_steps: int, horizon: int) -> dict[str, list[int]]:
    """Offsets for a policy: the last ``n_obs_steps`` observations and a ``horizon`` action chunk
    starting with the oldest observed step (LeRobot's ACT and Diffusion Policy conventions)."""
    obs = list(range(1 - n_obs_steps, 1))
    out = {}
    for key, feature in features.items():
        if feature.type is FeatureType.ACTION:
            out[key] = list(range(1 - n_obs_steps, 1 - n_obs_steps + horizon))
        elif feature.type is not FeatureType.LANGUAGE and n_obs_steps > 1:
            out[key] = obs
    return out


def check_features(policy_inputs: Mapping[str, PolicyFeature], policy_outputs: Mapping[str, PolicyFeature],
                   dataset_features: Mapping[str, PolicyFeature], dataset_name: str) -> None:
    """Every feature the policy consumes or predicts must exist in the dataset with the same type and shape."""
    for key, want in {**policy_inputs, **policy_outputs}.items():
        have = dataset_features.get(key)
        if have is None:
            raise ValueError(
                f"feature mismatch: the policy needs {key!r} ({want.type.value}, shape {list(want.shape)}) but "
                f"dataset {dataset_name!r} provides only {sorted(dataset_features)}"
            )
        if have.type is not want.type or have.shape != want.shape:
            raise ValueError(
                f"feature mismatch for {key!r}: the policy expects {want.type.value} of shape {list(want.shape)}, "
                f"dataset {dataset_name!r} provides {have.type.value} of shape {list(have.shape)}"
            )


class EpisodeDataset(abc.ABC):
    """Base of datasets stored as frames grouped in episodes.

    Subclasses set ``features``, ``episode_index`` (N,) int array (frames of an episode are
    contiguous) and implement :meth:`read_frames` and :meth:`task_of`.
    """

    features: dict[str, PolicyFeature]
    episode_index: np.ndarray

    def __init__(self) -> None:
        self.delta_indices: dict[str, np.ndarray] = {}

    def _episode_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Start (inclusive) and end (exclusive) frame of each frame's episode, both (N,)."""
        if not hasattr(self, "_bounds"):
            ep = self.episode_index
            change = np.flatnonzero(np.diff(ep)) + 1
            starts = np.concatenate([[0], change])
            ends = np.concatenate([change, [len(ep)]])
            length = ends - starts
            self._bounds = (np.repeat(starts, length), np.repeat(ends, length))
        return self._bounds

    def __len__(self) -> int:
        return len(self.episode_index)

    def set_delta_indices(self, delta_indices: Mapping[str, Sequence[int]]) -> None:
        for key in delta_indices:
            if key not in self.features:
                raise ConfigError(f"delta indices: {key!r} is not a dataset feature ({sorted(self.features)})")
        self.delta_indices = {k: np.asarray(v, dtype=np.int64) for k, v in delta_indices.items()}

    @abc.abstractmethod
    def read_frames(self, key: str, indices: np.ndarray) -> np.ndarray:
        """(N, *shape) float32 frames of ``key``."""

    @abc.abstractmethod
    def task_of(self, index: int) -> str:
        """The instruction of the frame's episode."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        start, end = (b[index] for b in self._episode_bounds())
        sample: dict[str, Any] = {}
        for key, feature in self.features.items():
            if feature.type is FeatureType.LANGUAGE:
                sample[key] = self.task_of(index)
                continue
            deltas = self.delta_indices.get(key)
            if deltas is None:
                sample[key] = torch.from_numpy(self.read_frames(key, np.array([index]))[0])
                continue
            wanted = index + deltas
            pad = (wanted < start) | (wanted >= end)
            frames = self.read_frames(key, np.clip(wanted, start, end - 1))
            sample[key] = torch.from_numpy(frames)
            sample[ACTION_IS_PAD if key == ACTION else f"{key}_is_pad"] = torch.from_numpy(pad)
        return sample

