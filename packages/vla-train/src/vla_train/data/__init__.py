"""Datasets: the protocol, windows from delta indices, streaming stats, batches and the registry.

Built in: ``toy_reach``. Another package adds a type by registering a class under the
``vla.datasets`` entry-point group (or with ``@DATASETS.register(name)``).
"""

from vla_train.data.base import Dataset, EpisodeDataset, check_features, policy_delta_indices
from vla_train.data.loader import BatchStream, ResumableSampler
from vla_train.data.registry import DATASETS, DatasetConfig, build_dataset
from vla_train.data.stats import RunningStats, compute_stats
from vla_train.data import toy_reach  # noqa: F401  (registers "toy_reach")

__all__ = [
    "DATASETS",
    "BatchStream",
    "Dataset",
    "DatasetConfig",
    "EpisodeDataset",
    "ResumableSampler",
    "RunningStats",
    "build_dataset",
    "check_features",
    "compute_stats",
    "policy_delta_indices",
]
