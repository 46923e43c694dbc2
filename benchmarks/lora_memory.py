"""Full fine-tuning vs LoRA (peft) of pi0 at full width: peak memory and step time on CPU (or a GPU).

The policy is configs/pi0.yaml with every width kept (Gemma 2B prefix 2048 / 16384 MLP, Gemma 300M expert
1024 / 4096, SigLIP So400m 1152 / 4304, 224 px, chunk 50) and the depths cut to fit this machine, as
benchmarks/pi0_vs_lerobot.py does: ``--depth`` Gemma and expert layers, ``--vision-depth`` SigLIP layers
and a ``--vocab``-row embedding. Each mode runs in a fresh process (peak RSS is per process): build,
AdamW (the trainer's, vla_train.optim), ``--repeats`` timed steps after one warm-up.

Reported per mode: trainable parameters, the estimate of vla_train.memory (weights + grads + AdamW state),
the peak resident memory of the process (CPU) or torch's peak allocated memory (CUDA) and the median step
time. Run: ``uv run python benchmarks/lora_memory.py [--depth 1] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spec(args) -> dict:
    import yaml

    policy = yaml.safe_load((ROOT / "configs" / "pi0.yaml").read_text())["policy"]
    policy["input_features"] = {"observation.images.base": {"type": "VISUAL", "shape": [3, 224, 224]},
                                "observation.state": {"type": "STATE", "shape": [14]}}
    policy["backbone"].update(depth=args.depth, vision_depth=args.vision_depth, vocab_size=args.vocab)
    policy["head"].update(depth=args.depth, prefix_num_layers=args.depth)
    return policy


def run_mode(args) -> dict:
    import torch
    from vla_core import build_policy
    from vla_core.testing import set_random_stats
    from vla_train.adapters import PeftConfig, apply_peft
    from vla_train.config import OptimConfig
    from vla_train.memory import measure
    from vla_train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    policy = set_random_stats(build_policy(spec(args)))
    if args.dtype == "bfloat16":
        policy.set_dtype("bfloat16")
    if args.mode == "lora":
        apply_peft(policy, PeftConfig(r=args.r, alpha=2 * args.r))
    estimate = measure(policy, args.mode)
    policy.to(device).train()
    optimizer = build_optimizer(policy, OptimConfig(lr=1e-5))
    g = torch.Generator().manual_seed(0)
    b = args.batch_size
    batch = {"observation.images.base": torch.rand(b, 3, 224, 224, generator=g),
             "observation.state": torch.randn(b, 14, generator=g), "action": torch.randn(b, 50, 14, generator=g),
             "observation.language.tokens": torch.randint(0, args.vocab, (b, 48), generator=g),
             "observation.language.attention_mask": torch.ones(b, 48, dtype=torch.bool)}
    batch = {k: v.to(device) for k, v in batch.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(1 + args.repeats):
        sync()
        t0 = time.perf_counter()
        loss = policy(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": args.mode, "parameters": estimate.parameters, "trainable": estimate.trainable,
            "estimate_bytes": estimate.total, "peak_bytes": peak, "step_s": statistics.median(times),
            "losses": losses, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--vision-depth", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)  # one side, in a child process
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.mode:
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("full", "lora"):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    full, lora = results["full"], results["lora"]
    gib = 2**30
    print(f"pi0, full widths, {args.depth} Gemma + {args.depth} expert layers, {args.vision_depth} SigLIP layers, "
          f"vocab {args.vocab}, batch {args.batch_size}, {args.dtype} weights, device {full['device']}, "
          f"{args.threads} threads, median of {args.repeats} steps")
    print(f"{'mode':<6} {'trainable':>24} {'estimate GiB':>12} {'peak GiB':>9} {'step s':>8}")
    for r in (full, lora):
        share = f"{r['trainable']:,} ({100 * r['trainable'] / r['parameters']:.2f}%)"
        print(f"{r['mode']:<6} {share:>24} {r['estimate_bytes'] / gib:>12.2f} {r['peak_bytes'] / gib:>9.2f} "
              f"{r['step_s']:>8.2f}")
    print(f"LoRA / full: peak memory x{lora['peak_bytes'] / full['peak_bytes']:.2f}, "
          f"step time x{lora['step_s'] / full['step_s']:.2f}")


if __name__ == "__main__":
    main()
