"""Peer side (LeRobot 0.6.1 venv): write small v3.0 datasets and dump LeRobot's items for comparison.

    python lerobot_dataset_items.py PLAN.json

PLAN is ``{"make": [{"root", "episodes"?, "video_mb"?, "data_mb"?, "seed"?}, ...],
"dump": [{"root", "out", "indices", "delta"?, "episodes"?, "backend"?}, ...]}``, run in that order in
one process (LeRobot's import costs seconds).

``make`` records episodes with ``LeRobotDataset.create`` + ``add_frame`` + ``save_episode``: one video
camera, one image camera (PNG in parquet), state, environment state, action, a scalar reward and two
tasks; small file-size limits put several episodes in one file and spread them over several files.
``dump`` writes ``{"<i>/<key>": tensor}`` for LeRobot's ``dataset[i]`` (non-tensor values such as
``task`` go into the safetensors metadata as JSON) plus ``len`` of the dataset.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from safetensors.torch import save_file

FPS = 10
FEATURES = {
    "observation.images.cam": {
        "dtype": "video",
        "shape": (32, 48, 3),
        "names": ["height", "width", "channels"],
    },
    "observation.images.wrist": {
        "dtype": "image",
        "shape": (16, 24, 3),
        "names": ["height", "width", "channels"],
    },
    "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
    "observation.environment_state": {"dtype": "float32", "shape": (4,), "names": None},
    "action": {"dtype": "float32", "shape": (2,), "names": None},
    "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
}
TASKS = ("pick the red cube", "place it in the bin")


def _frame(rng: np.random.Generator, h: int, w: int, t: int) -> np.ndarray:
    """A smooth moving pattern plus a little noise: compresses like camera footage, not like static."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [
            128 + 100 * np.sin((xx + 3 * t) / 5.0),
            128 + 100 * np.cos((yy + 2 * t) / 4.0),
            (xx * yy + 7 * t) % 256,
        ],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def make(spec: dict) -> None:
    root = Path(spec["root"])
    shutil.rmtree(root, ignore_errors=True)
    ds = LeRobotDataset.create(
        "local/parity",
        fps=FPS,
        features=FEATURES,
        root=root,
        use_videos=True,
        video_files_size_in_mb=spec.get("video_mb"),
        data_files_size_in_mb=spec.get("data_mb"),
    )
    rng = np.random.default_rng(spec.get("seed", 0))
    for ep in range(spec.get("episodes", 6)):
        n = 7 + (5 * ep) % 9
        for t in range(n):
            ds.add_frame(
                {
                    "observation.images.cam": _frame(rng, 32, 48, t + 11 * ep),
                    "observation.images.wrist": rng.integers(0, 256, (16, 24, 3), dtype=np.uint8),
                    "observation.state": rng.normal(size=3).astype(np.float32),
                    "observation.environment_state": rng.normal(size=4).astype(np.float32),
                    "action": rng.normal(size=2).astype(np.float32),
                    "next.reward": np.array([t / n], dtype=np.float32),
                    "task": TASKS[ep % 2],
                }
            )
        ds.save_episode()
    ds.finalize()
    print(json.dumps({"root": str(root), "frames": ds.meta.total_frames, "episodes": ds.meta.total_episodes}))


def dump(spec: dict) -> None:
    ds = LeRobotDataset(
        "local/parity",
        root=spec["root"],
        delta_timestamps=spec.get("delta"),
        episodes=spec.get("episodes"),
        video_backend=spec.get("backend", "pyav"),
    )
    tensors: dict[str, torch.Tensor] = {"len": torch.tensor(len(ds))}
    other: dict[str, object] = {}
    for i in spec["indices"]:
        for key, value in ds[i].items():
            if isinstance(value, torch.Tensor):
                tensors[f"{i}/{key}"] = value.contiguous()
            else:
                other[f"{i}/{key}"] = value
    save_file(tensors, spec["out"], metadata={"other": json.dumps(other), "backend": str(ds._video_backend)})


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    for spec in plan.get("make", []):
        make(spec)
    for spec in plan.get("dump", []):
        dump(spec)


if __name__ == "__main__":
    main()
