#!/usr/bin/env python3
"""Diffusion Policy (PushT config): ours (``resnet_spatial_softmax`` + ``unet_diffusion``) vs LeRobot 0.6.1.

Runs in the LeRobot peer venv, both models in one process with the same weights (LeRobot's random
init, renamed by our converter's key table) and the same inputs::

    OMP_NUM_THREADS=2 .venvs/lerobot-0.6.1/bin/python benchmarks/diffusion_vs_lerobot.py [--repeats N]

Cases: DDIM 10-step sampling at batch 1, DDPM 100-step sampling at batch 1 (sampled chunks
compared: max |ours - LeRobot|), then a training step at batch 8 (forward + backward + optimizer
step, and forward + backward alone). ``--cases`` picks a subset. The two sides run alternately
(ours, LeRobot, LeRobot, ours, ...) so that load from other processes hits both alike. Each case
prints the median wall seconds of both, the median of the per-round ratios ours / LeRobot
(``ratio``), the ratio of the best rounds (``best``: the least disturbed by other load), the ratio of
the median process CPU times (``cpu``: time the process ran, not time it waited for a core; with
several threads it includes their spin-waits), and the achieved FLOP/s as a fraction of this
machine's fp32 matmul peak (measured first with a large ``torch.mm``). The FLOPs of a case are
LeRobot's model FLOPs (the useful work, counted once by ``torch.utils.flop_counter``) for both, so
the fractions compare like with like.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
import warnings

import torch

THREADS = 2


CASES = ("ddim", "ddpm", "train")


def paired_times(ours, theirs, repeats: int, warmup: int = 1) -> tuple[float, float, float, float, float]:
    """``ours`` and ``theirs`` run alternately (ABBA order). Returns the median wall seconds of each,
    the median of the rounds' wall-time ratios, the ratio of the best rounds, and the ratio of the
    median process CPU times (less sensitive to other processes' load than wall time)."""
    for _ in range(warmup):
        ours()
        theirs()
    wall: tuple[list, list] = ([], [])
    cpu: tuple[list, list] = ([], [])
    for r in range(repeats):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            start, start_cpu = time.perf_counter(), time.process_time()
            (ours, theirs)[i]()
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    (w_ours, w_theirs), (c_ours, c_theirs) = wall, cpu
    return (
        statistics.median(w_ours),
        statistics.median(w_theirs),
        statistics.median(a / b for a, b in zip(w_ours, w_theirs)),
        min(w_ours) / min(w_theirs),
        statistics.median(c_ours) / statistics.median(c_theirs),
    )


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of a size x size x size torch.mm."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(median_time(lambda: torch.mm(a, b), 1, warmup=0) for _ in range(repeats))
    return 2 * size**3 / best


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_lerobot():
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    config = DiffusionConfig(
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (2,)),
            "observation.image": PolicyFeature(FeatureType.VISUAL, (3, 96, 96)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
        device="cpu",
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        crop_shape=(84, 84),
        pretrained_backbone_weights=None,
        use_group_norm=True,
        use_separate_rgb_encoder_per_camera=False,
        down_dims=(512, 1024, 2048),
    )
    return DiffusionPolicy(config)


def build_ours(lerobot_policy):
    """Our policy with LeRobot's weights; identity-like stats, so outputs compare directly."""
    import vla_backbones.resnet_spatial_softmax  # noqa: F401  (registers the backbone without entry points)
    import vla_heads.unet_diffusion  # noqa: F401
    from vla_core import VLAPolicy, load_into
    from vla_train.convert.lerobot_diffusion import policy_config, rename_keys

    tensors = {k: v.detach().clone() for k, v in lerobot_policy.state_dict().items()}
    config = policy_config(
        lerobot_policy.config.__dict__
        | {
            "input_features": {
                "observation.state": {"type": "STATE", "shape": [2]},
                "observation.image": {"type": "VISUAL", "shape": [3, 96, 96]},
            },
            "output_features": {"action": {"type": "ACTION", "shape": [2]}},
            "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
        },
        tensors,
    )
    policy = VLAPolicy(config)
    renamed = rename_keys(tensors)
    for part in ("backbone", "head"):
        load_into(
            getattr(policy, part),
            {k[len(part) + 1 :]: v for k, v in renamed.items() if k.startswith(part + ".")},
        )
    policy.normalizer.set_stats(
        {
            "observation.image": {"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
            "observation.state": {"min": -torch.ones(2), "max": torch.ones(2)},
            "action": {"min": -torch.ones(2), "max": torch.ones(2)},
        }
    )
    return policy


def batch(size: int, generator: torch.Generator, with_action: bool) -> dict[str, torch.Tensor]:
    out = {
        "observation.state": torch.randn(size, 2, 2, generator=generator),
        "observation.image": torch.rand(size, 2, 3, 96, 96, generator=generator),
    }
    if with_action:
        out["action"] = torch.randn(size, 16, 2, generator=generator).clamp(-1, 1)
        out["action_is_pad"] = torch.zeros(size, 16, dtype=torch.bool)
    return out


def set_sampler(theirs, ours, kind: str, steps: int) -> None:
    from lerobot.policies.diffusion.modeling_diffusion import _make_noise_scheduler

    c = theirs.config
    theirs.diffusion.noise_scheduler = _make_noise_scheduler(
        kind,
        num_train_timesteps=c.num_train_timesteps,
        beta_start=c.beta_start,
        beta_end=c.beta_end,
        beta_schedule=c.beta_schedule,
        clip_sample=c.clip_sample,
        clip_sample_range=c.clip_sample_range,
        prediction_type=c.prediction_type,
    )
    theirs.diffusion.num_inference_steps = steps
    ours.head.use_scheduler(kind, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    warnings.filterwarnings("ignore")
    import lerobot

    peak = matmul_peak()
    print(
        f"# diffusion_vs_lerobot  {datetime.date.today()}  {platform.processor() or platform.machine()}  "
        f"threads={args.threads}  torch={torch.__version__}  lerobot={lerobot.__version__}"
    )
    print(f"# fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (2048^3 torch.mm, best of 5)")

    torch.manual_seed(0)
    theirs = build_lerobot()
    ours = build_ours(theirs)
    g = torch.Generator().manual_seed(0)
    rows = []

    # ---- sampling, batch 1
    for model in (theirs, ours):
        model.eval()
    obs = batch(1, g, with_action=False)
    noise = torch.randn(1, 16, 2, generator=g)
    samplers = [(k.upper(), n) for k, n in (("ddim", 10), ("ddpm", 100)) if k in args.cases]
    for kind, steps in samplers:

        def sample_theirs():
            theirs.reset()
            return theirs.predict_action_chunk(dict(obs), noise=noise.clone())

        def sample_ours():  # DDPM's per-step noise from the global RNG, as LeRobot draws it
            return ours.predict_action_chunk(obs, noise=noise.clone(), generator=torch.default_generator)

        with torch.no_grad():  # model FLOPs of n steps = encoder + n * UNet, from runs of 1 and 2 steps
            set_sampler(theirs, ours, kind, 1)
            one = count_flops(sample_theirs)
            set_sampler(theirs, ours, kind, 2)
            unet = count_flops(sample_theirs) - one
            flops = one + (steps - 1) * unet
        set_sampler(theirs, ours, kind, steps)
        torch.manual_seed(1)
        a = sample_theirs()
        torch.manual_seed(1)
        b = sample_ours()[:, ours.config.action_start : ours.config.action_start + ours.n_action_steps]
        rows.append(
            (
                f"{kind} {steps}-step sampling (B=1)",
                *paired_times(sample_ours, sample_theirs, args.repeats),
                flops,
                (a - b).abs().max().item(),
            )
        )
    if "train" in args.cases:
        rows += train_rows(theirs, ours, g, args.repeats)
    print(
        f"{'case':34s} {'ours_s':>9s} {'lerobot_s':>9s} {'ratio':>6s} {'best':>6s} {'cpu':>6s} {'GFLOP':>7s} "
        f"{'ours_peak%':>10s} {'lerobot_peak%':>13s}  max|diff|"
    )
    for name, ours_s, theirs_s, ratio, best, cpu, flops, diff in rows:
        print(
            f"{name:34s} {ours_s:9.4f} {theirs_s:9.4f} {ratio:6.3f} {best:6.3f} {cpu:6.3f} {flops / 1e9:7.2f} "
            f"{100 * flops / ours_s / peak:9.1f}% {100 * flops / theirs_s / peak:12.1f}%  "
            f"{'-' if diff is None else f'{diff:.2e}'}"
        )


def train_rows(theirs, ours, g: torch.Generator, repeats: int) -> list[tuple]:
    """Training step at batch 8: with each library's optimizer, and forward + backward alone."""
    from vla_train.config import OptimConfig
    from vla_train.optim import build_optimizer

    train_batch = batch(8, g, with_action=True)
    for model in (theirs, ours):
        model.train()
    # Each library's optimizer as its own trainer builds it, with LeRobot's PushT hyper-parameters:
    # LeRobot's Adam preset, vla_train's AdamW (fused kernel on CPU / CUDA).
    opt_theirs = theirs.config.get_optimizer_preset().build(theirs.parameters())
    opt_ours = build_optimizer(ours, OptimConfig(lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6))

    def step_theirs():
        loss, _ = theirs.forward(dict(train_batch))
        loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    def step_ours():
        ours(train_batch).loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    flops = count_flops(lambda: theirs.forward(dict(train_batch))[0].backward())
    opt_theirs.zero_grad(set_to_none=True)
    rows = [
        ("train step (B=8, fwd+bwd+optimizer)", *paired_times(step_ours, step_theirs, repeats), flops, None)
    ]

    def grads_theirs():
        theirs.forward(dict(train_batch))[0].backward()
        theirs.zero_grad(set_to_none=True)

    def grads_ours():
        ours(train_batch).loss.backward()
        ours.zero_grad(set_to_none=True)

    rows.append(
        ("train fwd+bwd (B=8, no optimizer)", *paired_times(grads_ours, grads_theirs, repeats), flops, None)
    )
    return rows


if __name__ == "__main__":
    main()
