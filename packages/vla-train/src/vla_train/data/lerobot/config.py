"""The ``lerobot`` dataset type: its config and the dataset class a registry builds from it.

``data: {type: lerobot, root: DIR_OR_HUB_ID, delta_timestamps: {...}, episodes: [..] | "start:stop"}``.
Windows may come as seconds (``delta_timestamps``, LeRobot's convention) or frame offsets
(``delta_indices``, what the trainer derives from the policy's ``n_obs_steps`` and ``horizon``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_core import ConfigError

from vla_train.data.lerobot.dataset import LeRobotV3Dataset
from vla_train.data.registry import DatasetConfig


@dataclass(frozen=True, kw_only=True)
class LeRobotDatasetConfig(DatasetConfig):
    """A LeRobotDataset v3.0 directory (or hub id) and what to read from it, plus the loader
    fields every dataset config shares (``num_workers``, ``stats_frames``, ``delta_indices``)."""

    root: str
    delta_timestamps: dict[str, list[float]] | None = None
    episodes: list[int] | str | None = None
    tolerance_s: float = 1e-4
    revision: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.root:
            raise ConfigError("data.root: give a LeRobotDataset v3.0 directory or a hub id 'owner/name'")
        if self.tolerance_s <= 0:
            raise ConfigError(f"data.tolerance_s: expected a positive number, received {self.tolerance_s!r}")
        if self.delta_timestamps and self.delta_indices:
            raise ConfigError(
                "data: give windows as delta_timestamps (seconds) or delta_indices (frames), not both"
            )
        self.episode_list()  # validates the "start:stop" form

    def episode_list(self) -> list[int] | None:
        """``episodes`` as a list (``"0:40"`` is episodes 0..39), or None for all."""
        if not isinstance(self.episodes, str):
            return None if self.episodes is None else [int(e) for e in self.episodes]
        try:
            start, stop = (int(p) for p in self.episodes.split(":"))
        except ValueError:
            raise ConfigError(
                f"data.episodes: expected a list of episode indices or 'start:stop', received {self.episodes!r}"
            ) from None
        return list(range(start, stop))


class LeRobotDataset(LeRobotV3Dataset):
    """``LeRobotV3Dataset`` built from a ``LeRobotDatasetConfig`` (what ``@DATASETS.register("lerobot")`` takes)."""

    config_class = LeRobotDatasetConfig

    def __init__(self, config: LeRobotDatasetConfig) -> None:
        super().__init__(
            config.root,
            delta_timestamps=config.delta_timestamps,
            episodes=config.episode_list(),
            tolerance_s=config.tolerance_s,
            revision=config.revision,
        )
        self.config = config
        if config.delta_indices:
            self.set_delta_indices(config.delta_indices)

