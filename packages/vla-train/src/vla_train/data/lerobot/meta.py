"""The ``meta/`` directory of a LeRobotDataset v3.0: info, stats, tasks and the episode table.

Layout (paths relative to the dataset root)::

    meta/info.json                              fps, features, totals, path templates
    meta/stats.json                             {key: {mean, std, min, max, q01, ..., count}}
    meta/tasks.parquet                          one row per task: task_index, task (pandas index)
    meta/episodes/chunk-XXX/file-YYY.parquet    one row per episode (see ``EpisodeTable``)
    data/chunk-XXX/file-YYY.parquet             frames of one or more consecutive episodes
    videos/<key>/chunk-XXX/file-YYY.mp4         one or more consecutive episodes per file

``dataset_from_index`` / ``dataset_to_index`` of an episode are global frame indices (the ``index``
column of the data files, half-open range); ``videos/<key>/from_timestamp`` is where the episode
starts inside its (concatenated) video file, so frame ``t`` of the episode is at
``from_timestamp + timestamp[t]`` seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from vla_core import FeatureType, PolicyFeature
from vla_core.errors import require
from vla_core.features import ACTION, OBS_ENV_STATE, OBS_STATE, TASK
from vla_core.paths import inside

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
# Per-frame bookkeeping columns LeRobot adds to every dataset.
DEFAULT_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
# The statistics a normalizer can use; meta/stats.json may hold more (count, q10, q50, q90).
NORMALIZER_STATS = ("mean", "std", "min", "max", "q01", "q99")
VISUAL_DTYPES = ("video", "image")


class LeRobotDataError(ValueError):
    """A LeRobot dataset is missing a file, is inconsistent, or was asked for something it lacks."""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise LeRobotDataError(
            f"missing file {path} (is {path.parent.parent} a LeRobotDataset v3.0 directory?)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise LeRobotDataError(f"{path}: not valid JSON ({err})") from None


def _read_parquet(path: Path, columns: list[str] | None = None):
    pq = require("pyarrow.parquet", "'vla-train[lerobot]'")
    if not path.is_file():
        raise LeRobotDataError(f"missing file {path}")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as err:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError/KeyError subclasses
        raise LeRobotDataError(f"{path}: cannot read parquet ({type(err).__name__}: {err})") from None


@dataclass
class EpisodeTable:
    """The episode rows of ``meta/episodes``, as numpy columns indexed by episode position.

    ``columns`` holds ``episode_index``, ``length``, ``dataset_from_index``, ``dataset_to_index``,
    ``data/chunk_index``, ``data/file_index`` and, per video key ``k``, ``videos/k/chunk_index``,
    ``videos/k/file_index``, ``videos/k/from_timestamp``, ``videos/k/to_timestamp``.
    """

    columns: dict[str, np.ndarray]
    row_of: dict[int, int]  # episode_index -> row

    def __len__(self) -> int:
        return len(self.columns["episode_index"])

    def get(self, episode: int, column: str) -> Any:
        try:
            row = self.row_of[episode]
        except KeyError:
            raise LeRobotDataError(
                f"episode {episode} is not in the dataset ({len(self)} episodes)"
            ) from None
        try:
            return self.columns[column][row].item()
        except KeyError:
            raise LeRobotDataError(f"meta/episodes has no column {column!r} (episode {episode})") from None


@dataclass
class LeRobotMeta:
    """Everything under ``meta/``: parsed once, shared by the reader's workers."""

    root: Path
    info: dict[str, Any]
    tasks: list[str]  # task string by task_index
    episodes: EpisodeTable
    stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def fps(self) -> int:
        return int(self.info["fps"])  # checked by load_info: a positive integer

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        """The raw ``info.json`` features: ``{key: {"dtype", "shape", "names", ...}}``."""
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in VISUAL_DTYPES]

    @property
    def episode_indices(self) -> list[int]:
        return [int(e) for e in self.episodes.columns["episode_index"]]

    def data_file(self, episode: int) -> Path:
        chunk, file = (
            self.episodes.get(episode, "data/chunk_index"),
            self.episodes.get(episode, "data/file_index"),
        )
        return self.path_in_root("data_path", chunk_index=chunk, file_index=file)

    def video_file(self, episode: int, key: str) -> Path:
        chunk = self.episodes.get(episode, f"videos/{key}/chunk_index")
        file = self.episodes.get(episode, f"videos/{key}/file_index")
        return self.path_in_root("video_path", video_key=key, chunk_index=chunk, file_index=file)

    def path_in_root(self, field: str, **values: Any) -> Path:
        """``info[field]`` (a path template) filled with ``values``; it must stay inside the dataset root."""
        template = self.info[field]
        try:
            relative = template.format(**values)
        except (KeyError, IndexError, ValueError) as err:
            raise LeRobotDataError(f"{self.root / INFO_PATH}: {field} {template!r} is not a template of "
                                   f"{sorted(values)} ({type(err).__name__}: {err})") from None
        return self.file_in_root(relative, f"{self.root / INFO_PATH}: {field} {template!r} gives")

    def file_in_root(self, relative: str, what: str) -> Path:
        """``root / relative``, refused when it leads outside the dataset root (``..``, an absolute path)."""
        try:
            return inside(self.root, relative, what)
        except ValueError as err:
            raise LeRobotDataError(str(err)) from None

    def policy_features(self) -> dict[str, PolicyFeature]:
        """``{key: PolicyFeature}`` of the keys a policy consumes (cameras, states, action, task)."""
        out: dict[str, PolicyFeature] = {}
        for key, feat in self.features.items():
            shape = tuple(int(s) for s in feat["shape"])
            if feat["dtype"] in VISUAL_DTYPES:
                out[key] = PolicyFeature(FeatureType.VISUAL, _chw(key, feat, shape))
            elif key == OBS_STATE:
                out[key] = PolicyFeature(FeatureType.STATE, shape)
            elif key == OBS_ENV_STATE:
                out[key] = PolicyFeature(FeatureType.ENV, shape)
            elif key == ACTION:
                out[key] = PolicyFeature(FeatureType.ACTION, shape)
        if self.tasks:
            out[TASK] = PolicyFeature(FeatureType.LANGUAGE, ())
        return out


def _chw(key: str, feat: dict[str, Any], shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of a camera feature stored as (H, W, C) (``names`` may say otherwise)."""
    if len(shape) != 3:
        raise LeRobotDataError(f"info.json feature {key!r}: expected a 3-d image shape, got {list(shape)}")
    names = feat.get("names") or ["height", "width", "channels"]
    if list(names) == ["channels", "height", "width"]:
        return shape  # type: ignore[return-value]
    return (shape[2], shape[0], shape[1])


def load_info(root: Path) -> dict[str, Any]:
    info = _read_json(root / INFO_PATH)
    version = str(info.get("codebase_version", "<missing>"))
    if not version.startswith("v3"):
        raise LeRobotDataError(
            f"{root / INFO_PATH}: codebase_version {version!r} is not supported; this reader reads LeRobot "
            f"{CODEBASE_VERSION} datasets (convert older ones with LeRobot's convert_dataset_v21_to_v30)"
        )
    for name in ("fps", "features", "data_path"):
        if name not in info:
            raise LeRobotDataError(f"{root / INFO_PATH}: missing field {name!r}")
    check_info(info, root / INFO_PATH)
    return info


def check_info(info: dict[str, Any], path: Path) -> None:
    """Field types of ``info.json``: errors name the field, the expected and the received."""
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0 or fps != int(fps):
        raise LeRobotDataError(f"{path}: field 'fps' must be a positive integer (frames per second), received {fps!r}")
    for name in ("data_path", "video_path"):
        if info.get(name) is not None and not isinstance(info[name], str) or name == "data_path" and not info[name]:
            raise LeRobotDataError(f"{path}: field {name!r} must be a path template string, received {info[name]!r}")
    features = info["features"]
    if not isinstance(features, dict):
        raise LeRobotDataError(f"{path}: field 'features' must be a mapping of feature names, received "
                               f"{type(features).__name__}")
    for key, feat in features.items():
        if not isinstance(feat, dict) or not isinstance(feat.get("dtype"), str):
            raise LeRobotDataError(f"{path}: field 'features.{key}' must be a mapping with a 'dtype' string, "
                                   f"received {feat!r}")
        shape = feat.get("shape")
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise LeRobotDataError(f"{path}: field 'features.{key}.shape' must be a list of positive integers, "
                                   f"received {shape!r}")


def load_stats(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """``{key: {stat: float32 array}}`` from ``meta/stats.json`` ({} when the file is absent).

    Keeps the statistics a normalizer uses (``NORMALIZER_STATS``; ``count`` and the other quantiles
    are dropped). Image stats keep LeRobot's per-channel ``(C, 1, 1)`` shape.
    """
    path = root / STATS_PATH
    if not path.is_file():
        return {}
    raw = _read_json(path)
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            raise LeRobotDataError(f"{path}: entry {key!r} is not a mapping of statistics")
        stats[key] = {
            name: np.atleast_1d(np.asarray(value, dtype=np.float32))
            for name, value in entry.items()
            if name in NORMALIZER_STATS
        }
    return stats


def load_tasks(root: Path) -> list[str]:
    table = _read_parquet(root / TASKS_PATH)
    names = table.column_names
    if "task_index" not in names or "task" not in names:
        raise LeRobotDataError(f"{root / TASKS_PATH}: expected columns 'task_index' and 'task', got {names}")
    index = table.column("task_index").to_pylist()
    text = table.column("task").to_pylist()
    tasks = [""] * (max(index) + 1 if index else 0)
    for i, t in zip(index, text):
        tasks[i] = t
    return tasks


def load_episodes(root: Path) -> EpisodeTable:
    """All ``meta/episodes/chunk-*/file-*.parquet`` rows, without the per-episode ``stats/`` columns."""
    pq = require("pyarrow.parquet", "'vla-train[lerobot]'")
    files = sorted((root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotDataError(f"missing files {root / EPISODES_DIR}/chunk-*/file-*.parquet")
    parts: dict[str, list[np.ndarray]] = {}
    for path in files:
        try:
            schema = pq.read_schema(path)
        except Exception as err:  # noqa: BLE001 - as above
            raise LeRobotDataError(f"{path}: cannot read parquet ({type(err).__name__}: {err})") from None
        wanted = [n for n in schema.names if not n.startswith("stats/") and n not in ("tasks",)]
        table = _read_parquet(path, columns=wanted)
        for name in wanted:
            parts.setdefault(name, []).append(table.column(name).to_numpy())
    columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    for name in ("episode_index", "dataset_from_index", "dataset_to_index"):
        if name not in columns:
            raise LeRobotDataError(f"{root / EPISODES_DIR}: missing column {name!r}")
    row_of = {int(e): row for row, e in enumerate(columns["episode_index"])}
    return EpisodeTable(columns, row_of)


def load_meta(root: str | Path) -> LeRobotMeta:
    """Parse ``root/meta``; raises ``LeRobotDataError`` naming the missing or broken file."""
    root = Path(root)
    info = load_info(root)
    return LeRobotMeta(
        root=root, info=info, tasks=load_tasks(root), episodes=load_episodes(root), stats=load_stats(root)
    )
