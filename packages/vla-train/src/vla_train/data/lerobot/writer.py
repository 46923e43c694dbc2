"""Write in-memory episodes as a LeRobotDataset v3.0 directory that LeRobot 0.6.1 reads.

An episode is a mapping of per-frame arrays with a leading time axis ``T`` (all the same ``T``):
cameras as uint8 ``(T, H, W, 3)``, other features as numbers ``(T, *shape)``, and ``task`` as one
string (or ``T`` strings). Cameras go to mp4 (``video=True``, one file per ``episodes_per_file``
consecutive episodes, as LeRobot concatenates them) or PNG images inside the parquet files.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from vla_core.errors import require
from vla_core.features import TASK

from vla_train.data.lerobot.meta import CODEBASE_VERSION, EPISODES_DIR, INFO_PATH, STATS_PATH, TASKS_PATH

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# Encoder settings per codec: LeRobot's defaults for AV1 (GOP 2 keeps random access cheap).
CODEC_OPTIONS = {"libsvtav1": {"g": "2", "crf": "30", "preset": "12"}, "libx264": {"g": "2", "crf": "18"}}
_DEFAULT_SCALARS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _pa():
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def _is_camera(value: np.ndarray) -> bool:
    return value.dtype == np.uint8 and value.ndim == 4 and value.shape[-1] == 3


def _features(first: Mapping[str, Any], video: bool, codec: str, fps: int) -> dict[str, dict[str, Any]]:
    feats: dict[str, dict[str, Any]] = {}
    for key, value in first.items():
        if key == TASK:
            continue
        arr = np.asarray(value)
        if _is_camera(arr):
            h, w, c = arr.shape[1:]
            feat: dict[str, Any] = {
                "dtype": "video" if video else "image",
                "shape": [h, w, c],
                "names": ["height", "width", "channels"],
            }
            if video:
                feat["info"] = {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": codec.replace("libsvt", ""),
                    "video.pix_fmt": "yuv420p",
                    "video.fps": fps,
                    "video.channels": c,
                    "has_audio": False,
                    "is_depth_map": False,
                }
            feats[key] = feat
        else:
            if arr.ndim > 2:
                raise ValueError(
                    f"feature {key!r}: only cameras (T, H, W, 3) uint8 and (T,) / (T, D) arrays "
                    f"are supported, received shape {arr.shape}"
                )
            dtype = "float32" if np.issubdtype(arr.dtype, np.floating) else str(arr.dtype)
            shape = list(arr.shape[1:]) or [1]
            feats[key] = {"dtype": dtype, "shape": shape, "names": None}
    for name in _DEFAULT_SCALARS:
        feats[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
    return feats


def _encode_video(path: Path, frames: np.ndarray, fps: int, codec: str) -> None:
    """frames uint8 (N, H, W, 3) -> one mp4 whose frame i is at i / fps seconds."""
    av = require("av", "'vla-train[lerobot]'")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=CODEC_OPTIONS.get(codec, {}))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _stats(values: np.ndarray, image: bool) -> dict[str, Any]:
    """LeRobot's stats.json entry: per channel ``(C, 1, 1)`` over [0, 1] pixels for images."""
    if image:
        x = values.reshape(-1, values.shape[-1]).astype(np.float64) / 255.0  # (N*H*W, C)
        reshape = lambda v: np.asarray(v).reshape(-1, 1, 1)
    else:
        x = values.reshape(len(values), -1).astype(np.float64)
        reshape = lambda v: np.asarray(v).reshape(-1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    for q in (1, 10, 50, 90, 99):
        out[f"q{q:02d}"] = np.quantile(x, q / 100, axis=0)
    entry = {k: reshape(v).tolist() for k, v in out.items()}
    entry["count"] = [len(values)]
    return entry


def _write_tasks(root: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet with the task string as the pandas index (what LeRobot's reader expects)."""
    pa, pq = _pa()
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = pa.table(
        {"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())}
    )
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    (root / TASKS_PATH).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / TASKS_PATH)


def _column(pa: Any, values: np.ndarray, feat: dict[str, Any]) -> Any:
    if feat["dtype"] == "image":
        return pa.array(
            [{"bytes": _png(v), "path": None} for v in values],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    arrow_type = pa.from_numpy_dtype(np.dtype(feat["dtype"]))
    if feat["shape"] == [1]:
        return pa.array(values.reshape(len(values)), arrow_type)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), arrow_type), int(feat["shape"][0]))


def write_lerobot_dataset(
    root: str | Path,
    episodes: Iterable[Mapping[str, Any]],
    *,
    fps: int,
    video: bool = True,
    codec: str = "libsvtav1",
    episodes_per_file: int | None = None,
    robot_type: str | None = None,
) -> Path:
    """Write ``episodes`` under ``root`` (must not exist or be empty); returns ``root``."""
    pa, pq = _pa()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty")
    episodes = [dict(ep) for ep in episodes]
    if not episodes:
        raise ValueError("write_lerobot_dataset: no episodes")
    feats = _features(episodes[0], video, codec, fps)
    per_file = episodes_per_file or len(episodes)
    tasks: list[str] = []
    ep_rows: dict[str, list[Any]] = {}
    files: dict[int, list[dict[str, np.ndarray]]] = {}
    start = 0
    for ep_idx, ep in enumerate(episodes):
        n = len(np.asarray(ep[next(k for k in feats if k in ep)]))
        task_list = [ep[TASK]] * n if isinstance(ep[TASK], str) else list(ep[TASK])
        for t in task_list:
            if t not in tasks:
                tasks.append(t)
        cols = {k: np.asarray(ep[k]) for k in feats if k in ep}
        for k, v in cols.items():
            if len(v) != n:
                raise ValueError(f"episode {ep_idx}: {k!r} has {len(v)} frames, expected {n}")
        cols.update(
            timestamp=(np.arange(n) / fps).astype(np.float32),
            frame_index=np.arange(n),
            episode_index=np.full(n, ep_idx),
            index=np.arange(start, start + n),
            task_index=np.array([tasks.index(t) for t in task_list]),
        )
        file_index = ep_idx // per_file
        files.setdefault(file_index, []).append(cols)
        row = {
            "episode_index": ep_idx,
            "tasks": sorted(set(task_list), key=tasks.index),
            "length": n,
            "data/chunk_index": 0,
            "data/file_index": file_index,
            "dataset_from_index": start,
            "dataset_to_index": start + n,
        }
        for key, feat in feats.items():
            if feat["dtype"] == "video":
                before = sum(len(c["index"]) for c in files[file_index][:-1])
                row.update(
                    {
                        f"videos/{key}/chunk_index": 0,
                        f"videos/{key}/file_index": file_index,
                        f"videos/{key}/from_timestamp": before / fps,
                        f"videos/{key}/to_timestamp": (before + n) / fps,
                    }
                )
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        for k, v in row.items():
            ep_rows.setdefault(k, []).append(v)
        start += n
    stored = [k for k, f in feats.items() if f["dtype"] != "video"]
    for file_index, parts in files.items():
        table = pa.table({k: _column(pa, np.concatenate([p[k] for p in parts]), feats[k]) for k in stored})
        path = root / DATA_PATH.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path, table.schema, compression="snappy") as writer:
            for p in parts:  # one row group per episode, as LeRobot writes them
                writer.write_table(table.slice(int(p["index"][0] - parts[0]["index"][0]), len(p["index"])))
        for key, feat in feats.items():
            if feat["dtype"] == "video":
                frames = np.concatenate([p[key] for p in parts])
                _encode_video(
                    root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=file_index),
                    frames,
                    fps,
                    codec,
                )
    ep_path = root / EPISODES_DIR / "chunk-000" / "file-000.parquet"
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(ep_rows), ep_path)
    _write_tasks(root, tasks)
    all_cols = {k: np.concatenate([p[k] for parts in files.values() for p in parts]) for k in feats}
    stats = {
        k: _stats(v, feats[k]["dtype"] in ("video", "image"))
        for k, v in all_cols.items()
        if feats[k]["dtype"] != "string"
    }
    (root / STATS_PATH).write_text(json.dumps(stats, indent=2))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "fps": fps,
        "features": feats,
        "total_episodes": len(episodes),
        "total_frames": start,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video else None,
        "robot_type": robot_type,
        "splits": {"train": f"0:{len(episodes)}"},
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    return root
