"""Frame-accurate decoding of mp4 frames at timestamps with PyAV (FFmpeg bundled in its wheels).

One ``FrameDecoder`` per process keeps its containers open (a small LRU), seeks once per request
to the keyframe at or before the earliest timestamp, decodes forward to the latest one and converts
to RGB only the frames that are returned. Each requested timestamp gets the decoded frame closest
to it; a distance of ``tolerance_s`` or more raises ``FrameTimestampError`` (LeRobot's rule).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_core.errors import require

_OPEN: dict[int, OrderedDict[str, Any]] = {}  # pid -> the containers that process opened


class FrameTimestampError(ValueError):
    """No decoded frame lies within ``tolerance_s`` of a requested timestamp (or it is outside the episode)."""


class VideoDecodeError(RuntimeError):
    """A video file cannot be opened or decoded (missing, truncated or corrupt)."""


def _where(path: Path | str, episode: int | None) -> str:
    return f"{path}" if episode is None else f"{path} (episode {episode})"


def _containers() -> OrderedDict[str, Any]:
    """This process's open containers, by path.

    Module-level and keyed by pid: a forked child (a DataLoader worker) never touches, closes or
    frees its parent's containers (their decoder threads do not exist in the child, and freeing
    one can block forever on an inherited lock), whatever happens to the objects that opened them.
    """
    return _OPEN.setdefault(os.getpid(), OrderedDict())


class FrameDecoder:
    """Decodes frames of video files at given timestamps; containers stay open per process.

    Containers live in a per-process LRU cache shared by all decoders (``max_open`` per process),
    reopened on first use after a fork; pickling carries only the settings.
    """

    def __init__(self, max_open: int = 32) -> None:
        self.max_open = max_open

    def close(self) -> None:
        """Close this process's containers."""
        cache = _containers()
        while cache:
            _, container = cache.popitem()
            with contextlib.suppress(Exception):  # a broken container must not mask the real error
                container.close()

    def _container(self, path: Path | str, episode: int | None):
        cache = _containers()
        key = str(path)
        container = cache.get(key)
        if container is not None:
            cache.move_to_end(key)
            return container
        av = require("av", "'vla-train[lerobot]'")
        if not Path(path).is_file():
            raise VideoDecodeError(f"missing video file {_where(path, episode)}")
        try:
            container = av.open(key)
            if not container.streams.video:
                raise VideoDecodeError(f"no video stream in {_where(path, episode)}")
        except av.error.FFmpegError as err:
            raise VideoDecodeError(f"cannot open video {_where(path, episode)}: {err}") from None
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        cache[key] = container
        while len(cache) > self.max_open:
            _, old = cache.popitem(last=False)
            old.close()
        return container

    def frames(
        self, path: Path | str, timestamps: list[float], tolerance_s: float, *, episode: int | None = None
    ) -> torch.Tensor:
        """Frames at ``timestamps`` (seconds from the start of the file) as uint8 ``(N, C, H, W)``."""
        if not timestamps:
            raise ValueError("frames(): no timestamps requested")
        av = require("av", "'vla-train[lerobot]'")
        container = self._container(path, episode)
        stream = container.streams.video[0]
        targets = np.asarray(timestamps, dtype=np.float64)
        first, last = float(targets.min()), float(targets.max())
        best_dist = np.full(len(targets), np.inf)
        best: list[Any] = [None] * len(targets)
        best_ts = np.full(len(targets), np.nan)
        decoded = 0
        try:
            # One tick before the earliest target: the seek lands on the keyframe at or before it.
            container.seek(
                max(round(first / stream.time_base) - 1, 0),
                backward=True,
                any_frame=False,
                stream=stream,
            )
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                ts = float(frame.pts * stream.time_base)
                decoded += 1
                dist = np.abs(targets - ts)
                closer = dist < best_dist
                if closer.any():
                    best_dist[closer] = dist[closer]
                    best_ts[closer] = ts
                    for i in np.flatnonzero(closer):
                        best[i] = frame
                if ts >= last:
                    break
        except av.error.FFmpegError as err:
            self._drop(path)
            raise VideoDecodeError(
                f"cannot decode video {_where(path, episode)} near t={first:.4f}s: {err}"
            ) from None
        if decoded == 0:
            self._drop(path)
            raise VideoDecodeError(
                f"no frame decoded from {_where(path, episode)} in [{first:.4f}, {last:.4f}] s "
                "(truncated or corrupt video?)"
            )
        bad = best_dist >= tolerance_s
        if bad.any():
            raise FrameTimestampError(
                f"{_where(path, episode)}: no frame within tolerance_s={tolerance_s} of timestamp(s) "
                f"{targets[bad].round(6).tolist()} s; closest decoded at {best_ts[bad].round(6).tolist()} s "
                "(video and data timestamps disagree; the file may be truncated or the dataset out of sync)"
            )
        rgb: dict[int, np.ndarray] = {}
        out = []
        for frame in best:
            if id(frame) not in rgb:
                rgb[id(frame)] = frame.to_ndarray(format="rgb24")
            out.append(rgb[id(frame)])
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)

    def _drop(self, path: Path | str) -> None:
        container = _containers().pop(str(path), None)
        if container is not None:
            with contextlib.suppress(Exception):
                container.close()
