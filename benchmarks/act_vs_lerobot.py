#!/usr/bin/env python3
"""ACT: vla (resnet_act + act_vae) vs LeRobot 0.6.1's ACTPolicy, same config and weights, one process.

Runs in the LeRobot 0.6.1 peer venv (our packages importable); started from any other Python
(e.g. ``uv run python benchmarks/act_vs_lerobot.py``) it re-runs itself there, creating the venv
if needed (``benchmarks/peer_env.py``). Or directly::

    PY=$(python benchmarks/peer_env.py -q lerobot-0.6.1)
    $PY benchmarks/act_vs_lerobot.py [--repeats 5] [--threads 2]

Builds LeRobot's ACTPolicy (ALOHA-like: state 14, action 14, chunk 100, one 3x224x224 camera,
ACT defaults, random weights and random normalization stats), saves it with its processors,
converts it with ``vla_train.convert.lerobot_act`` and checks that both give the same
un-normalized chunk. Then it prints the median time of a training step (batch 8, forward +
backward + AdamW) and of inference (``predict_action_chunk``, batch 1), and the ratios ours/LeRobot;
the two sides alternate within each round (``timing.interleaved``) and the paired ratio is the
median of the per-round ratios.
LeRobot is timed on pre-normalized batches (its processors excluded); ours includes normalization.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import torch
from timing import interleaved, paired_ratio
from vla_core import VLAPolicy
from vla_train.config import OptimConfig
from vla_train.convert.lerobot_act import convert
from vla_train.host_memory import retain_freed_memory
from vla_train.optim import build_optimizer

STATE, ACTION, CAMERA = "observation.state", "action", "observation.images.top"
PEER = "lerobot-0.6.1"


def run_in_peer_venv_unless_lerobot_imports() -> None:
    """Re-run this script with the peer venv's Python when LeRobot is not importable here."""
    if importlib.util.find_spec("lerobot") is not None:
        return
    spec = importlib.util.spec_from_file_location("peer_env", Path(__file__).with_name("peer_env.py"))
    peer_env = sys.modules["peer_env"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer_env)
    python = peer_env.ensure_peer(PEER)
    print(f"[act_vs_lerobot] LeRobot is not importable here: re-running in {python}", flush=True)
    sys.stdout.flush()
    os.execve(str(python), [str(python), __file__, *sys.argv[1:]], peer_env._peer_env(PEER))


def lerobot_policy(seed: int):
    """LeRobot's ACTPolicy (ALOHA-like, random weights) and random normalization stats."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    config = ACTConfig(
        input_features={
            STATE: PolicyFeature(type=FeatureType.STATE, shape=(14,)),
            CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 224, 224)),
        },
        output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(14,))},
        pretrained_backbone_weights=None,
        device="cpu",
    )
    torch.manual_seed(seed)
    policy = ACTPolicy(config)
    g = torch.Generator().manual_seed(seed)
    stats = {
        STATE: {"mean": torch.randn(14, generator=g), "std": torch.rand(14, generator=g) + 0.5},
        ACTION: {"mean": torch.randn(14, generator=g), "std": torch.rand(14, generator=g) + 0.5},
        CAMERA: {"mean": torch.rand(3, 1, 1, generator=g), "std": torch.rand(3, 1, 1, generator=g) + 0.2},
    }
    return policy, stats


def make_batch(batch_size: int, g: torch.Generator, with_action: bool) -> dict:
    batch = {STATE: torch.randn(batch_size, 14, generator=g), CAMERA: torch.rand(batch_size, 3, 224, 224, generator=g)}
    if with_action:
        batch[ACTION] = torch.randn(batch_size, 100, 14, generator=g)
        batch["action_is_pad"] = torch.zeros(batch_size, 100, dtype=torch.bool)
        batch["action_is_pad"][:, 90:] = True
    return batch


def train_step_fn(policy, batch, loss_of, opt):
    policy.train()

    def step():
        loss = loss_of(policy, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retain-host-memory", action="store_true",
                    help="tune glibc malloc as vla_train's trainer does (process-wide: both sides benefit)")
    a = ap.parse_args()
    run_in_peer_venv_unless_lerobot_imports()
    from lerobot.policies.act.processor_act import make_act_pre_post_processors

    torch.set_num_threads(a.threads)
    if a.retain_host_memory and not retain_freed_memory():
        raise SystemExit("--retain-host-memory: this C library has no glibc mallopt")

    lr_policy, stats = lerobot_policy(a.seed)
    pre, post = make_act_pre_post_processors(lr_policy.config, dataset_stats=stats)
    with tempfile.TemporaryDirectory() as tmp:
        lr_dir = Path(tmp) / "lerobot"
        lr_policy.save_pretrained(lr_dir)
        pre.save_pretrained(lr_dir)
        post.save_pretrained(lr_dir)
        ours = VLAPolicy.from_pretrained(convert(lr_dir, Path(tmp) / "vla"))

    g = torch.Generator().manual_seed(a.seed + 1)
    infer = make_batch(1, g, with_action=False)
    train = make_batch(8, g, with_action=True)
    lr_infer, lr_train = pre(dict(infer)), pre(dict(train))

    # Same weights, same outputs (eval mode).
    lr_policy.eval()
    ours.eval()
    with torch.no_grad():
        theirs = post(lr_policy.predict_action_chunk(lr_infer))
        mine = ours.predict_action_chunk(infer)
    diff = (theirs - mine).abs().max().item()
    print(f"max |ours - lerobot| on predict_action_chunk: {diff:.2e}")
    if diff > 1e-5:
        raise SystemExit(f"outputs differ by {diff:.2e} > 1e-5")

    def lr_loss(policy, batch):
        return policy(batch)[0]

    def our_loss(policy, batch):
        return policy(batch).loss

    # Each library's optimizer as its own trainer builds it, with ACT's hyper-parameters (lr 1e-5,
    # weight decay 1e-4): LeRobot's AdamW preset over its parameter groups, vla_train's AdamW
    # (fused kernel on CPU / CUDA).
    lr_opt = lr_policy.config.get_optimizer_preset().build(lr_policy.get_optim_params())
    our_opt = build_optimizer(ours, OptimConfig(lr=1e-5, weight_decay=1e-4))
    # The two sides alternate within each round (see timing.py): drift in the machine's speed hits both.
    train_t = interleaved({"lerobot": train_step_fn(lr_policy, lr_train, lr_loss, lr_opt),
                           "ours": train_step_fn(ours, train, our_loss, our_opt)}, a.repeats)
    lr_policy.eval()
    ours.eval()
    infer_t = interleaved({"lerobot": lambda: lr_policy.predict_action_chunk(lr_infer),
                           "ours": lambda: ours.predict_action_chunk(infer)}, a.repeats * 4)

    allocator = "glibc, freed memory retained" if a.retain_host_memory else "glibc defaults"
    print(f"threads={a.threads} repeats={a.repeats} torch={torch.__version__} allocator: {allocator}")
    for name, t in (("train step (batch 8, fwd+bwd+optimizer)", train_t),
                    ("inference (predict_action_chunk, b=1)", infer_t)):
        theirs, mine = t["lerobot"], t["ours"]
        print(f"{name}: lerobot {theirs.wall * 1e3:8.1f} ms  ours {mine.wall * 1e3:8.1f} ms  "
              f"ratio ours/lerobot {mine.wall / theirs.wall:.3f}  (paired {paired_ratio(mine, theirs):.3f}, "
              f"cpu-time {mine.cpu / theirs.cpu:.3f})")


if __name__ == "__main__":
    main()
