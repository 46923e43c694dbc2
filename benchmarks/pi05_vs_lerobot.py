#!/usr/bin/env python3
"""pi0.5 (paligemma + pi05_flow) vs LeRobot 0.6.1's PI05Policy: inference and training-step time on CPU.

Run in the LeRobot 0.6.1 peer venv with this checkout's sources first on the path::

    PY=$(python benchmarks/peer_env.py lerobot-0.6.1)
    PYTHONPATH=packages/vla-core/src:packages/vla-backbones/src:packages/vla-heads/src:packages/vla-train/src \\
        $PY benchmarks/pi05_vs_lerobot.py

Both policies come from one reduced-depth config with FULL widths: 2 PaliGemma (Gemma 2B) layers,
2 expert (Gemma 300M, adaptive-RMSNorm) layers, 2 SigLIP So400m layers; 1 camera at 224x224, a
200-token prompt (pi0.5's budget; pre-tokenized, as LeRobot's processor hands it over, so the state
is already in it), chunk 50, 10 Euler steps. The vocabulary is cut from 257,152 to ``--vocab`` rows in both (the
embedding is a lookup, so this changes none of the measured compute, only ~3 GiB of memory).
Our policy shares LeRobot's parameter objects (the same weights, one copy in memory), and the
script checks that both predict the same chunk from the same noise before timing.

Measured: inference = ``predict_action_chunk`` at batch 1; train step = forward + backward + AdamW
step at batch 2 (each side has its own AdamW over the shared weights).
Prints median seconds and the ratio ours / LeRobot.
"""

from __future__ import annotations

import dataclasses

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.pi05 import modeling_pi05
from lerobot.policies.pi05.configuration_pi05 import PI05Config
from lerobot.policies.pi05.modeling_pi05 import GemmaConfig, PI05Policy
from pi0_vs_lerobot import compare, parse_args  # same directory: the shared timing harness
from vla_core import VLAPolicy, apply_name_mapping
from vla_train.convert.lerobot_pi05 import NAME_MAPPING, policy_config

STATE_DIM = ACTION_DIM = 14
CAMERA = "observation.images.top"
TOKENS, PROMPT = 200, 60  # pi0.5's token budget; a task plus 14 state bins fills about 60 of it


def patch_lerobot(depth: int, vision_depth: int, vocab: int) -> None:
    """Full-width Gemma variants at ``depth`` layers; SigLIP at ``vision_depth`` layers; ``vocab`` rows."""
    paligemma_cls, expert_cls = modeling_pi05.PaliGemmaForConditionalGenerationWithPiGemma, modeling_pi05.PiGemmaForCausalLM
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

    modeling_pi05.get_gemma_config = variants.__getitem__
    modeling_pi05.PaliGemmaForConditionalGenerationWithPiGemma = paligemma
    modeling_pi05.PiGemmaForCausalLM = expert


def build(args) -> tuple[PI05Policy, VLAPolicy]:
    patch_lerobot(args.depth, args.vision_depth, args.vocab)
    config = PI05Config(
        input_features={
            CAMERA: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 224, 224)),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(STATE_DIM,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(ACTION_DIM,))},
        chunk_size=50, n_action_steps=50, device="cpu",
    )
    torch.manual_seed(0)
    theirs = PI05Policy(config)
    known = {f.name for f in dataclasses.fields(PI05Config)}
    lr_config = {**{k: v for k, v in config.__dict__.items() if k in known}, "type": "pi05", "input_features": {k: {"type": f.type.value, "shape": list(f.shape)} for k, f in config.input_features.items()},
                 "output_features": {"action": {"type": "ACTION", "shape": [ACTION_DIM]}},
                 "normalization_mapping": {k: v.value for k, v in config.normalization_mapping.items()}}
    params = {k: v for k, v in theirs.state_dict(keep_vars=True).items() if "lm_head" not in k}
    ours = VLAPolicy(policy_config(lr_config, {k: v.detach() for k, v in params.items()}, None))
    ours.normalizer.set_stats({  # quantile (pi0.5's default) with q01 = -1, q99 = 1: the identity
        "observation.state": {"q01": -torch.ones(STATE_DIM), "q99": torch.ones(STATE_DIM)},
        "action": {"q01": -torch.ones(ACTION_DIM), "q99": torch.ones(ACTION_DIM)},
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
        "observation.language.tokens": torch.randint(0, vocab, (b, TOKENS), generator=g),
        "observation.language.attention_mask": torch.arange(TOKENS)[None].expand(b, -1) < PROMPT,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    theirs, ours = build(args)
    compare("pi0.5", args, theirs, ours, batch)


if __name__ == "__main__":
    main()
