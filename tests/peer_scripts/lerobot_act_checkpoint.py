"""Peer script (LeRobot 0.6.1 venv): write a tiny random ACT policy the way LeRobot saves it.

Usage: python lerobot_act_checkpoint.py OUT_DIR [--seed N] [--cameras N] [--env-state] [--no-vae] [--pre-norm]

Writes OUT_DIR/policy (``ACTPolicy.save_pretrained`` plus the pre/post-processors holding random
normalization stats), OUT_DIR/batch.safetensors (a raw, un-normalized batch) and
OUT_DIR/expected.safetensors (``actions``: the un-normalized ``predict_action_chunk`` output,
preprocessor -> policy -> postprocessor, in eval mode).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.act.processor_act import make_act_pre_post_processors


def tiny_config(n_cameras: int, env_state: bool, use_vae: bool, pre_norm: bool) -> ACTConfig:
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(6,))}
    if env_state:
        inputs["observation.environment_state"] = PolicyFeature(type=FeatureType.ENV, shape=(5,))
    for i in range(n_cameras):
        inputs[f"observation.images.cam{i}"] = PolicyFeature(type=FeatureType.VISUAL, shape=(3, 64, 96))
    return ACTConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(4,))},
        normalization_mapping={
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MEAN_STD,
            "ENV": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MEAN_STD,
        },
        chunk_size=10,
        n_action_steps=10,
        vision_backbone="resnet18",
        pretrained_backbone_weights=None,
        dim_model=64,
        n_heads=4,
        dim_feedforward=96,
        n_encoder_layers=2,
        n_decoder_layers=1,
        n_vae_encoder_layers=2,
        latent_dim=8,
        use_vae=use_vae,
        pre_norm=pre_norm,
        device="cpu",
    )


def randomize(policy: ACTPolicy, g: torch.Generator) -> None:
    """Random weights everywhere, FrozenBatchNorm buffers included (they start as identity)."""
    with torch.no_grad():
        for name, t in policy.state_dict().items():
            if name.endswith("vae_encoder_pos_enc"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 / max(1, t.shape[-1]) ** 0.5 if t.dim() > 1 else 0.1))


def random_stats(config: ACTConfig, g: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    stats = {}
    features = {**config.input_features, **config.output_features}
    for key, f in features.items():
        shape = (f.shape[0], 1, 1) if f.type is FeatureType.VISUAL else f.shape
        mean = torch.randn(shape, generator=g) * 0.2
        std = torch.rand(shape, generator=g) + 0.5
        stats[key] = {"mean": mean, "std": std, "min": mean - 2, "max": mean + 1 + torch.rand(shape, generator=g)}
    return stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cameras", type=int, default=1)
    ap.add_argument("--env-state", action="store_true")
    ap.add_argument("--no-vae", action="store_true")
    ap.add_argument("--pre-norm", action="store_true")
    ap.add_argument("--batch-size", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    config = tiny_config(a.cameras, a.env_state, not a.no_vae, a.pre_norm)
    policy = ACTPolicy(config)
    randomize(policy, g)
    policy.eval()
    stats = random_stats(config, g)
    pre, post = make_act_pre_post_processors(config, dataset_stats=stats)
    policy_dir = a.out / "policy"
    policy.save_pretrained(policy_dir)
    pre.save_pretrained(policy_dir)
    post.save_pretrained(policy_dir)

    batch = {}
    for key, f in config.input_features.items():
        if f.type is FeatureType.VISUAL:
            batch[key] = torch.rand(a.batch_size, *f.shape, generator=g)
        else:
            batch[key] = torch.randn(a.batch_size, *f.shape, generator=g)
    with torch.no_grad():
        actions = post(policy.predict_action_chunk(pre(dict(batch))))
    save_file({k: v.contiguous() for k, v in batch.items()}, str(a.out / "batch.safetensors"))
    save_file({"actions": actions.contiguous()}, str(a.out / "expected.safetensors"))
    print(f"wrote {policy_dir} and reference actions {tuple(actions.shape)}")


if __name__ == "__main__":
    main()
