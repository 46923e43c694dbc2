"""LeRobot 0.6.x pi0 policy directory -> vla policy (``paligemma`` backbone + ``pi0_flow`` head).

Reads ``config.json`` (features, normalization modes, chunk size, flow settings), ``model.safetensors``
(weights; every width, depth, vocabulary and image size is read from tensor shapes, since LeRobot's
config only names the Gemma variants) and the normalizer step of ``policy_preprocessor.json`` with its
``*.safetensors`` stats. Weights are renamed by :data:`NAME_MAPPING` alone; both unused ``lm_head``
matrices are dropped.

Head counts cannot be read from shapes (heads x head dim is one number): LeRobot's pi0 hard-codes 8
query heads in its joint attention and builds SigLIP with PaliGemma's 16 heads, so those are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_into, load_tensors

from vla_train.convert.lerobot import count_indices, read_json, read_lerobot_stats

PALIGEMMA = "model.paligemma_with_expert.paligemma.model"
EXPERT = "model.paligemma_with_expert.gemma_expert.model"

# ours <- theirs (vla_core.load_into's ``name_mapping``): whole dotted prefixes.
NAME_MAPPING: dict[str, str] = {
    "backbone.vision_tower": f"{PALIGEMMA}.vision_tower",
    "backbone.multi_modal_projector": f"{PALIGEMMA}.multi_modal_projector",
    "backbone.language_model": f"{PALIGEMMA}.language_model",
    "head.layers": f"{EXPERT}.layers",
    "head.norm": f"{EXPERT}.norm",
    "head.state_proj": "model.state_proj",
    "head.action_in_proj": "model.action_in_proj",
    "head.action_out_proj": "model.action_out_proj",
    "head.action_time_mlp_in": "model.action_time_mlp_in",
    "head.action_time_mlp_out": "model.action_time_mlp_out",
}
# Unused by pi0: the PaliGemma LM head (tied to the embedding) and the expert's LM head.
DROPPED = ("model.paligemma_with_expert.paligemma.lm_head.weight", "model.paligemma_with_expert.gemma_expert.lm_head.weight")
# Renamed in older openpi-derived checkpoints (LeRobot's _fix_pytorch_state_dict_keys does the same).
LEGACY_NAMES = {"model.time_mlp_in.": "model.action_time_mlp_in.", "model.time_mlp_out.": "model.action_time_mlp_out."}

TEXT_HEADS = 8  # LeRobot's compute_layer_complete reshapes to 8 heads
VISION_HEADS = 16  # PaliGemma's SigLIP So400m default, which LeRobot never changes
NORM_MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity", "QUANTILES": "quantile"}


def _shape(tensors: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in tensors:
        raise CheckpointError(f"LeRobot pi0 / pi05 checkpoint lacks {key!r}")
    return tuple(tensors[key].shape)


def gemma_dims(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    """width, depth, mlp_dim, num_heads, num_kv_heads and head_dim of the Gemma stack at ``prefix``."""
    depth = count_indices(tensors, f"{prefix}.layers")
    q_out, width = _shape(tensors, f"{prefix}.layers.0.self_attn.q_proj.weight")
    k_out = _shape(tensors, f"{prefix}.layers.0.self_attn.k_proj.weight")[0]
    head_dim = q_out // TEXT_HEADS
    return {
        "width": width, "depth": depth, "mlp_dim": _shape(tensors, f"{prefix}.layers.0.mlp.gate_proj.weight")[0],
        "num_heads": TEXT_HEADS, "num_kv_heads": k_out // head_dim, "head_dim": head_dim,
    }


def siglip_dims(tensors: dict[str, torch.Tensor], image_size: int) -> dict[str, int]:
    prefix = f"{PALIGEMMA}.vision_tower.vision_model"
    vision_width, _, patch, _ = _shape(tensors, f"{prefix}.embeddings.patch_embedding.weight")
    positions = _shape(tensors, f"{prefix}.embeddings.position_embedding.weight")[0]
    if (image_size // patch) ** 2 != positions:
        raise CheckpointError(
            f"image_resolution {image_size} with patch {patch} gives {(image_size // patch) ** 2} SigLIP positions, "
            f"the checkpoint has {positions}"
        )
    return {
        "image_size": image_size, "vision_width": vision_width, "vision_depth": count_indices(tensors, f"{prefix}.encoder.layers"),
        "vision_mlp_dim": _shape(tensors, f"{prefix}.encoder.layers.0.mlp.fc1.weight")[0],
        "vision_num_heads": VISION_HEADS, "patch_size": patch,
    }


def backbone_config(lr: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: str | None, *,
                    policy: str = "pi0") -> dict[str, Any]:
    """The ``paligemma`` spec from LeRobot's pi0 / pi05 ``config.json`` and the checkpoint's shapes."""
    if lr.get("use_relative_actions"):
        raise ConfigError(f"LeRobot {policy} config: use_relative_actions=True has no vla equivalent yet")
    if lr.get("empty_cameras", 0):
        raise ConfigError(f"LeRobot {policy} config: empty_cameras > 0 (padding cameras) is not supported")
    height, width = lr.get("image_resolution", (224, 224))
    if height != width:
        raise ConfigError(f"LeRobot {policy} config: image_resolution must be square, received {(height, width)}")
    return {
        "type": "paligemma", **siglip_dims(tensors, height), **gemma_dims(tensors, f"{PALIGEMMA}.language_model"),
        "vocab_size": _shape(tensors, f"{PALIGEMMA}.language_model.embed_tokens.weight")[0],
        "max_token_len": lr.get("tokenizer_max_length", 48),
        "freeze_vision": bool(lr.get("freeze_vision_encoder", False)), "tokenizer": tokenizer,
    }


def flow_fields(lr: dict[str, Any], tensors: dict[str, torch.Tensor], backbone: dict[str, Any]) -> dict[str, Any]:
    """The expert-head fields pi0 and pi05 share: geometry, prefix geometry, chunk and flow settings."""
    return {
        **gemma_dims(tensors, EXPERT), "horizon": lr["chunk_size"],
        "max_action_dim": _shape(tensors, "model.action_in_proj.weight")[1],
        "prefix_num_layers": backbone["depth"], "prefix_num_kv_heads": backbone["num_kv_heads"],
        "prefix_head_dim": backbone["head_dim"],
        "num_inference_steps": lr.get("num_inference_steps", 10),
        "time_beta_alpha": lr.get("time_sampling_beta_alpha", 1.5), "time_beta_beta": lr.get("time_sampling_beta_beta", 1.0),
        "time_scale": lr.get("time_sampling_scale", 0.999), "time_offset": lr.get("time_sampling_offset", 0.001),
        "min_period": lr.get("min_period", 4e-3), "max_period": lr.get("max_period", 4.0),
    }


def wrap_policy(lr: dict[str, Any], backbone: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The VLAPolicy config dict around the two specs: features, normalization modes, steps, freezing."""
    modes = {k: NORM_MODES[v] for k, v in (lr.get("normalization_mapping") or {}).items()}
    return {
        "input_features": lr["input_features"], "output_features": lr["output_features"],
        "normalization": modes, "n_action_steps": lr.get("n_action_steps"), "n_obs_steps": lr.get("n_obs_steps", 1),
        "freeze_backbone": bool(lr.get("train_expert_only", False)), "backbone": backbone, "head": head,
    }


def policy_config(lr: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: str | None) -> dict[str, Any]:
    """Our VLAPolicy config dict from LeRobot's ``config.json`` and the checkpoint's tensor shapes."""
    backbone = backbone_config(lr, tensors, tokenizer)
    head = {"type": "pi0_flow", **flow_fields(lr, tensors, backbone),
            "max_state_dim": _shape(tensors, "model.state_proj.weight")[1]}
    return wrap_policy(lr, backbone, head)


def lerobot_tensors(src: Path, legacy: dict[str, str] = LEGACY_NAMES) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with ``legacy`` name prefixes renamed and the unused LM heads dropped."""
    tensors = {}
    for key, value in load_tensors(src / "model.safetensors").items():
        if not key.startswith("model."):  # openpi-exported checkpoints have no prefix
            key = "model." + key
        for old, new in legacy.items():
            key = new + key[len(old):] if key.startswith(old) else key
        tensors[key] = value
    embed = f"{PALIGEMMA}.language_model.embed_tokens.weight"
    if embed not in tensors and DROPPED[0] in tensors:  # tied: only the LM head was written
        tensors[embed] = tensors[DROPPED[0]]
    return {k: v for k, v in tensors.items() if k not in DROPPED}


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None) -> Path:
    """Write the vla policy for the LeRobot pi0 directory ``src`` to ``dst``.

    ``tokenizer``: a local PaliGemma tokenizer directory for ``task`` strings (optional: without it the
    policy takes LeRobot's pre-tokenized ``observation.language.tokens`` / ``.attention_mask``).
    """
    src, dst = Path(src), Path(dst)
    lr = read_json(src / "config.json")
    if lr.get("type") != "pi0":
        raise ConfigError(f"{src / 'config.json'}: expected a LeRobot pi0 policy, received type {lr.get('type')!r}")
    tensors = lerobot_tensors(src)
    policy = VLAPolicy(policy_config(lr, tensors, None if tokenizer is None else str(tokenizer)))
    policy.normalizer.set_stats(read_lerobot_stats(src))
    stats = {f"normalizer.{k}": v for k, v in policy.normalizer.state_dict().items()}
    load_into(policy, {**tensors, **stats}, name_mapping=NAME_MAPPING, strict=True)
    return policy.save_pretrained(dst)
