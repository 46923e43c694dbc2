"""LeRobot 0.6.x ``DiffusionPolicy`` dirs -> vla policies (``resnet_spatial_softmax`` + ``unet_diffusion``).

Weights are renamed by :data:`KEY_RENAMES` (regex -> replacement, applied in order: data, not code);
the tensor layouts are the same on both sides. Normalization stats come from LeRobot's processor
files (``policy_preprocessor*.json`` / ``policy_postprocessor*.json`` name a ``state_file`` per
normalizer step). Architecture facts are read from the tensors where they are there (widths,
keypoints, kernel size, FiLM scale, GroupNorm vs BatchNorm, one encoder per camera) and from
``config.json`` otherwise (GroupNorm groups, crop, noise schedule).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from vla_core import ConfigError, VLAPolicy, load_into, load_tensors

from vla_train.convert.lerobot import read_json, read_lerobot_stats

# LeRobot key (regex) -> vla key, applied in order to every key.
KEY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^diffusion\.rgb_encoder\.(\d+)\.", r"backbone.encoders.\1."),  # one encoder per camera
    (r"^diffusion\.rgb_encoder\.", "backbone.encoders.0."),  # one shared encoder
    (r"\.pool\.nets\.", ".pool.conv."),
    (r"^(backbone\.encoders\.\d+)\.out\.", r"\1.proj."),
    (r"^diffusion\.unet\.diffusion_step_encoder\.", "head.unet.step_encoder."),
    (r"^diffusion\.unet\.down_modules\.(\d+)\.0\.", r"head.unet.encoder.\1.res1."),
    (r"^diffusion\.unet\.down_modules\.(\d+)\.1\.", r"head.unet.encoder.\1.res2."),
    (r"^diffusion\.unet\.down_modules\.(\d+)\.2\.", r"head.unet.encoder.\1.downsample."),
    (r"^diffusion\.unet\.mid_modules\.", "head.unet.mid."),
    (r"^diffusion\.unet\.up_modules\.(\d+)\.0\.", r"head.unet.decoder.\1.res1."),
    (r"^diffusion\.unet\.up_modules\.(\d+)\.1\.", r"head.unet.decoder.\1.res2."),
    (r"^diffusion\.unet\.up_modules\.(\d+)\.2\.", r"head.unet.decoder.\1.upsample."),
    (r"^diffusion\.unet\.final_conv\.0\.", "head.unet.final_block."),
    (r"^diffusion\.unet\.final_conv\.1\.", "head.unet.final_proj."),
    (r"\.block\.0\.", ".conv."),
    (r"\.block\.1\.", ".norm."),
    (r"\.cond_encoder\.1\.", ".film."),
    (r"\.residual_conv\.", ".residual."),
)

NORMALIZATION_MODES = {
    "MEAN_STD": "mean_std",
    "MIN_MAX": "min_max",
    "QUANTILES": "quantile",
    "IDENTITY": "identity",
}
RESNET_DEPTHS = {
    (2, 2, 2, 2): "resnet18",
    (3, 4, 6, 3): "resnet34",
    (3, 4, 23, 3): "resnet101",
    (3, 8, 36, 3): "resnet152",
}


def rename_keys(tensors: Mapping[str, torch.Tensor], renames=KEY_RENAMES) -> dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` of ``renames`` to every key, in order."""
    out = {}
    for key, tensor in tensors.items():
        new = key
        for pattern, replacement in renames:
            new = re.sub(pattern, replacement, new)
        out[new] = tensor
    return out




def _resnet_name(tensors: Mapping[str, torch.Tensor], prefix: str) -> str:
    depths = tuple(
        len({k[len(f"{prefix}{i}.") :].split(".")[0] for k in tensors if k.startswith(f"{prefix}{i}.")})
        for i in (4, 5, 6, 7)
    )
    bottleneck = any(k.startswith(prefix) and ".conv3." in k for k in tensors)
    name = "resnet50" if bottleneck and depths == (3, 4, 6, 3) else RESNET_DEPTHS.get(depths)
    if name is None:
        raise ConfigError(f"unrecognised ResNet: residual blocks per stage {depths}")
    return name


def policy_config(lerobot: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Our policy config dict for a LeRobot diffusion ``config.json`` and its checkpoint tensors."""
    separate = any(k.startswith("diffusion.rgb_encoder.0.") for k in tensors)
    enc = "diffusion.rgb_encoder.0." if separate else "diffusion.rgb_encoder."
    unet = "diffusion.unet."
    n_levels = len({k.split(".")[3] for k in tensors if k.startswith(unet + "down_modules.")})
    down_dims = [tensors[f"{unet}down_modules.{i}.0.conv1.block.0.weight"].shape[0] for i in range(n_levels)]
    film_out = tensors[f"{unet}down_modules.0.0.cond_encoder.1.weight"].shape[0]
    modes = {}
    for ftype, mode in (lerobot.get("normalization_mapping") or {}).items():
        if mode not in NORMALIZATION_MODES:
            raise ConfigError(f"normalization_mapping[{ftype!r}]: mode {mode!r} has no vla equivalent")
        modes[ftype] = NORMALIZATION_MODES[mode]
    for feature in (*lerobot["input_features"].values(), *lerobot["output_features"].values()):
        modes.setdefault(feature["type"], "identity")  # LeRobot leaves unmapped feature types as they are
    crop = lerobot.get("crop_shape")
    resize = lerobot.get("resize_shape")
    backbone = {
        "type": "resnet_spatial_softmax",
        "vision_backbone": _resnet_name(tensors, enc + "backbone."),
        "use_group_norm": not any(k.startswith(enc) and k.endswith("running_mean") for k in tensors),
        "resize_shape": list(resize) if resize else None,
        "crop_shape": list(crop) if crop else None,
        "crop_is_random": bool(lerobot.get("crop_is_random", True)),
        "num_keypoints": tensors[enc + "pool.nets.weight"].shape[0],
        "separate_encoder_per_camera": separate,
    }
    head = {
        "type": "unet_diffusion",
        "horizon": lerobot["horizon"],
        "down_dims": down_dims,
        "kernel_size": tensors[f"{unet}down_modules.0.0.conv1.block.0.weight"].shape[-1],
        "n_groups": lerobot.get("n_groups", 8),
        "diffusion_step_embed_dim": tensors[f"{unet}diffusion_step_encoder.3.weight"].shape[0],
        "use_film_scale_modulation": film_out == 2 * down_dims[0],
        "do_mask_loss_for_padding": bool(lerobot.get("do_mask_loss_for_padding", False)),
    }
    for field in (
        "noise_scheduler_type",
        "num_train_timesteps",
        "num_inference_steps",
        "beta_schedule",
        "beta_start",
        "beta_end",
        "prediction_type",
        "clip_sample",
        "clip_sample_range",
    ):
        if field in lerobot:
            head[field] = lerobot[field]
    n_obs = lerobot.get("n_obs_steps", 2)
    return {
        "input_features": lerobot["input_features"],
        "output_features": lerobot["output_features"],
        "normalization": modes,
        "n_obs_steps": n_obs,
        "n_action_steps": lerobot.get("n_action_steps"),
        "action_start": n_obs - 1,  # LeRobot's action window starts at the first observation step
        "backbone": backbone,
        "head": head,
    }


def convert(src: Path, dst: Path) -> Path:
    """Convert the LeRobot diffusion policy directory ``src`` into a vla policy directory ``dst``."""
    src, dst = Path(src), Path(dst)
    lerobot = read_json(src / "config.json")
    if lerobot.get("type") != "diffusion":
        raise ConfigError(
            f"{src / 'config.json'}: expected a LeRobot 'diffusion' policy, received {lerobot.get('type')!r}"
        )
    tensors = load_tensors(src / "model.safetensors")
    policy = VLAPolicy(policy_config(lerobot, tensors))
    renamed = rename_keys(tensors)
    for part in ("backbone", "head"):
        load_into(
            getattr(policy, part),
            {k[len(part) + 1 :]: v for k, v in renamed.items() if k.startswith(part + ".")},
        )
    leftover = sorted(k for k in renamed if not k.startswith(("backbone.", "head.")))
    if leftover:
        raise ConfigError(f"{src}: checkpoint keys with no vla counterpart: {leftover[:10]}")
    policy.normalizer.set_stats(read_lerobot_stats(src))
    return policy.save_pretrained(dst)
