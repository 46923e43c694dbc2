#!/usr/bin/env python3
"""pi0 (paligemma + pi0_flow) vs LeRobot 0.6.1's PI0Policy: inference and training-step time on CPU.

Run in the LeRobot 0.6.1 peer venv with this checkout's sources first on the path::

    PY=$(python benchmarks/peer_env.py lerobot-0.6.1)
    PYTHONPATH=packages/vla-core/src:packages/vla-backbones/src:packages/vla-heads/src:packages/vla-train/src \\
        $PY benchmarks/pi0_vs_lerobot.py

Both policies come from one reduced-depth config with FULL widths: 2 PaliGemma (Gemma 2B) layers,
2 expert (Gemma 300M) layers, 2 SigLIP So400m layers; 1 camera at 224x224, 48 language tokens,
chunk 50, 10 Euler steps. The vocabulary is cut from 257,152 to ``--vocab`` rows in both (the
embedding is a lookup, so this changes none of the measured compute, only ~3 GiB of memory).
Our policy shares LeRobot's parameter objects (the same weights, one copy in memory), and the
script checks that both predict the same chunk from the same noise before timing.

Measured: inference = ``predict_action_chunk`` at batch 1; train step = forward + backward + AdamW
step at batch 2 (each side has its own AdamW over the shared weights).
Prints median seconds and the ratio ours / LeRobot.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.pi0 import modeling_pi0
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.policies.pi0.modeling_pi0 import GemmaConfig, PI0Policy
from vla_core import VLAPolicy, apply_name_mapping
from vla_train.convert.lerobot_pi0 import NAME_MAPPING, policy_config

STATE_DIM = ACTION_DIM = 14
CAMERA = "observation.images.top"


def patch_lerobot(depth: int, vision_depth: int, vocab: int) -> None:
    """Full-width Gemma variants at ``depth`` layers; SigLIP at ``vision_depth`` layers; ``vocab`` rows."""
    paligemma_cls, expert_cls = modeling_pi0.PaliGemmaForConditionalGenerationWithPiGemma, modeling_pi0.PiGemmaForCausalLM
    variants = {
        "gemma_2b": GemmaConfig(width=2048, depth=depth, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
        "gemma_300m": GemmaConfig(width=1024, depth=depth, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    }

    def paligemma(config):
        config.vision_config.num_hidden_layers = vision_depth
        config.text_config.vocab_size = vocab
        return paligemma_cls(config=config)

    def expert(config):
        config.vocab_size = vocab
        return expert_cls(config=config)

    modeling_pi0.get_gemma_config = variants.__getitem__
    modeling_pi0.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
    modeling_pi0.PiGemmaForCausalLM = expert


def build(args) -> tuple[PI0Policy, VLAPolicy]:
    patch_lerobot(args.depth, args.vision_depth, args.vocab)
    config = PI0Config(
        input_features={
            CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 224, 224)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        normalization_mapping={"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.MEAN_STD,
                               "ACTION": NormalizationMode.MEAN_STD},
        chunk_size=50, n_action_steps=50, device="cpu",
    )
    torch.manual_seed(0)
    theirs = PI0Policy(config)
    lr_config = {**config.__dict__, "type": "pi0", "input_features": {k: {"type": f.type.value, "shape": list(f.shape)} for k, f in config.input_features.items()},
                 "output_features": {"action": {"type": "ACTION", "shape": [ACTION_DIM]}},
                 "normalization_mapping": {k: v.value for k, v in config.normalization_mapping.items()}}
    params = {k: v for k, v in theirs.state_dict(keep_vars=True).items() if "lm_head" not in k}
    ours = VLAPolicy(policy_config(lr_config, {k: v.detach() for k, v in params.items()}, None))
    ours.normalizer.set_stats({
        "observation.state": {"mean": torch.zeros(STATE_DIM), "std": torch.ones(STATE_DIM)},
        "action": {"mean": torch.zeros(ACTION_DIM), "std": torch.ones(ACTION_DIM)},
    })
    mapped = apply_name_mapping(params, NAME_MAPPING)
    missing, unexpected = ours.load_state_dict(mapped, strict=False, assign=True)  # shares LeRobot's Parameters
    assert not unexpected and all(k.startswith("normalizer.") for k in missing), (missing, unexpected)
    assert ours.head.layers[0].mlp.up_proj.weight is theirs.model.paligemma_with_expert.gemma_expert.model.layers[0].mlp.up_proj.weight
    return theirs, ours


def batch(b: int, vocab: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        CAMERA: torch.rand(b, 3, 224, 224, generator=g),
        "observation.state": torch.randn(b, STATE_DIM, generator=g),
        "action": torch.randn(b, 50, ACTION_DIM, generator=g),
        "observation.language.tokens": torch.randint(0, vocab, (b, 48), generator=g),
        "observation.language.attention_mask": torch.ones(b, 48, dtype=torch.bool),
    }


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def parse_args(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--vision-depth", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


def compare(label: str, args: argparse.Namespace, theirs, ours, make_batch) -> None:
    """Check both predict the same chunk from the same noise, then time inference (batch 1) and a train
    step (batch 2), interleaved, and print medians and ratios. ``make_batch(b, vocab, seed)``."""
    infer = {k: v for k, v in make_batch(1, args.vocab, 0).items() if k != "action"}
    noise = torch.randn(1, 50, 32, generator=torch.Generator().manual_seed(1))
    noise[..., ACTION_DIM:] = 0.0
    theirs.model.sample_noise = lambda shape, device: noise.clone()
    theirs.eval(), ours.eval()
    with torch.no_grad():
        diff = (ours.predict_action_chunk(infer, noise=noise[..., :ACTION_DIM]) - theirs.predict_action_chunk(infer)).abs().max()
    print(f"same weights, same noise: max |ours - lerobot| = {diff.item():.2e}")
    del theirs.model.sample_noise

    def run_ours():
        with torch.no_grad():
            ours.predict_action_chunk(infer, noise=noise[..., :ACTION_DIM])

    def run_theirs():
        with torch.no_grad():
            theirs.predict_action_chunk(infer)

    train = make_batch(2, args.vocab, 2)

    opt_ours = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)
    opt_theirs = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-5)

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(train).loss.backward()
        opt_ours.step()

    def step_theirs():
        theirs.zero_grad(set_to_none=True)
        theirs.forward(train)[0].backward()
        opt_theirs.step()

    results = {}
    for name, (a, b, mode) in {"inference (batch 1)": (run_ours, run_theirs, "eval"),
                               "train step (batch 2)": (step_ours, step_theirs, "train")}.items():
        getattr(ours, mode)(), getattr(theirs, mode)()
        a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            ta += timed(a, 1)
            tb += timed(b, 1)
        results[name] = (statistics.median(ta), statistics.median(tb))
    print(f"{label} vs LeRobot 0.6.1, CPU, {args.threads} threads, {args.depth}+{args.depth} Gemma layers, "
          f"{args.vision_depth} SigLIP layers, full widths, vocab {args.vocab}, {args.repeats} repeats")
    for name, (a, b) in results.items():
        print(f"{name:22s} ours {a:7.3f} s   lerobot {b:7.3f} s   ratio {a / b:.3f}")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    theirs, ours = build(args)
    compare("pi0", args, theirs, ours, batch)


if __name__ == "__main__":
    main()
