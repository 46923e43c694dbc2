"""``LeRobotV3Dataset``: a map-style reader of LeRobotDataset v3.0 directories.

Items equal LeRobot 0.6.1's ``LeRobotDataset.__getitem__`` for the same index and
``delta_timestamps``: every stored column of the frame (``observation.*``, ``action``,
``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``, ...), camera frames as
float32 ``(C, H, W)`` in [0, 1], the ``task`` string, and for each windowed key ``K`` the values at
the index offsets ``round(delta * fps)`` clamped to the episode, stacked on a leading time axis
(``(T, ...)``), plus ``K_is_pad`` ``(T,)`` bool marking offsets that fall outside the episode.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_core import PolicyFeature
from vla_core.errors import require
from vla_core.features import TASK
from vla_core.paths import is_local_path

from vla_train.data.lerobot.meta import (
    LeRobotDataError,
    LeRobotMeta,
    load_meta,
)
from vla_train.data.lerobot.video import FrameDecoder, FrameTimestampError

_NUMERIC_DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")

__all__ = ["LeRobotDataError", "LeRobotV3Dataset", "resolve_root"]


def resolve_root(root: str | Path, revision: str | None = None) -> Path:
    """A local dataset directory: ``root`` itself, or a hub dataset id fetched with huggingface_hub."""
    path = Path(root).expanduser()
    if path.is_dir():
        return path
    text = str(root)
    if text.count("/") == 1 and not is_local_path(root):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=text, repo_type="dataset", revision=revision))
    raise LeRobotDataError(f"missing dataset directory {path}: it does not exist (and {text!r} is not a hub id "
                           "'owner/name'; a local path is never looked up on the Hugging Face Hub)")


def _delta_indices(
    delta_timestamps: Mapping[str, Sequence[float]], fps: int, tolerance_s: float
) -> dict[str, np.ndarray]:
    """Offsets in frames, ``round(delta * fps)``; each delta must be a multiple of 1/fps within tolerance."""
    out = {}
    for key, deltas in delta_timestamps.items():
        deltas = [float(d) for d in deltas]
        if not deltas:
            raise LeRobotDataError(f"delta_timestamps[{key!r}] is empty")
        off = [d for d in deltas if abs(d * fps - round(d * fps)) / fps > tolerance_s]
        if off:
            raise LeRobotDataError(
                f"delta_timestamps[{key!r}]: {off} are not multiples of 1/fps = {1 / fps:.6f} s "
                f"(within tolerance_s={tolerance_s})"
            )
        out[key] = np.array([round(d * fps) for d in deltas], dtype=np.int64)
    return out


class LeRobotV3Dataset(torch.utils.data.Dataset):
    """Frames of a LeRobotDataset v3.0 directory (local path or hub id ``owner/name``).

    Args:
        root: the dataset directory (holding ``meta/``, ``data/``, ``videos/``) or a hub id.
        delta_timestamps: ``{key: [seconds, ...]}`` windows relative to each frame (LeRobot's).
        episodes: episode indices to read (a train/val split); ``None`` reads all.
        tolerance_s: how far a decoded frame (and a delta) may be from the asked timestamp.
        image_transforms: callable applied to each camera's float tensor ``(C, H, W)`` or ``(T, C, H, W)``.
        revision: hub revision (only for a hub id).

    Attributes: ``meta`` (``LeRobotMeta``), ``fps``, ``features`` (``{key: PolicyFeature}``), ``stats``
    (``{key: {mean, std, min, max, q01, q99: np.ndarray}}`` from ``meta/stats.json``), ``episodes``.
    """

    def __init__(
        self,
        root: str | Path,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        episodes: Sequence[int] | None = None,
        tolerance_s: float = 1e-4,
        image_transforms: Callable[[torch.Tensor], torch.Tensor] | None = None,
        revision: str | None = None,
    ) -> None:
        self.root = resolve_root(root, revision)
        self.meta: LeRobotMeta = load_meta(self.root)
        self.tolerance_s = float(tolerance_s)
        self.image_transforms = image_transforms
        all_episodes = self.meta.episode_indices
        if episodes is None:
            self.episodes = all_episodes
        else:
            self.episodes = [int(e) for e in episodes]
            missing = sorted(set(self.episodes) - set(all_episodes))
            if missing:
                raise LeRobotDataError(
                    f"episodes {missing} are not in {self.root} (it has episodes 0..{len(all_episodes) - 1})"
                )
        self._check_features()
        self.delta_indices: dict[str, np.ndarray] = {}
        if delta_timestamps:
            unknown = sorted(set(delta_timestamps) - set(self.meta.features))
            if unknown:
                raise LeRobotDataError(
                    f"delta_timestamps names unknown feature(s) {unknown}; {self.root / 'meta/info.json'} "
                    f"declares {sorted(self.meta.features)}"
                )
            self.delta_indices = _delta_indices(delta_timestamps, self.fps, self.tolerance_s)
        self._load_tables()
        self._check_fps()
        self._check_videos()
        self._decoder = FrameDecoder()

    # ------------------------------------------------------------------------------------------ setup

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, PolicyFeature]:
        return self.meta.policy_features()

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        return self.meta.stats

    @property
    def num_frames(self) -> int:
        return len(self._index)

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def _check_features(self) -> None:
        for key, feat in self.meta.features.items():
            dtype = feat.get("dtype")
            if dtype not in (*_NUMERIC_DTYPES, "image", "video", "string"):
                raise LeRobotDataError(
                    f"{self.root / 'meta/info.json'}: feature {key!r} has unsupported dtype {dtype!r}"
                )
        if self.meta.video_keys and not self.meta.info.get("video_path"):
            raise LeRobotDataError(f"{self.root / 'meta/info.json'}: video features but no 'video_path'")

    def _load_tables(self) -> None:
        """Read the data files of the selected episodes into numpy columns (image columns stay arrow)."""
        pq = require("pyarrow.parquet", "'vla-train[lerobot]'")
        import pyarrow as pa
        import pyarrow.compute as pc

        wanted = set(self.episodes)
        files: dict[Path, list[int]] = {}
        for ep in self.episodes:
            files.setdefault(self.meta.data_file(ep), []).append(ep)
        columns = [k for k, f in self.meta.features.items() if f["dtype"] != "video"]
        parts: dict[str, list[Any]] = {k: [] for k in columns}
        for path in sorted(files):
            if not path.is_file():
                raise LeRobotDataError(f"missing data file {path} (episode {files[path][0]})")
            try:
                table = pq.read_table(path, columns=columns, memory_map=True)
            except Exception as err:  # noqa: BLE001 - pyarrow raises several unrelated types
                raise LeRobotDataError(
                    f"cannot read data file {path} (episodes {files[path]}): {type(err).__name__}: {err}"
                ) from None
            mask = np.isin(table.column("episode_index").to_numpy(), list(wanted))
            if not mask.all():
                table = table.filter(mask)
            for key in columns:
                parts[key].append(self._column(table, key, path, pc))
        self._columns: dict[str, Any] = {}
        for key in columns:
            if self.meta.features[key]["dtype"] == "image":
                self._columns[key] = pa.chunked_array(parts[key]).combine_chunks()
            else:
                self._columns[key] = np.concatenate(parts[key]) if parts[key] else np.zeros((0,))
        self._index = self._columns["index"].astype(np.int64)
        episode_col = self._columns["episode_index"]
        self._row_of_index = np.full(
            int(self._index.max()) + 1 if len(self._index) else 0, -1, dtype=np.int64
        )
        self._row_of_index[self._index] = np.arange(len(self._index))
        self._ep_bounds = {}
        for ep in self.episodes:
            start = self.meta.episodes.get(ep, "dataset_from_index")
            end = self.meta.episodes.get(ep, "dataset_to_index")
            rows = self._row_of_index[start:end] if end <= len(self._row_of_index) else np.array([-1])
            if len(rows) != end - start or (rows < 0).any() or (episode_col[rows] != ep).any():
                raise LeRobotDataError(
                    f"data file {self.meta.data_file(ep)} lacks frames {start}..{end - 1} of episode {ep} "
                    "(truncated file or inconsistent meta/episodes)"
                )
            self._ep_bounds[ep] = (start, end)

    def _check_fps(self) -> None:
        """``info.json``'s fps against the frames' timestamps: the typical spacing must be 1/fps (a wrong fps
        would silently stretch every window). The median is used, so one odd frame does not trip it."""
        order = np.argsort(self._index, kind="stable")
        episodes = self._columns["episode_index"][order]
        same = episodes[1:] == episodes[:-1]
        gaps = np.diff(self._columns["timestamp"][order].astype(np.float64))[same]
        if not gaps.size:
            return
        spacing, period = float(np.median(gaps)), 1.0 / self.fps
        if abs(spacing - period) > max(self.tolerance_s, 0.01 * period):
            ep = int(episodes[1:][same][0])
            raise LeRobotDataError(
                f"{self.root / 'meta/info.json'}: fps {self.fps} (frames {period:.6f} s apart) disagrees with the "
                f"timestamps in {self.meta.data_file(ep)} and the other data files, whose frames are "
                f"{spacing:.6f} s apart ({1 / spacing if spacing > 0 else float('inf'):.4g} fps); fix fps or the "
                "timestamps"
            )

    def _column(self, table: Any, key: str, path: Path, pc: Any) -> Any:
        import pyarrow as pa

        feat = self.meta.features[key]
        col = table.column(key)
        if feat["dtype"] == "image":
            return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if feat["dtype"] == "string":
            return np.array(col.to_pylist(), dtype=object)
        shape = tuple(int(s) for s in feat["shape"])
        values = col.combine_chunks()
        while (
            pa.types.is_list(values.type)
            or pa.types.is_fixed_size_list(values.type)
            or pa.types.is_large_list(values.type)
        ):
            values = pc.list_flatten(values)
        flat = values.to_numpy(zero_copy_only=False)
        n = len(table)
        if shape == (1,):
            return flat.reshape(n)
        if flat.size != n * int(np.prod(shape)):
            raise LeRobotDataError(f"{path}: column {key!r} does not hold {n} values of shape {list(shape)}")
        return flat.reshape((n, *shape))

    def _check_videos(self) -> None:
        for ep in self.episodes:
            for key in self.meta.video_keys:
                path = self.meta.video_file(ep, key)
                if not path.is_file():
                    raise LeRobotDataError(f"missing video file {path} (episode {ep}, {key})")

    # -------------------------------------------------------------------- trainer's dataset protocol

    def set_delta_indices(self, delta_indices: Mapping[str, Sequence[int]]) -> None:
        """Windows as frame offsets ``{key: [int, ...]}`` (``delta_timestamps * fps``); replaces the current ones."""
        unknown = sorted(set(delta_indices) - set(self.meta.features))
        if unknown:
            raise LeRobotDataError(
                f"delta indices name unknown feature(s) {unknown}; {self.root / 'meta/info.json'} "
                f"declares {sorted(self.meta.features)}"
            )
        self.delta_indices = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in delta_indices.items()}

    def read_frames(self, key: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames of ``key`` at dataset positions ``indices``: float32 ``(N, *shape)``, images ``(N, C, H, W)``.

        No windows: one frame per index (used to compute normalization stats). Video frames are
        decoded per episode with one seek for each run of requested frames.
        """
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if key not in self.meta.features:
            raise LeRobotDataError(
                f"read_frames: unknown feature {key!r}; features: {sorted(self.meta.features)}"
            )
        if self.meta.features[key]["dtype"] != "video":
            value = self._value(key, rows)
            return value.numpy().astype(np.float32, copy=False)
        out = np.empty((len(rows), *self.meta.policy_features()[key].shape), dtype=np.float32)
        episodes = self._columns["episode_index"][rows]
        timestamps = self._columns["timestamp"][rows].astype(np.float64)
        for ep in np.unique(episodes):
            sel = np.flatnonzero(episodes == ep)
            out[sel] = self.frames_at(int(ep), key, timestamps[sel].tolist()).numpy()
        return out

    # --------------------------------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self._index)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for a dataset of {n} frames")
        row = int(idx) % n
        ep = int(self._columns["episode_index"][row])
        abs_idx = int(self._index[row])
        start, end = self._ep_bounds[ep]
        item: dict[str, Any] = {}
        for key in self.meta.features:
            if key in self.delta_indices or self.meta.features[key]["dtype"] == "video":
                continue
            item[key] = self._value(key, row)
        query_rows: dict[str, np.ndarray] = {}
        for key, offsets in self.delta_indices.items():
            target = abs_idx + offsets
            query_rows[key] = self._row_of_index[np.clip(target, start, end - 1)]
            item[f"{key}_is_pad"] = torch.from_numpy((target < start) | (target >= end))
            if self.meta.features[key]["dtype"] != "video":
                item[key] = self._value(key, query_rows[key])
        timestamps = self._columns["timestamp"]
        for key in self.meta.video_keys:
            rows = query_rows.get(key)
            ts = timestamps[rows] if rows is not None else timestamps[row : row + 1]
            frames = self.frames_at(ep, key, ts.astype(np.float64).tolist())
            # LeRobot squeezes a leading length-1 axis of decoded video (also a 1-frame window).
            item[key] = frames[0] if len(frames) == 1 else frames
        if self.image_transforms is not None:
            for key in self.meta.camera_keys:
                item[key] = self.image_transforms(item[key])
        item[TASK] = self.meta.tasks[int(self._columns["task_index"][row])]
        return item

    def _value(self, key: str, rows: int | np.ndarray) -> Any:
        dtype = self.meta.features[key]["dtype"]
        col = self._columns[key]
        if dtype == "image":
            if isinstance(rows, (int, np.integer)):
                return self._decode_image(key, int(rows))
            return torch.stack([self._decode_image(key, int(r)) for r in rows])
        if dtype == "string":
            return col[rows] if isinstance(rows, (int, np.integer)) else list(col[rows])
        value = np.asarray(col[rows])
        if value.dtype == np.float64 or value.dtype == np.float16:
            value = value.astype(np.float32)
        return torch.from_numpy(np.array(value))

    def _decode_image(self, key: str, row: int) -> torch.Tensor:
        from PIL import Image

        cell = self._columns[key][row].as_py()
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        file = self.meta.file_in_root(str(cell["path"]), f"image path of {key!r}") if data is None else None
        try:
            if file is not None:
                image = Image.open(file)
            else:
                image = Image.open(io.BytesIO(data))
            array = np.asarray(image.convert("RGB"))
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken images
            ep = int(self._columns["episode_index"][row])
            raise LeRobotDataError(
                f"cannot decode image {key!r} of frame {int(self._index[row])} in "
                f"{self.meta.data_file(ep)} (episode {ep}): {err}"
            ) from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)

    def frames_at(self, episode: int, key: str, timestamps: Sequence[float]) -> torch.Tensor:
        """Camera ``key``'s frames of ``episode`` at ``timestamps`` (seconds from the episode start).

        Returns float32 ``(N, C, H, W)`` in [0, 1]. Raises ``FrameTimestampError`` naming the file and
        episode when a timestamp lies outside the episode or no frame is within ``tolerance_s``.
        """
        if key not in self.meta.video_keys:
            raise LeRobotDataError(f"{key!r} is not a video feature; video features: {self.meta.video_keys}")
        path = self.meta.video_file(episode, key)
        offset = float(self.meta.episodes.get(episode, f"videos/{key}/from_timestamp"))
        span = float(self.meta.episodes.get(episode, f"videos/{key}/to_timestamp")) - offset
        last = span - 1.0 / self.fps
        bad = [t for t in timestamps if t < -self.tolerance_s or t > last + self.tolerance_s]
        if bad:
            raise FrameTimestampError(
                f"{path} (episode {episode}, {key}): timestamp(s) {bad} s lie outside the episode's "
                f"frames [0, {last:.6f}] s (tolerance_s={self.tolerance_s})"
            )
        frames = self._decoder.frames(
            path, [offset + t for t in timestamps], self.tolerance_s, episode=episode
        )
        return frames.float().div(255)
