"""LeRobot 0.6.x pi0 policy directory -> vla policy (``paligemma`` backbone + ``pi0_flow`` head).

Reads ``config.json`` (features, normalization modes, chunk size, flow settings), ``model.safetensors``
(weights; every width, depth, vocabulary and image size is read from tensor shapes, since LeRobot's
config only names the Gemma variants) and the normalizer step of ``policy_preprocessor.json`` with its
``*.safetensors`` stats. Weights are renamed by :data:`NAME_MAPPING` alone; both unused ``lm_head``
matrices are dropped.

Head counts cannot be read from shapes (heads x head dim is one number): LeRobot's pi0 hard-codes 8
query heads in its joint attention and builds SigLIP with PaliGemma's 16 heads, so those are used.

Every ``config.json`` field is read (:data:`DEFAULTS`), known to leave a saved policy's outputs unchanged
(:data:`IGNORED_FIELDS`: training-only switches, optimizer and scheduler presets) or refused by name; the
processors and stats pass the checks every LeRobot converter shares (``vla_train.convert.lerobot``), and
pi0's own steps (newline, tokenizer, relative/absolute actions) must be the ones reproduced here.

Reference quirks (LeRobot 0.6.1), each reproduced or refused:

1. ``paligemma_variant`` / ``action_expert_variant`` name fixed Gemma sizes; the widths, depths and
   head geometry are read from the tensors instead (LeRobot loads strictly, so they agree).
2. ``n_obs_steps`` has no effect (``observation_delta_indices`` is None: pi0 sees one step); the
   converted policy takes one step whatever the field says.
3. ``dtype: bfloat16`` stores (and runs) the Gemma layers in bfloat16, the vision tower, projector and
   norms in float32. The weights convert exactly to float32 and the converted policy computes in
   float32: its actions equal LeRobot's float32 run of the same weights, and LeRobot's bfloat16 run
   only to bfloat16 precision. The converter warns.
4. A feature type missing from ``normalization_mapping`` is not normalized (IDENTITY).
5. Only ``observation.state`` (STATE) and VISUAL features are read, only ``action`` is predicted; other
   names are refused. ``empty_cameras`` (padding cameras), ``use_relative_actions`` and an enabled
   ``rtc_config`` have no vla equivalent: refused.
6. The tokenizer step pads on the right to ``tokenizer_max_length`` and truncates, after appending a
   newline to the task (``pi0_new_line_processor``); other tokenizer settings are refused.
7. ``compile_model`` wraps methods (not modules) in ``torch.compile``: the tensor names do not change.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_into, load_tensors

from vla_train.convert.lerobot import (
    DEFAULT_STEPS,
    check_fields,
    check_processors,
    check_stats,
    count_indices,
    normalization_modes,
    read_json,
    read_lerobot_stats,
)

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
# LeRobot 0.6.1 ``PI0Config`` defaults of the fields read here (used when config.json lacks one).
DEFAULTS: dict[str, Any] = {
    "paligemma_variant": "gemma_2b",
    "action_expert_variant": "gemma_300m",
    "dtype": "float32",
    "n_obs_steps": 1,
    "chunk_size": 50,
    "n_action_steps": 50,
    "max_state_dim": 32,
    "max_action_dim": 32,
    "num_inference_steps": 10,
    "time_sampling_beta_alpha": 1.5,
    "time_sampling_beta_beta": 1.0,
    "time_sampling_scale": 0.999,
    "time_sampling_offset": 0.001,
    "min_period": 4e-3,
    "max_period": 4.0,
    "use_relative_actions": False,
    "rtc_config": None,
    "image_resolution": [224, 224],
    "empty_cameras": 0,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "freeze_vision_encoder": False,
    "train_expert_only": False,
    "tokenizer_max_length": 48,
}
# Fields with no effect on a saved policy's outputs: training-only switches, torch.compile (of methods:
# the tensor names stay), the joints relative actions would exclude (refused anyway), optimizer and
# scheduler presets.
IGNORED_FIELDS = frozenset({
    "gradient_checkpointing", "compile_model", "compile_mode", "relative_exclude_joints", "action_feature_names",
    "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "optimizer_grad_clip_norm",
    "scheduler_warmup_steps", "scheduler_decay_steps", "scheduler_decay_lr",
})
KNOWN_STEPS = DEFAULT_STEPS | {"pi0_new_line_processor", "tokenizer_processor", "relative_actions_processor",
                               "absolute_actions_processor"}
OBS_STATE, ACTION = "observation.state", "action"


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


def _field(lr: dict[str, Any], name: str, defaults: dict[str, Any] = DEFAULTS) -> Any:
    return lr[name] if name in lr else defaults[name]


def check_config(lr: dict[str, Any], *, policy: str = "pi0", defaults: dict[str, Any] = DEFAULTS) -> None:
    """The fields with no vla equivalent (quirk 5), the features pi0 / pi05 read, and the dtype (quirk 3).
    ``defaults``: the policy's LeRobot config defaults; ``policy`` names it in messages."""
    if _field(lr, "use_relative_actions", defaults):
        raise ConfigError("config.json use_relative_actions: true (actions relative to the state) has no vla "
                          "equivalent yet")
    if _field(lr, "empty_cameras", defaults):
        raise ConfigError(f"config.json empty_cameras: {lr['empty_cameras']} padding cameras (masked -1 images) "
                          "have no vla equivalent; expected 0")
    rtc = _field(lr, "rtc_config", defaults)
    if isinstance(rtc, dict) and rtc.get("enabled"):
        raise ConfigError("config.json rtc_config: enabled real-time chunking is not converted; disable it (the "
                          "weights do not depend on it)")
    for key, f in lr["input_features"].items():
        if f["type"] not in ("VISUAL", "STATE") or (f["type"] == "STATE" and key != OBS_STATE):
            raise ConfigError(f"config.json input_features[{key!r}] (type {f['type']}): LeRobot's {policy} reads only "
                              f"{OBS_STATE!r} (STATE) and VISUAL features, so it is not converted")
    outputs = lr["output_features"]
    if list(outputs) != [ACTION] or outputs[ACTION]["type"] != "ACTION":
        raise ConfigError(f"config.json output_features: LeRobot's {policy} predicts exactly {ACTION!r} (ACTION), "
                          f"received {dict(outputs)}")
    dtype = _field(lr, "dtype", defaults)
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.json dtype: expected 'float32' or 'bfloat16', received {dtype!r}")
    if dtype == "bfloat16":
        warnings.warn(f"LeRobot {policy} dtype bfloat16: the weights convert exactly to float32 and the converted "
                      "policy computes in float32, so its actions match LeRobot's bfloat16 run only to bfloat16 "
                      "precision", stacklevel=3)


def check_step(where: str, name: str, cfg: dict[str, Any], lr: dict[str, Any],
               defaults: dict[str, Any] = DEFAULTS) -> None:
    """The tokenizer and relative-action steps pi0 and pi05 share, as the converted policy reproduces them (quirk 6)."""
    if name == "tokenizer_processor":
        want = {"max_length": _field(lr, "tokenizer_max_length", defaults), "task_key": "task",
                "padding_side": "right", "padding": "max_length", "truncation": True}
        got = {k: cfg.get(k, want[k]) for k in want}
        if got != want:
            raise ConfigError(f"{where}: tokenizer settings {got}; the converted policy tokenizes as {want}")
    if name in ("relative_actions_processor", "absolute_actions_processor") and cfg.get("enabled"):
        raise ConfigError(f"{where}: enabled; relative actions have no vla equivalent yet")


def backbone_config(lr: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: str | None, *,
                    policy: str = "pi0") -> dict[str, Any]:
    """The ``paligemma`` spec from LeRobot's pi0 / pi05 ``config.json`` (defaults filled in) and the
    checkpoint's shapes."""
    height, width = lr["image_resolution"]
    if height != width:
        raise ConfigError(f"LeRobot {policy} config: image_resolution must be square, received {(height, width)}")
    return {
        "type": "paligemma", **siglip_dims(tensors, height), **gemma_dims(tensors, f"{PALIGEMMA}.language_model"),
        "vocab_size": _shape(tensors, f"{PALIGEMMA}.language_model.embed_tokens.weight")[0],
        "max_token_len": lr["tokenizer_max_length"],
        "freeze_vision": bool(lr["freeze_vision_encoder"]), "tokenizer": tokenizer,
    }


def flow_fields(lr: dict[str, Any], tensors: dict[str, torch.Tensor], backbone: dict[str, Any]) -> dict[str, Any]:
    """The expert-head fields pi0 and pi05 share: geometry, prefix geometry, chunk and flow settings
    (``lr`` with defaults filled in); ``max_action_dim`` must agree with the checkpoint."""
    fields = {
        **gemma_dims(tensors, EXPERT), "horizon": lr["chunk_size"],
        "max_action_dim": _shape(tensors, "model.action_in_proj.weight")[1],
        "prefix_num_layers": backbone["depth"], "prefix_num_kv_heads": backbone["num_kv_heads"],
        "prefix_head_dim": backbone["head_dim"],
        "num_inference_steps": lr["num_inference_steps"],
        "time_beta_alpha": lr["time_sampling_beta_alpha"], "time_beta_beta": lr["time_sampling_beta_beta"],
        "time_scale": lr["time_sampling_scale"], "time_offset": lr["time_sampling_offset"],
        "min_period": lr["min_period"], "max_period": lr["max_period"],
    }
    check_dim(lr, "max_action_dim", "model.action_in_proj.weight (columns)", fields["max_action_dim"])
    return fields


def check_dim(lr: dict[str, Any], field: str, tensor: str, found: int) -> None:
    """``config.json``'s ``field`` equals what the checkpoint's ``tensor`` says (``found``)."""
    if lr[field] != found:
        raise CheckpointError(f"config.json {field} is {lr[field]!r} but model.safetensors {tensor} says {found}")


def wrap_policy(lr: dict[str, Any], backbone: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The VLAPolicy config dict around the two specs: features, normalization modes, steps, freezing."""
    return {
        "input_features": lr["input_features"], "output_features": lr["output_features"],
        "normalization": normalization_modes(lr, lr["normalization_mapping"]),
        "n_action_steps": lr["n_action_steps"],
        "n_obs_steps": 1,  # quirk 2: LeRobot's pi0 / pi05 see one step whatever n_obs_steps says
        "freeze_backbone": bool(lr["train_expert_only"]), "backbone": backbone, "head": head,
    }


def policy_config(lr: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: str | None) -> dict[str, Any]:
    """Our VLAPolicy config dict from LeRobot's ``config.json`` and the checkpoint's tensor shapes."""
    check_config(lr)
    lr = {**DEFAULTS, **lr}
    backbone = backbone_config(lr, tensors, tokenizer)
    head = {"type": "pi0_flow", **flow_fields(lr, tensors, backbone),
            "max_state_dim": _shape(tensors, "model.state_proj.weight")[1]}
    check_dim(lr, "max_state_dim", "model.state_proj.weight (columns)", head["max_state_dim"])
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
    check_fields(lr, src / "config.json", policy="pi0", known=frozenset(DEFAULTS) | {"input_features", "output_features"},
                 ignored=IGNORED_FIELDS)
    tensors = lerobot_tensors(src)
    config = policy_config(lr, tensors, None if tokenizer is None else str(tokenizer))
    check_processors(src, lr, _field(lr, "normalization_mapping"), policy="pi0", known_steps=KNOWN_STEPS,
                     step_check=lambda where, name, cfg: check_step(where, name, cfg, lr))
    return write_policy(src, lr, config, tensors, dst, NAME_MAPPING)


def write_policy(src: Path, lr: dict[str, Any], config: dict[str, Any], tensors: dict[str, Any], dst: str | Path,
                 name_mapping: dict[str, str]) -> Path:
    """The converted policy: built from ``config``, LeRobot's statistics checked and set, the tensors
    renamed by ``name_mapping`` and loaded strictly, saved to ``dst`` (the pi0 and pi0.5 converters)."""
    stats = read_lerobot_stats(src)
    check_stats(stats, config["normalization"], lr)
    policy = VLAPolicy(config)
    policy.normalizer.set_stats(stats)
    stats = {f"normalizer.{k}": v for k, v in policy.normalizer.state_dict().items()}
    load_into(policy, {**tensors, **stats}, name_mapping=name_mapping, strict=True)
    return policy.save_pretrained(dst)
