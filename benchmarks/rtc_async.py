"""Synchronous vs asynchronous chunk execution, with and without real-time chunking, on the toy task.

Trains ``configs/toy_flow.yaml`` (a resnet18 + DiT flow-matching policy; skip with ``--run`` to reuse a
trained run), then rolls it out with a simulated inference delay of ``--delay`` control steps
(:mod:`vla_train.eval_async`) in four ways and prints one Markdown table: success rate and mean action
jump at chunk boundaries (robot units: the arena is the unit square; the agent moves at most 0.08 per
step).

    uv run python benchmarks/rtc_async.py [--run RUN_DIR] [--delay 3] [--episodes 100]

Everything runs with one intra-op thread (a shared 2-core machine: two threads only wait on each other).
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy_flow.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run or policy directory (default: train configs/toy_flow.yaml)")
    parser.add_argument("--delay", type=int, default=3, help="simulated inference delay, in control steps")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=100_000)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from vla_train.eval_async import evaluate_async

    start = time.perf_counter()
    run = args.run
    if run is None:
        from vla_train.config import load_config
        from vla_train.trainer import train

        out = Path(tempfile.mkdtemp(prefix="rtc-bench-")) / "toy_flow"
        run = str(train(load_config(CONFIG, [f"output_dir={out}", "log.progress=false", "eval.episodes=0"])))
    trained = time.perf_counter()
    rows = [("sync, no delay", 0, False, False), (f"sync, delay {args.delay}", args.delay, False, False),
            (f"async, delay {args.delay}", args.delay, True, False),
            (f"async + RTC, delay {args.delay}", args.delay, True, True)]
    lines = ["| execution | success rate | mean boundary jump | mean step within a chunk | boundaries |",
             "| --- | --- | --- | --- | --- |"]
    for name, delay, asynchronous, rtc in rows:
        r = evaluate_async(run, episodes=args.episodes, inference_delay=delay, asynchronous=asynchronous, rtc=rtc,
                           seed=args.seed)
        lines.append(f"| {name} | {r['success_rate']:.2f} | {r['mean_boundary_jump']:.4f} | "
                     f"{r['mean_step_within_chunks']:.4f} | {r['boundaries']} |")
        print(lines[-1], flush=True)
    done = time.perf_counter()
    print(f"\n{datetime.date.today()}, configs/toy_flow.yaml, {args.episodes} episodes of 30 steps, delay {args.delay} "
          f"control steps, n_action_steps 5, horizon 10; training {trained - start:.0f} s, evaluation "
          f"{done - trained:.0f} s (one thread)\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
