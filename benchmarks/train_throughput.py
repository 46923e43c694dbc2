"""Training throughput (samples/s) of the quick-start ACT config on CPU.

1. ours, three ways: a plain single process, FSDP2 on 1 rank, FSDP2 on 2 ranks (torchrun, gloo);
   each runs the real trainer (data loading included) and the ratios are against the plain run.
2. ours vs LeRobot 0.6.1's ACT training step (forward + backward + AdamW) on the same config and
   the same random batch, both in one process of the LeRobot peer venv.

    uv run python benchmarks/train_throughput.py [--steps 20] [--warmup 3] [--skip-peer]

Timings on a shared 2-core machine are noisy: re-run on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"
SOURCES = [ROOT / "packages" / p / "src" for p in ("vla-core", "vla-backbones", "vla-heads", "vla-train")]


def worker(mode: str, steps: int, warmup: int, out: str) -> None:
    """Run inside one process (or one torchrun rank): time trainer steps, rank 0 writes samples/s."""
    import torch

    torch.set_num_threads(1 if mode == "fsdp2" else 2)  # 2 cores in all
    from vla_train.config import load_config
    from vla_train.trainer import Trainer

    overrides = [f"output_dir={tempfile.mkdtemp()}", "log.progress=false", "checkpoint.every=0", "eval.episodes=0",
                 "parallel.device=cpu", f"parallel.fsdp={'false' if mode == 'plain' else 'true'}"]
    trainer = Trainer(load_config(CONFIG, overrides))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        trainer.train_step()
        trainer.step += 1
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if trainer.world.is_main:
        Path(out).write_text(json.dumps({"samples_per_s": trainer.config.batch_size / statistics.median(times)}))
    trainer.close()


def run_mode(mode: str, steps: int, warmup: int) -> float:
    out = tempfile.mktemp(suffix=".json")
    prefix = [sys.executable]
    if mode == "fsdp2":
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*prefix, __file__, "--worker", mode, "--steps", str(steps), "--warmup", str(warmup), "--out", out]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1" if mode == "fsdp2" else "2"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(Path(out).read_text())["samples_per_s"]


PEER = r'''
import json, statistics, sys, time, torch, yaml
torch.set_num_threads(2)
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
import vla_backbones.resnet_act, vla_heads.act_vae
from vla_core import VLAPolicy
cfg = yaml.safe_load(open(sys.argv[1])); steps, warmup = int(sys.argv[2]), int(sys.argv[3])
head, bb, data = cfg["policy"]["head"], cfg["policy"]["backbone"], cfg["data"]
s, b, h = data["image_size"], cfg["batch_size"], head["horizon"]
feats = {"observation.images.top": {"type": "VISUAL", "shape": [3, s, s]}, "observation.state": {"type": "STATE", "shape": [2]}}
ours = VLAPolicy.from_config({**cfg["policy"], "input_features": feats,
                              "output_features": {"action": {"type": "ACTION", "shape": [2]}}})
stats = {"observation.state": {"mean": torch.zeros(2), "std": torch.ones(2)}, "action": {"mean": torch.zeros(2), "std": torch.ones(2)}}
ours.normalizer.set_stats(stats)
peer = ACTPolicy(ACTConfig(
    input_features={"observation.images.top": PolicyFeature(type=FeatureType.VISUAL, shape=(3, s, s)),
                    "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(2,))},
    output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(2,))},
    chunk_size=h, n_action_steps=h, vision_backbone=bb["variant"], pretrained_backbone_weights=None,
    replace_final_stride_with_dilation=False, dim_model=head["dim_model"], n_heads=head["n_heads"],
    dim_feedforward=head["dim_feedforward"], n_encoder_layers=head["n_encoder_layers"],
    n_decoder_layers=head["n_decoder_layers"], n_vae_encoder_layers=head["n_vae_encoder_layers"],
    latent_dim=head["latent_dim"], dropout=head["dropout"], kl_weight=head["kl_weight"], device="cpu"))
g = torch.Generator().manual_seed(0)
batch = {"observation.images.top": torch.rand(b, 3, s, s, generator=g), "observation.state": torch.randn(b, 2, generator=g),
         "action": torch.randn(b, h, 2, generator=g), "action_is_pad": torch.zeros(b, h, dtype=torch.bool)}
def timed(model, step):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train(); out = []
    for i in range(warmup + steps):
        t = time.perf_counter(); loss = step(model); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if i >= warmup: out.append(time.perf_counter() - t)
    return b / statistics.median(out)
res = {}
for _ in range(2):  # alternate to spread machine noise
    res.setdefault("ours", []).append(timed(ours, lambda m: m(batch).loss))
    res.setdefault("peer", []).append(timed(peer, lambda m: m(dict(batch))[0]))
print(json.dumps({k: max(v) for k, v in res.items()}))
'''


def run_peer(steps: int, warmup: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peer_env import ensure_peer

    python = ensure_peer("lerobot-0.6.1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in SOURCES), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([str(python), "-c", PEER, str(CONFIG), str(steps), str(warmup)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--worker")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.steps, a.warmup, a.out)
    print(f"config: {CONFIG.relative_to(ROOT)} (ACT, CPU, 2 cores in all)")
    rates = {mode: run_mode(mode, a.steps, a.warmup) for mode in ("plain", "fsdp1", "fsdp2")}
    for mode, rate in rates.items():
        print(f"ours {mode:<6} {rate:8.1f} samples/s   ratio to plain {rate / rates['plain']:.2f}")
    if not a.skip_peer:
        peer = run_peer(a.steps, a.warmup)
        print(f"train step (fwd+bwd+AdamW, same batch): ours {peer['ours']:.1f} samples/s, LeRobot 0.6.1 "
              f"{peer['peer']:.1f} samples/s, time ratio ours/peer {peer['peer'] / peer['ours']:.2f}")


if __name__ == "__main__":
    main()
