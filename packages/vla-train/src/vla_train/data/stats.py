"""Normalization statistics computed in one streaming pass (bounded memory).

Per feature: ``mean``, ``std``, ``min``, ``max`` (exact, merged chunk by chunk in float64 with
Chan's parallel update) and ``q01``, ``q99`` (from a fixed-size uniform reservoir sample).
Images give per-channel stats of shape (C, 1, 1) over all their pixels, values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from vla_core import FeatureType, PolicyFeature


class RunningStats:
    """Streaming stats of rows of D values; quantiles from a reservoir of ``reservoir_size`` rows."""

    def __init__(self, dim: int, *, reservoir_size: int = 20_000, seed: int = 0) -> None:
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)
        self.reservoir = np.empty((reservoir_size, dim))
        self.rng = np.random.default_rng(seed)

    def update(self, rows: np.ndarray) -> None:
        """rows (N, D)."""
        rows = np.asarray(rows, dtype=np.float64)
        n = rows.shape[0]
        if n == 0:
            return
        mean, m2 = rows.mean(0), ((rows - rows.mean(0)) ** 2).sum(0)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.min = np.minimum(self.min, rows.min(0))
        self.max = np.maximum(self.max, rows.max(0))
        # Algorithm R, vectorized: row j (1-based global position p) replaces slot r ~ U[0, p) if r < size.
        size = self.reservoir.shape[0]
        fill = max(0, min(n, size - self.count))
        self.reservoir[self.count : self.count + fill] = rows[:fill]
        if fill < n:
            positions = np.arange(self.count + fill + 1, total + 1)
            slots = np.floor(self.rng.random(n - fill) * positions).astype(np.int64)
            keep = slots < size
            self.reservoir[slots[keep]] = rows[fill:][keep]
        self.count = total

    def result(self) -> dict[str, np.ndarray]:
        sample = self.reservoir[: min(self.count, self.reservoir.shape[0])]
        return {
            "mean": self.mean,
            "std": np.sqrt(self.m2 / max(self.count, 1)),
            "min": self.min,
            "max": self.max,
            "q01": np.quantile(sample, 0.01, axis=0),
            "q99": np.quantile(sample, 0.99, axis=0),
            "count": np.array([self.count]),
        }


def _rows(frames: np.ndarray, feature: PolicyFeature, rng: np.random.Generator, pixels: int) -> np.ndarray:
    """frames (N, *shape) -> rows (M, D): per-channel pixel samples for images, flat vectors otherwise."""
    if feature.type is FeatureType.VISUAL:
        c = frames.shape[1]
        flat = frames.reshape(frames.shape[0], c, -1).transpose(0, 2, 1).reshape(-1, c)
        if pixels and flat.shape[0] > pixels:
            flat = flat[rng.integers(0, flat.shape[0], pixels)]
        return flat
    return frames.reshape(frames.shape[0], -1)


def compute_stats(
    dataset,
    features: Mapping[str, PolicyFeature] | None = None,
    *,
    max_frames: int = 5_000,
    chunk: int = 256,
    image_pixels_per_chunk: int = 20_000,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Stats of every non-language feature over up to ``max_frames`` frames (an even subsample).

    Min and max of images are taken over the sampled pixels. Returned shapes follow the feature:
    (*shape) for vectors, (C, 1, 1) for images.
    """
    features = dict(features or dataset.features)
    rng = np.random.default_rng(seed)
    n = len(dataset)
    indices = np.arange(n) if n <= max_frames else np.sort(rng.choice(n, max_frames, replace=False))
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, feature in features.items():
        if feature.type is FeatureType.LANGUAGE:
            continue
        dim = feature.shape[0] if feature.type is FeatureType.VISUAL else int(np.prod(feature.shape))
        running = RunningStats(dim, seed=seed)
        for part in _chunks(indices, chunk):
            frames = np.asarray(dataset.read_frames(key, part), dtype=np.float64)
            running.update(_rows(frames, feature, rng, image_pixels_per_chunk))
        shape = (dim, 1, 1) if feature.type is FeatureType.VISUAL else feature.shape
        out[key] = {k: (v.reshape(shape) if k != "count" else v) for k, v in running.result().items()}
    return out


def _chunks(indices: np.ndarray, size: int) -> Iterable[np.ndarray]:
    for i in range(0, len(indices), size):
        yield indices[i : i + size]
