#!/usr/bin/env python3
"""Data loading: our LeRobotV3Dataset vs LeRobot 0.6.1's LeRobotDataset, same dataset, windows and workers.

Run in the LeRobot 0.6.1 peer venv (our packages importable), e.g.::

    PY=$(python benchmarks/peer_env.py lerobot-0.6.1)
    $PY benchmarks/data_vs_lerobot.py [--root DIR] [--workers 2] [--batches 40] [--repeats 3]

Records a local v3.0 dataset with LeRobot itself (unless ``--root`` names one): 12 episodes of 60
frames at 30 fps, one 96x96 video camera (LeRobot's default AV1 encoding, GOP 2), state 6, action 6,
several episodes per file. Both loaders read it through ``torch.utils.data.DataLoader`` with the
same workers, batch size and shuffled order, with Diffusion-Policy-like windows (2 observation frames
of state and camera, a 16-step action chunk) and ACT-like ones (one frame, a 20-step chunk). Prints
median frames/s (samples/s) per case and the ratio ours / LeRobot (> 1.0: we load faster).
LeRobot decodes with its default backend (torchcodec when it loads, else PyAV; printed).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from vla_train.data.lerobot import LeRobotV3Dataset

CAM = "observation.images.cam"
FPS = 30


def record(root: Path, episodes: int, length: int, size: int) -> None:
    ds = LeRobotDataset.create(
        "bench/data",
        fps=FPS,
        root=root,
        features={
            CAM: {"dtype": "video", "shape": (size, size, 3), "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": (6,), "names": None},
            "action": {"dtype": "float32", "shape": (6,), "names": None},
        },
        video_files_size_in_mb=1,
        data_files_size_in_mb=1,
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for ep in range(episodes):
        for t in range(length):
            img = np.stack(
                [
                    128 + 90 * np.sin((xx + 2 * t + ep) / 7.0),
                    128 + 90 * np.cos((yy + t) / 5.0),
                    (xx + yy + 3 * t) % 256,
                ],
                axis=-1,
            )
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            ds.add_frame(
                {
                    CAM: img,
                    "observation.state": rng.normal(size=6).astype(np.float32),
                    "action": rng.normal(size=6).astype(np.float32),
                    "task": f"task {ep % 3}",
                }
            )
        ds.save_episode()
    ds.finalize()


def frames_per_second(dataset, *, workers: int, batch_size: int, batches: int, seed: int) -> float:
    """Samples/s over ``batches`` batches after the first (worker start-up excluded)."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        drop_last=True,
    )
    it = iter(loader)
    next(it)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        seen += len(batch["action"])
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="a v3.0 dataset (recorded there first if missing; default: a temporary one)",
    )
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tmp = None
    root = args.root
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="data_vs_lerobot_")
        root = Path(tmp.name) / "ds"
    if not (root / "meta" / "info.json").exists():
        t0 = time.perf_counter()
        record(root, args.episodes, args.length, args.size)
        print(f"recorded {args.episodes} x {args.length} frames at {root} in {time.perf_counter() - t0:.1f}s")

    dt = 1 / FPS
    cases = {
        "diffusion (2 obs frames, 16 actions)": {
            CAM: [-dt, 0.0],
            "observation.state": [-dt, 0.0],
            "action": [i * dt for i in range(-1, 15)],
        },
        "act (1 frame, 20 actions)": {"action": [i * dt for i in range(20)]},
    }
    print(
        f"workers={args.workers} batch_size={args.batch_size} batches={args.batches} repeats={args.repeats} "
        f"threads={args.threads}"
    )
    for name, delta in cases.items():
        ours = LeRobotV3Dataset(root, delta_timestamps=delta)
        peer = LeRobotDataset("bench/data", root=root, delta_timestamps=delta)
        # same sample: decoded frames agree
        a, b = ours[len(ours) // 2], peer[len(peer) // 2]
        assert torch.equal(a["action"], b["action"]) and (a[CAM] - b[CAM]).abs().max() <= 3 / 255
        kw = {"workers": args.workers, "batch_size": args.batch_size, "batches": args.batches}
        ours_fps, peer_fps = [], []
        for r in range(args.repeats):
            ours_fps.append(frames_per_second(ours, seed=r, **kw))
            print(f"  repeat {r}: ours {ours_fps[-1]:.1f} frames/s", flush=True)
            peer_fps.append(frames_per_second(peer, seed=r, **kw))
            print(f"  repeat {r}: lerobot {peer_fps[-1]:.1f} frames/s", flush=True)
        o, p = statistics.median(ours_fps), statistics.median(peer_fps)
        print(
            f"{name:40s} ours {o:8.1f} frames/s   lerobot ({peer._video_backend}) {p:8.1f} frames/s   "
            f"ratio ours/lerobot {o / p:5.2f}"
        )
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
