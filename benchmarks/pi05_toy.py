"""pi0.5 learns the toy task with language: ``configs/pi05_toy.yaml`` trained from scratch, then closed loop.

The toy reach task with ``num_targets: 2`` draws a red and a blue target; only the instruction ("reach
the red target") says which one to reach, so a policy that ignores the language succeeds in at most
about half the episodes. Writes the toy tokenizer (:mod:`vla_train.toy.tokenizer`), trains the config
(``--set`` overrides pass through), evaluates ``--episodes`` closed-loop episodes and prints the
success rate, the same episodes with the instructions swapped between the colours (the policy should
now reach the *other* target: the success rate drops toward 0 when the language is used) and the
training time.

    uv run python benchmarks/pi05_toy.py [--episodes 100] [--out runs/pi05_toy_bench] [--set steps=4000 ...]

Runs with one intra-op thread by default (``--threads``); a shared 2-core machine gains little from two.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pi05_toy.yaml"


class SwappedInstructions:
    """The toy env with every instruction naming the other colour (success still measures the drawn goal)."""

    def __init__(self, env) -> None:
        self.env, self.max_steps = env, env.max_steps

    @staticmethod
    def _swap(batch: dict) -> dict:
        swap = {"red": "blue", "blue": "red"}
        return {**batch, "task": [" ".join(swap.get(w, w) for w in t.split()) for t in batch["task"]]}

    def reset(self) -> dict:
        return self._swap(self.env.reset())

    def step(self, action):
        batch, success, done = self.env.step(action)
        return self._swap(batch), success, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pi05_toy_bench", help="run directory (its tokenizer/ too)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    from vla_core import load_policy
    from vla_train.config import load_config
    from vla_train.eval import load_eval_env_factory, run_episodes
    from vla_train.toy.tokenizer import save_toy_tokenizer
    from vla_train.trainer import train

    out = Path(args.out)
    tokenizer = out.parent / f"{out.name}_tokenizer"
    save_toy_tokenizer(tokenizer)
    config = load_config(CONFIG, [f"policy.backbone.tokenizer={tokenizer}", f"output_dir={out}", "log.progress=false",
                                  "eval.episodes=0", *args.overrides])
    start = time.perf_counter()
    run = train(config)
    trained = time.perf_counter() - start
    policy = load_policy(run / "pretrained")
    make_env = load_eval_env_factory(run / "pretrained")
    success, _ = run_episodes(policy, make_env, episodes=args.episodes, seed=args.seed)
    swapped, _ = run_episodes(policy, lambda n, seed: SwappedInstructions(make_env(n, seed)),  # the same layouts
                              episodes=args.episodes, seed=args.seed)
    print(f"\n{datetime.date.today()}, configs/pi05_toy.yaml {' '.join(args.overrides)}: {config.steps} steps, "
          f"batch {config.batch_size}, {trained:.0f} s training ({args.threads} thread(s))")
    print(f"success_rate: {success.mean():.3f} ({args.episodes} episodes, seed {args.seed}); "
          f"with the instructions swapped: {swapped.mean():.3f}")


if __name__ == "__main__":
    main()
