"""The ``lerobot`` dataset type: its config and the dataset class a registry builds from it.

``data: {type: lerobot, root: DIR_OR_HUB_ID, delta_timestamps: {...}, episodes: [..] | "start:stop"}``.
Windows may come as seconds (``delta_timestamps``, LeRobot's convention) or frame offsets
(``delta_indices``, what the trainer derives from the policy's ``n_obs_steps`` and ``horizon``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vla_core import ComponentConfig, ConfigError

from vla_train.data.lerobot.dataset import LeRobotV3Dataset


@dataclass(frozen=True, kw_only=True)
class LeRobotDatasetConfig(ComponentConfig):
    """A LeRobotDataset v3.0 directory (or hub id) and what to read from it.

    ``num_workers``, ``stats_frames`` and ``delta_indices`` are the loader fields every dataset
    config shares (see the trainer's ``DatasetConfig``).
    """

    root: str
    delta_timestamps: dict[str, list[float]] | None = None
    episodes: list[int] | str | None = None
    tolerance_s: float = 1e-4
    revision: str | None = None
    num_workers: int = 0
    stats_frames: int = 5_000
    delta_indices: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("data.root: give a LeRobotDataset v3.0 directory or a hub id 'owner/name'")
        if self.tolerance_s <= 0:
            raise ConfigError(f"data.tolerance_s: expected a positive number, received {self.tolerance_s!r}")
        if self.num_workers < 0 or self.stats_frames <= 0:
            raise ConfigError(
                f"data: expected num_workers >= 0 and stats_frames > 0, received {self.num_workers} and "
                f"{self.stats_frames}"
            )
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


def build_lerobot_dataset(cfg: Mapping[str, Any] | LeRobotDatasetConfig) -> LeRobotDataset:
    """Build from the ``data:`` section (``type`` may be present and must be ``lerobot``)."""
    if isinstance(cfg, LeRobotDatasetConfig):
        return LeRobotDataset(cfg)
    fields = dict(cfg)
    kind = fields.pop("type", "lerobot")
    if kind != "lerobot":
        raise ConfigError(f"data.type: build_lerobot_dataset builds type 'lerobot', received {kind!r}")
    return LeRobotDataset(LeRobotDatasetConfig.from_dict(fields))
