"""Dataset registry (``data: {type: name, ...}``), open to other packages through the
``vla.datasets`` entry-point group, and the fields every dataset config shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vla_core import ComponentConfig, ConfigError, Registry

DATASETS: Registry = Registry("dataset", "vla.datasets")


@dataclass(frozen=True, kw_only=True)
class DatasetConfig(ComponentConfig):
    """Loader settings shared by all datasets.

    ``delta_indices`` overrides the windows the policy implies (``{key: [offsets]}``);
    ``stats_frames`` bounds the frames read to compute normalization stats.
    """

    num_workers: int = 0
    stats_frames: int = 5_000
    delta_indices: dict[str, list[int]] | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.stats_frames <= 0:
            raise ConfigError(f"data: expected num_workers >= 0 and stats_frames > 0, received "
                              f"{self.num_workers} and {self.stats_frames}")


def build_dataset(spec: Mapping[str, Any]):
    """Build a registered dataset from ``{"type": name, **fields}``."""
    return DATASETS.build(spec)
