"""LeRobot 0.6.x ACT policy directory -> vla policy (``resnet_act`` backbone + ``act_vae`` head).

Reads ``config.json`` (features, normalization modes, chunk size, head count, dropout ...),
``model.safetensors`` (weights; widths, depths, the latent size and the ResNet variant are read
from tensor shapes) and the normalizer step of ``policy_preprocessor.json`` with its
``*.safetensors`` stats file. Weights are renamed by :data:`NAME_MAPPING` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_into, load_tensors

from vla_train.convert.lerobot import count_indices, read_json, read_lerobot_stats

# ours <- theirs (vla_core.load_into's ``name_mapping``): whole dotted prefixes.
NAME_MAPPING: dict[str, str] = {
    "backbone.resnet": "model.backbone",
    "backbone.proj": "model.encoder_img_feat_input_proj",
    "head.vae_encoder": "model.vae_encoder",
    "head.vae_cls_embed": "model.vae_encoder_cls_embed",
    "head.vae_state_proj": "model.vae_encoder_robot_state_input_proj",
    "head.vae_action_proj": "model.vae_encoder_action_input_proj",
    "head.vae_latent_proj": "model.vae_encoder_latent_output_proj",
    "head.vae_pos_embed": "model.vae_encoder_pos_enc",
    "head.latent_proj": "model.encoder_latent_input_proj",
    "head.state_proj": "model.encoder_robot_state_input_proj",
    "head.env_state_proj": "model.encoder_env_state_input_proj",
    "head.token_pos_embed": "model.encoder_1d_feature_pos_embed",
    "head.encoder": "model.encoder",
    "head.decoder": "model.decoder",
    "head.query_pos_embed": "model.decoder_pos_embed",
    "head.action_proj": "model.action_head",
}

NORM_MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity", "QUANTILES": "quantile"}

# (blocks per stage, bottleneck, layer1.0.conv2 weight shape) -> torchvision variant.
RESNET_SIGNATURES = {
    ((2, 2, 2, 2), False, (64, 64, 3, 3)): "resnet18",
    ((3, 4, 6, 3), False, (64, 64, 3, 3)): "resnet34",
    ((3, 4, 6, 3), True, (64, 64, 3, 3)): "resnet50",
    ((3, 4, 23, 3), True, (64, 64, 3, 3)): "resnet101",
    ((3, 8, 36, 3), True, (64, 64, 3, 3)): "resnet152",
    ((3, 4, 6, 3), True, (128, 4, 3, 3)): "resnext50_32x4d",
    ((3, 4, 23, 3), True, (256, 8, 3, 3)): "resnext101_32x8d",
    ((3, 4, 23, 3), True, (256, 4, 3, 3)): "resnext101_64x4d",
    ((3, 4, 6, 3), True, (128, 128, 3, 3)): "wide_resnet50_2",
    ((3, 4, 23, 3), True, (128, 128, 3, 3)): "wide_resnet101_2",
}




def resnet_variant(tensors: dict[str, torch.Tensor], prefix: str = "model.backbone") -> str:
    """The torchvision ResNet variant whose layout the ``prefix.*`` tensors have."""
    blocks = tuple(count_indices(tensors, f"{prefix}.layer{i}") for i in range(1, 5))
    bottleneck = f"{prefix}.layer1.0.conv3.weight" in tensors
    conv2 = tuple(tensors[f"{prefix}.layer1.0.conv2.weight"].shape)
    try:
        return RESNET_SIGNATURES[(blocks, bottleneck, conv2)]
    except KeyError:
        raise CheckpointError(
            f"{prefix}: no torchvision ResNet has {blocks} blocks per stage, bottleneck={bottleneck} and "
            f"layer1.0.conv2 {conv2}"
        ) from None


def policy_config(lr_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Our VLAPolicy config dict from LeRobot's ``config.json`` and the checkpoint's tensor shapes."""
    modes = {}
    for ftype, mode in (lr_config.get("normalization_mapping") or {}).items():
        if mode not in NORM_MODES:
            raise ConfigError(f"LeRobot normalization mode {mode!r} for {ftype} has no vla equivalent "
                              f"(supported: {sorted(NORM_MODES)})")
        modes[ftype] = NORM_MODES[mode]
    has_images = "model.encoder_img_feat_input_proj.weight" in tensors
    if not has_images:
        raise ConfigError("the LeRobot ACT checkpoint has no image backbone; resnet_act needs at least one camera")
    dim_model = tensors["model.encoder_img_feat_input_proj.weight"].shape[0]
    use_vae = "model.vae_encoder_latent_output_proj.weight" in tensors
    backbone = {
        "type": "resnet_act",
        "variant": resnet_variant(tensors),
        "dim_model": int(dim_model),
        "frozen_bn": True,
        "replace_final_stride_with_dilation": bool(lr_config.get("replace_final_stride_with_dilation", False)),
    }
    head = {
        "type": "act_vae",
        "horizon": int(tensors["model.decoder_pos_embed.weight"].shape[0]),
        "dim_model": int(dim_model),
        "n_heads": int(lr_config.get("n_heads", 8)),
        "dim_feedforward": int(tensors["model.encoder.layers.0.linear1.weight"].shape[0]),
        "activation": lr_config.get("feedforward_activation", "relu"),
        "pre_norm": "model.encoder.norm.weight" in tensors,
        "n_encoder_layers": count_indices(tensors, "model.encoder.layers"),
        "n_decoder_layers": count_indices(tensors, "model.decoder.layers"),
        "use_vae": use_vae,
        "latent_dim": int(tensors["model.encoder_latent_input_proj.weight"].shape[1]),
        "n_vae_encoder_layers": count_indices(tensors, "model.vae_encoder.layers") if use_vae else 0,
        "dropout": float(lr_config.get("dropout", 0.1)),
        "kl_weight": float(lr_config.get("kl_weight", 10.0)),
    }
    feats = lambda d: {k: {"type": v["type"], "shape": list(v["shape"])} for k, v in d.items()}
    return {
        "input_features": feats(lr_config["input_features"]),
        "output_features": feats(lr_config["output_features"]),
        "backbone": backbone,
        "head": head,
        "normalization": modes,
        "n_obs_steps": int(lr_config.get("n_obs_steps", 1)),
        "n_action_steps": int(lr_config.get("n_action_steps") or head["horizon"]),
        "temporal_ensemble_coeff": lr_config.get("temporal_ensemble_coeff"),
    }




def convert(src: Path, dst: Path) -> Path:
    """Convert the LeRobot ACT directory ``src`` into a vla policy directory ``dst``; returns ``dst``."""
    src, dst = Path(src), Path(dst)
    lr_config = read_json(src / "config.json")
    if lr_config.get("type") != "act":
        raise ConfigError(f"{src}/config.json: expected LeRobot policy type 'act', received {lr_config.get('type')!r}")
    tensors = load_tensors(src / "model.safetensors")
    policy = VLAPolicy(policy_config(lr_config, tensors))
    stats = read_lerobot_stats(src)
    own = policy.state_dict()
    normalizer = {k: v for k, v in own.items() if k.startswith("normalizer.")}
    policy.normalizer.set_stats(stats)
    # The normalizer's buffers are set from the processor stats; the rest must match the mapping exactly.
    load_into(policy, {**tensors, **{k: policy.state_dict()[k] for k in normalizer}}, name_mapping=NAME_MAPPING)
    return policy.save_pretrained(dst)
