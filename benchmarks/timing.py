"""Timing helpers shared by the benchmarks: interleaved medians, so both sides see the same machine.

On a shared VM the speed drifts by tens of percent over a minute. Timing one side's repeats and
then the other's lets that drift land on one side only; :func:`interleaved` alternates the sides
within each round instead and also reports the median of the per-round ratios, which cancels the
drift that both sides of a round share.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    wall: float  # median wall seconds
    cpu: float  # median process CPU seconds (less sensitive to other processes)
    walls: tuple[float, ...]  # every round's wall seconds, in round order


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                sync: Callable[[], None] = lambda: None) -> dict[str, Timing]:
    """Run each of ``fns`` once per round, in order, ``warmup`` + ``repeats`` rounds; time the last ``repeats``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    walls: dict[str, list[float]] = {name: [] for name in fns}
    cpus: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name]), tuple(walls[name]))
            for name in fns}


def paired_ratio(ours: Timing, theirs: Timing) -> float:
    """Median over rounds of ours / theirs (the rounds of one :func:`interleaved` call)."""
    return statistics.median(o / t for o, t in zip(ours.walls, theirs.walls, strict=True))
