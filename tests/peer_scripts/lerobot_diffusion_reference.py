"""Peer script (LeRobot 0.6.1 venv): write tiny random DiffusionPolicy checkpoints and reference outputs.

Usage: python lerobot_diffusion_reference.py OUT_DIR

For each case it writes ``OUT_DIR/<case>/policy`` (LeRobot's own ``save_pretrained`` of the policy and of
its pre/post-processors, which hold the normalization stats) and ``OUT_DIR/<case>/reference.safetensors``:

- the raw inputs (``obs.*``), the initial ``noise`` and LeRobot's ``predict_action_chunk`` result
  ``chunk`` (robot units, the ``n_action_steps`` slice starting at ``n_obs_steps - 1``), sampled right
  after ``torch.manual_seed(1234)`` (DDPM's per-step noise comes from the global RNG);
- ``sample``: the whole normalized horizon (B, H, A) sampled from ``noise`` with per-step noise from
  ``torch.Generator().manual_seed(99)``;
- ``global_cond`` (B, G) from LeRobot's conditioning, and for a fixed noisy sample ``denoise_x``
  (B, H, A) the UNet output ``denoise_out.<t>`` at several timesteps ``t``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors
from safetensors.torch import save_file

CASES = {
    # PushT-like: one camera, GroupNorm, shared encoder, random crop (center crop at eval), DDIM.
    "pusht_ddim": {
        "cameras": 1,
        "image": (3, 64, 64),
        "state": 2,
        "env": None,
        "action": 2,
        "cfg": {
            "crop_shape": (56, 56),
            "use_group_norm": True,
            "use_separate_rgb_encoder_per_camera": False,
            "noise_scheduler_type": "DDIM",
            "num_inference_steps": 5,
            "prediction_type": "epsilon",
        },
    },
    # Two cameras with one encoder each, BatchNorm (eval statistics), no crop, environment state, DDPM.
    "two_cam_ddpm": {
        "cameras": 2,
        "image": (3, 40, 48),
        "state": 3,
        "env": 4,
        "action": 3,
        "cfg": {
            "crop_shape": None,
            "use_group_norm": False,
            "use_separate_rgb_encoder_per_camera": True,
            "noise_scheduler_type": "DDPM",
            "num_inference_steps": None,
            "prediction_type": "sample",
            "clip_sample_range": 1.5,
        },
    },
}


def build(case: dict, seed: int) -> tuple[DiffusionPolicy, dict]:
    torch.manual_seed(seed)
    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (case["state"],))}
    for i in range(case["cameras"]):
        inputs[f"observation.images.cam{i}"] = PolicyFeature(FeatureType.VISUAL, case["image"])
    if case["env"]:
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (case["env"],))
    outputs = {"action": PolicyFeature(FeatureType.ACTION, (case["action"],))}
    config = DiffusionConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        n_obs_steps=2,
        horizon=16,
        n_action_steps=8,
        pretrained_backbone_weights=None,
        spatial_softmax_num_keypoints=8,
        down_dims=(16, 32, 64),
        kernel_size=5,
        n_groups=8,
        diffusion_step_embed_dim=32,
        num_train_timesteps=50,
        **case["cfg"],
    )
    policy = DiffusionPolicy(config)
    # Random (non-default) weights everywhere, BatchNorm running stats included.
    with torch.no_grad():
        for name, p in policy.named_parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in policy.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
    stats = {}
    for key, feat in {**inputs, **outputs}.items():
        shape = (feat.shape[0], 1, 1) if feat.type is FeatureType.VISUAL else feat.shape
        low = torch.randn(shape)
        stats[key] = {
            "mean": low,
            "std": 0.5 + torch.rand(shape),
            "min": low - 1 - torch.rand(shape),
            "max": low + 1 + torch.rand(shape),
        }
    return policy.eval(), stats


def main(out: Path) -> None:
    for index, (name, case) in enumerate(CASES.items()):
        policy, stats = build(case, seed=index)
        pre, post = make_diffusion_pre_post_processors(policy.config, dataset_stats=stats)
        policy_dir = out / name / "policy"
        policy.save_pretrained(policy_dir)
        pre.save_pretrained(policy_dir)
        post.save_pretrained(policy_dir)

        g = torch.Generator().manual_seed(100 + index)
        bsz, t_obs = 2, policy.config.n_obs_steps
        raw = {}
        for key, feat in policy.config.input_features.items():
            shape = (bsz, t_obs, *feat.shape)
            raw[key] = (
                torch.rand(shape, generator=g)
                if feat.type is FeatureType.VISUAL
                else torch.randn(shape, generator=g)
            )
        noise = torch.randn(bsz, policy.config.horizon, case["action"], generator=g)

        batch = pre(dict(raw))
        policy.reset()
        with torch.no_grad():
            torch.manual_seed(1234)  # DDPM draws its per-step noise from the global RNG
            chunk = post(policy.predict_action_chunk(dict(batch), noise=noise.clone()))
            stacked = dict(batch)
            stacked["observation.images"] = torch.stack(
                [batch[k] for k in policy.config.image_features], dim=-4
            )
            global_cond = policy.diffusion._prepare_global_conditioning(stacked)
            # the whole normalized horizon, per-step (DDPM) noise from an explicit generator
            sample = policy.diffusion.conditional_sample(
                bsz, global_cond=global_cond, noise=noise.clone(), generator=torch.Generator().manual_seed(99)
            )
            x = torch.randn(bsz, policy.config.horizon, case["action"], generator=g)
            tensors = {f"obs.{k}": v.contiguous() for k, v in raw.items()}
            tensors.update(
                noise=noise, chunk=chunk.contiguous(), sample=sample, global_cond=global_cond, denoise_x=x
            )
            steps = [0, 7, 23, 49]
            for t in steps:
                out_t = policy.diffusion.unet(
                    x, torch.full((bsz,), t, dtype=torch.long), global_cond=global_cond
                )
                tensors[f"denoise_out.{t}"] = out_t.contiguous()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / name / "reference.safetensors"))
        (out / name / "case.json").write_text(json.dumps({"steps": steps, "cameras": case["cameras"]}))
        print(name, "chunk", tuple(chunk.shape), "global_cond", tuple(global_cond.shape))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
