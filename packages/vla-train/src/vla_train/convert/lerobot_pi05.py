"""LeRobot 0.6.x pi05 policy directory -> vla policy (``paligemma`` backbone with the discretized
state in its prompt + ``pi05_flow`` head).

Reads what the pi0 converter reads (:mod:`vla_train.convert.lerobot_pi0`: ``config.json``,
``model.safetensors`` with every width and depth from tensor shapes, the normalizer stats of the
processor files) with pi0.5's differences:

- The expert's norms are adaptive: ``input_layernorm.dense`` / ``post_attention_layernorm.dense`` /
  ``norm.dense`` (weight (3 D, D), bias (3 D)), conditioned on ``time_mlp_in`` / ``time_mlp_out``;
  there is no ``state_proj``.
- The state is written into the prompt: LeRobot's ``Pi05PrepareStateTokenizerProcessorStep``
  digitizes the normalized state into 256 bins (a constant of that step, not a config field), so the
  backbone gets ``discrete_state_bins=256``. ``max_state_dim`` shapes no tensor and is not read by
  that step: it is ignored.
- LeRobot's ``_fix_pytorch_state_dict_keys`` renames unprefixed ``action_time_mlp_*`` to
  ``time_mlp_*`` (done here too) and *skips* unprefixed ``state_proj`` and non-adaptive expert norm
  weights, which leaves the adaptive norms at their initial values: such a checkpoint is refused.

Quirks kept: the loss averages over the real action dims only (LeRobot's ``forward``); a state
value below -1 lands in bin -1 (see :mod:`vla_backbones.paligemma.prompt`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_into

from vla_train.convert.lerobot import read_json, read_lerobot_stats
from vla_train.convert.lerobot_pi0 import (
    EXPERT,
    PALIGEMMA,
    backbone_config,
    flow_fields,
    lerobot_tensors,
    wrap_policy,
)

STATE_BINS = 256  # Pi05PrepareStateTokenizerProcessorStep: np.linspace(-1, 1, 256 + 1)

# ours <- theirs (vla_core.load_into's ``name_mapping``): whole dotted prefixes.
NAME_MAPPING: dict[str, str] = {
    "backbone.vision_tower": f"{PALIGEMMA}.vision_tower",
    "backbone.multi_modal_projector": f"{PALIGEMMA}.multi_modal_projector",
    "backbone.language_model": f"{PALIGEMMA}.language_model",
    "head.layers": f"{EXPERT}.layers",
    "head.norm": f"{EXPERT}.norm",
    "head.action_in_proj": "model.action_in_proj",
    "head.action_out_proj": "model.action_out_proj",
    "head.time_mlp_in": "model.time_mlp_in",
    "head.time_mlp_out": "model.time_mlp_out",
}
# LeRobot's pi05 _fix_pytorch_state_dict_keys (for unprefixed keys, which gain "model." first).
LEGACY_NAMES = {"model.action_time_mlp_in.": "model.time_mlp_in.", "model.action_time_mlp_out.": "model.time_mlp_out."}
# Every PI05Config field (LeRobot 0.6.1 config.json) is used, ignored by name or refused below.
USED = {
    "type", "input_features", "output_features", "normalization_mapping", "n_action_steps", "n_obs_steps",
    "train_expert_only", "freeze_vision_encoder", "image_resolution", "tokenizer_max_length", "chunk_size",
    "num_inference_steps", "time_sampling_beta_alpha", "time_sampling_beta_beta", "time_sampling_scale",
    "time_sampling_offset", "min_period", "max_period", "max_action_dim",
    "use_relative_actions", "empty_cameras", "rtc_config", "use_peft",  # refused when set
}
# Cannot change the converted model's outputs: variants (shapes are read from the tensors), dtype (the
# converted policy runs in float32 unless autocast is asked for), training, device and hub settings.
IGNORED = {
    "max_state_dim", "paligemma_variant", "action_expert_variant", "dtype", "gradient_checkpointing", "compile_model",
    "compile_mode", "device", "use_amp", "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay",
    "optimizer_grad_clip_norm", "scheduler_warmup_steps", "scheduler_decay_steps", "scheduler_decay_lr",
    "relative_exclude_joints", "action_feature_names", "license", "pretrained_path", "pretrained_revision", "private",
    "push_to_hub", "repo_id", "tags",
}


def check_pi05_tensors(tensors: dict[str, torch.Tensor]) -> None:
    """Refuse what LeRobot's pi05 would load with missing weights: a state projection or plain expert norms."""
    stale = [k for k in tensors if k.startswith("model.state_proj.")
             or (k.startswith(f"{EXPERT}.") and k.endswith("layernorm.weight")) or k == f"{EXPERT}.norm.weight"]
    if stale:
        raise CheckpointError(
            f"LeRobot pi05 checkpoint holds pi0 tensors ({', '.join(sorted(stale)[:3])} ...): pi05 has no state_proj "
            "and adaptive expert norms (*.dense); LeRobot skips these keys and leaves the norms untrained"
        )


def policy_config(lr: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: str | None) -> dict[str, Any]:
    """Our VLAPolicy config dict from LeRobot's pi05 ``config.json`` and the checkpoint's tensor shapes."""
    unknown = sorted(set(lr) - USED - IGNORED)
    if unknown:
        raise ConfigError(f"LeRobot pi05 config: unknown fields {unknown}; this converter knows LeRobot 0.6.x's PI05Config")
    if lr.get("use_peft"):
        raise ConfigError("LeRobot pi05 config: use_peft=True (an adapter directory); merge the adapter into the weights first")
    rtc = lr.get("rtc_config")
    if isinstance(rtc, dict) and rtc.get("enabled"):
        raise ConfigError("LeRobot pi05 config: rtc_config.enabled=True (real-time chunking) has no vla equivalent yet")
    backbone = {**backbone_config(lr, tensors, tokenizer, policy="pi05"), "discrete_state_bins": STATE_BINS}
    head = {"type": "pi05_flow", **flow_fields(lr, tensors, backbone)}
    if lr.get("max_action_dim", head["max_action_dim"]) != head["max_action_dim"]:
        raise CheckpointError(f"LeRobot pi05: config max_action_dim {lr['max_action_dim']} but model.action_in_proj "
                              f"takes {head['max_action_dim']}")
    cond = tensors.get(f"{EXPERT}.norm.dense.weight")
    if cond is None or tuple(cond.shape) != (3 * head["width"], head["width"]):
        raise CheckpointError(f"LeRobot pi05 checkpoint: expected {EXPERT}.norm.dense.weight of shape "
                              f"{(3 * head['width'], head['width'])}, received {None if cond is None else tuple(cond.shape)}")
    return wrap_policy(lr, backbone, head)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None) -> Path:
    """Write the vla policy for the LeRobot pi05 directory ``src`` to ``dst``.

    ``tokenizer``: a local PaliGemma tokenizer directory for ``task`` strings (optional: without it the
    policy takes LeRobot's pre-tokenized ``observation.language.tokens`` / ``.attention_mask``, which
    LeRobot's pi05 processor writes with the state already in the prompt).
    """
    src, dst = Path(src), Path(dst)
    lr = read_json(src / "config.json")
    if lr.get("type") != "pi05":
        raise ConfigError(f"{src / 'config.json'}: expected a LeRobot pi05 policy, received type {lr.get('type')!r}")
    tensors = lerobot_tensors(src, LEGACY_NAMES)
    check_pi05_tensors(tensors)
    policy = VLAPolicy(policy_config(lr, tensors, None if tokenizer is None else str(tokenizer)))
    policy.normalizer.set_stats(read_lerobot_stats(src))
    stats = {f"normalizer.{k}": v for k, v in policy.normalizer.state_dict().items()}
    load_into(policy, {**tensors, **stats}, name_mapping=NAME_MAPPING, strict=True)
    return policy.save_pretrained(dst)
