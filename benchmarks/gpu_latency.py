#!/usr/bin/env python3
"""Batch-1 action-chunk latency of every policy family: eager, compiled, CUDA graph, bf16 + CUDA graph,
against the hardware floor. Meant for one GPU (``--device cuda``, under 8 minutes); ``--device cpu
--tiny`` checks on CPU that the script works (CI runs it so).

    uv run python benchmarks/gpu_latency.py                       # cuda, full size
    uv run python benchmarks/gpu_latency.py --device cpu --tiny --backend eager --calls 5

Policies (random weights, random normalization stats): ACT (``configs/act.yaml``), Diffusion Policy
with DDIM, 10 steps (``configs/diffusion_pusht.yaml``), GR00T N1.5 = eagle backbone + DiT flow head
(``configs/groot_n15.yaml``), pi0 (``configs/pi0.yaml``), pi0.5 (``configs/pi05.yaml``).
``--tiny`` builds the same backbone / head pairs from their ``tiny_config`` instead. Text goes through
a word-level tokenizer written to a temporary directory (the vocabulary size is the real one).

Columns, per family: median and p99 of ``predict_action_chunk`` over ``--calls`` calls after warm-up
(fixed noise, batch 1) for

- ``lerobot eager``: LeRobot's policy; not wired in this script yet, so "n/a" (the
  ``benchmarks/*_vs_lerobot.py`` scripts compare on CPU, in the peer venv),
- ``ours eager``, ``ours compiled`` (``Policy.compile()``), ``ours CUDA graph``
  (``compile("reduce-overhead")``) and ``ours bf16+CUDA graph`` (``compile("reduce-overhead",
  dtype=torch.bfloat16)``); the CUDA graph columns are "n/a" off CUDA,
- ``floor``: max(weight bytes read per chunk in bf16 / measured copy bandwidth, FLOPs per chunk / measured
  bf16 matmul peak). Weight bytes count every call of every module's own parameters (a head's weights
  once per denoising step; embedding tables not counted: a lookup reads a few rows); FLOPs come from
  ``torch.utils.flop_counter.FlopCounterMode`` on the eager chunk,
- ``best / floor``: the fastest of our columns over the floor,
- ``max err``: max |compiled - eager| and |bf16 - eager| over max |eager| (the chunk, robot units).

Then the bf16 training step (autocast bf16, forward + backward + AdamW, batch 2) for ACT, Diffusion and
pi0: median seconds over ``--train-steps`` steps.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from vla_core import VLAPolicy
from vla_core.testing import TASKS, random_batch, set_random_stats, tiny_policy_config

ROOT = Path(__file__).resolve().parents[1]
# family -> (config file, head overrides, (tiny backbone, tiny head)); the train step runs for TRAINED.
FAMILIES = {
    "act": ("act.yaml", {}, ("resnet_act", "act_vae")),
    "diffusion_ddim10": ("diffusion_pusht.yaml", {"noise_scheduler_type": "DDIM", "num_inference_steps": 10},
                         ("resnet_spatial_softmax", "unet_diffusion")),
    "groot_n15": ("groot_n15.yaml", {}, ("eagle", "dit_flow_matching")),
    "pi0": ("pi0.yaml", {}, ("paligemma", "pi0_flow")),
    "pi05": ("pi05.yaml", {}, ("paligemma", "pi05_flow")),
}
TRAINED = ("act", "diffusion_ddim10", "pi0")


# --------------------------------------------------------------------------- building
def _tokenizer_fields(backbone: dict, workdir: Path) -> dict:
    """A word-level tokenizer for the benchmark's task strings, for backbones that read text."""
    from vla_backbones.word_tokenizer import TINY_TASK_WORDS, save_word_tokenizer

    words = [*TINY_TASK_WORDS, *TASKS]
    if backbone["type"] == "paligemma":
        save_word_tokenizer(workdir / "tok", words, bos_token="<bos>")
        return {"tokenizer": str(workdir / "tok")}
    if backbone["type"] == "eagle":
        from vla_backbones.eagle.processor import IMAGE_TOKEN, PROMPT_TOKENS

        vocab = save_word_tokenizer(workdir / "tok", [*words, "user assistant [' ']"],
                                    special_tokens=[*PROMPT_TOKENS, IMAGE_TOKEN])
        return {"tokenizer_path": str(workdir / "tok"), "image_token_id": vocab[IMAGE_TOKEN]}
    return {}


def policy_config(family: str, tiny: bool, workdir: Path) -> dict:
    """The VLAPolicy config of ``family`` at full size (configs/) or tiny (the components' tiny_config)."""
    config_file, head_overrides, (backbone, head) = FAMILIES[family]
    if tiny:
        config = tiny_policy_config(backbone, head, workdir / family)
        if head == "unet_diffusion":
            head_overrides = {**head_overrides, "num_train_timesteps": 20}
    else:
        from vla_train.config import load_yaml

        path = ROOT / "configs" / config_file
        config = load_yaml(path.read_text(), str(path))["policy"]
        config["backbone"] = {**config["backbone"], **_tokenizer_fields(config["backbone"], workdir)}
    config["head"] = {**config["head"], **head_overrides}
    return config


def build(config: dict, device: str) -> VLAPolicy:
    torch.manual_seed(0)
    with torch.device(device):
        policy = VLAPolicy(config)
    return set_random_stats(policy).to(device).eval()


def chunk_inputs(policy: VLAPolicy, device: str, batch_size: int = 1) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = random_batch(dict(policy.input_features), batch_size=batch_size, n_obs_steps=policy.config.n_obs_steps,
                         generator=g)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    noise = torch.randn(batch_size, policy.horizon, policy.action_dim, generator=g).to(device)
    return batch, noise


# --------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def latency(fn: Callable[[], object], device: str, calls: int, warmup: int) -> tuple[float, float]:
    """(median, p99) seconds of ``fn`` over ``calls`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), float(np.percentile(times, 99))


def weight_bytes_and_flops(policy: nn.Module, run: Callable[[], object]) -> tuple[int, float]:
    """Weight bytes (bf16) read by one ``run`` (each module call reads its own parameters once; embedding
    tables excluded) and the FLOPs torch's flop counter sees."""
    from torch.utils.flop_counter import FlopCounterMode

    total = [0]
    hooks = []
    for module in policy.modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own and not isinstance(module, nn.Embedding):
            hooks.append(module.register_forward_pre_hook(lambda *_, n=own: total.__setitem__(0, total[0] + 2 * n)))
    try:
        with FlopCounterMode(display=False) as counter:
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return total[0], float(counter.get_total_flops())


def device_peaks(device: str, tiny: bool) -> tuple[float, float]:
    """(copy bandwidth in bytes/s: read + write, bf16 matmul FLOP/s), measured here."""
    n_bytes = (64 if tiny else 1024) * 2**20
    x = torch.empty(n_bytes // 4, device=device)
    y = torch.empty_like(x)
    bw_time, _ = latency(lambda: y.copy_(x), device, calls=10, warmup=2)
    n = 512 if tiny else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_time, _ = latency(lambda: a @ b, device, calls=10, warmup=2)
    return 2 * n_bytes / bw_time, 2 * n**3 / mm_time


def train_step_time(policy: VLAPolicy, device: str, steps: int) -> float:
    """Median seconds of one bf16-autocast training step (forward, backward, AdamW) at batch 2."""
    policy.train()
    g = torch.Generator().manual_seed(0)
    batch = random_batch({**policy.input_features, **policy.output_features}, batch_size=2, horizon=policy.horizon,
                         n_obs_steps=policy.config.n_obs_steps, generator=g)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = policy(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return latency(step, device, calls=steps, warmup=2)[0]


# --------------------------------------------------------------------------- one family
def measure(family: str, args: argparse.Namespace, peaks: tuple[float, float], workdir: Path) -> dict:
    device, cuda = args.device, args.device.startswith("cuda")
    policy = build(policy_config(family, args.tiny, workdir), device)
    batch, noise = chunk_inputs(policy, device)
    run = functools.partial(policy.predict_action_chunk, batch, noise=noise)
    row: dict = {"family": family, "params": sum(p.numel() for p in policy.parameters()), "lerobot eager": None}
    reference = run()
    row["weight bytes"], row["flops"] = weight_bytes_and_flops(policy, run)
    row["ours eager"] = latency(run, device, args.calls, args.warmup)
    torch.compiler.reset()
    policy.compile(backend=args.backend)
    compiled = run()
    row["ours compiled"] = latency(run, device, args.calls, args.warmup)
    scale = reference.abs().max().item() or 1.0
    row["err compiled"] = (compiled - reference).abs().max().item() / scale
    if cuda:
        policy.compile("reduce-overhead", backend=args.backend)
        row["ours CUDA graph"] = latency(run, device, args.calls, args.warmup)
        policy.compile("reduce-overhead", backend=args.backend, dtype=torch.bfloat16)
    else:  # no CUDA graphs here: bf16 is measured compiled without them (for its error), not timed
        row["ours CUDA graph"] = None
        policy.compile(backend=args.backend, dtype=torch.bfloat16)
    bf16 = run()
    row["ours bf16+CUDA graph"] = latency(run, device, args.calls, args.warmup) if cuda else None
    row["err bf16"] = (bf16.float() - reference).abs().max().item() / scale
    bandwidth, peak = peaks
    row["floor"] = max(row["weight bytes"] / bandwidth, row["flops"] / peak)
    del run, policy  # free the weights (and CUDA graph pools) before the training step builds another
    torch.compiler.reset()
    if family in TRAINED and not args.no_train:
        row["train step bf16"] = train_step_time(build(policy_config(family, args.tiny, workdir), device), device,
                                                 args.train_steps)
    return row


def _ms(value: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value[0] * 1e3:.2f} / {value[1] * 1e3:.2f}"


def table(rows: list[dict], device_name: str) -> str:
    cols = ("lerobot eager", "ours eager", "ours compiled", "ours CUDA graph", "ours bf16+CUDA graph")
    lines = [f"batch-1 chunk latency, ms (median / p99), {device_name}",
             "| policy | params | " + " | ".join(cols) + " | floor ms | best / floor | max err compiled / bf16 |",
             "|" + " --- |" * (len(cols) + 5)]
    for r in rows:
        best = min(r[c][0] for c in cols if r[c] is not None)
        lines.append(f"| {r['family']} | {r['params'] / 1e6:.1f} M | " + " | ".join(_ms(r[c]) for c in cols)
                     + f" | {r['floor'] * 1e3:.3f} | {best / r['floor']:.1f} | {r['err compiled']:.1e} / "
                       f"{r['err bf16']:.1e} |")
    trained = [r for r in rows if "train step bf16" in r]
    if trained:
        lines += ["", "bf16 training step (batch 2), ms: ours | lerobot",
                  *(f"| {r['family']} | {r['train step bf16'] * 1e3:.1f} | n/a |" for r in trained)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (the goal) or cpu")
    parser.add_argument("--tiny", action="store_true", help="the components' tiny configs (a CPU smoke run)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (eager: fast CPU smoke run)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {list(FAMILIES)}")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timings")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; use --device cpu --tiny for a smoke run")
    families = args.families.split(",")
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"--families: unknown {sorted(unknown)}; expected names from {list(FAMILIES)}")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)"
    peaks = device_peaks(args.device, args.tiny)
    print(f"{name}: copy bandwidth {peaks[0] / 1e9:.1f} GB/s, bf16 matmul {peaks[1] / 1e12:.2f} TFLOP/s; "
          f"torch {torch.__version__}, backend {args.backend}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(KeyboardInterrupt):
        for family in families:
            t0 = time.perf_counter()
            rows.append(measure(family, args, peaks, Path(tmp)))
            print(f"{family}: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(table(rows, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
