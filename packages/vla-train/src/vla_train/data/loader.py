"""Batches for the training loop: a resumable DistributedSampler and an endless, stateful stream.

The data position (epoch, batches taken in it) is part of the checkpoint: after ``--resume``
the stream yields exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch from ``seed``, split across ranks) that can start
    ``start`` indices into the current epoch."""

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class BatchStream:
    """Endless iterator of per-rank micro-batches of ``micro_batch_size`` samples."""

    def __init__(
        self, dataset, *, micro_batch_size: int, rank: int, world_size: int, seed: int, num_workers: int = 0
    ) -> None:
        per_epoch = len(dataset) // world_size // micro_batch_size
        if per_epoch == 0:
            raise ValueError(
                f"the dataset has {len(dataset)} samples: too few for {world_size} rank(s) x micro-batch "
                f"{micro_batch_size}"
            )
        self.dataset, self.micro_batch_size, self.num_workers = dataset, micro_batch_size, num_workers
        self.sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=seed)
        self.epoch, self.taken = 0, 0
        self._iterator: Iterator[dict[str, Any]] | None = None

    def _open(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.taken * self.micro_batch_size
        loader = DataLoader(
            self.dataset,
            batch_size=self.micro_batch_size,
            sampler=self.sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.epoch),
        )
        self._iterator = iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._open()
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.taken = self.epoch + 1, 0
            self._open()
            batch = next(self._iterator)
        self.taken += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._iterator = None
