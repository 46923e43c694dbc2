"""LeRobot 0.6.x pi05 policy directory -> vla policy (``paligemma`` backbone with the discretized
state in its prompt + ``pi05_flow`` head).

Reads what the pi0 converter reads (:mod:`vla_train.convert.lerobot_pi0`: ``config.json``,
``model.safetensors`` with every width and depth from tensor shapes, the normalizer stats of the
processor files) and refuses what it refuses, with the same shared checks (every ``config.json``
field read, ignored by name or refused; the processor steps, normalizer modes and stats checked by
``vla_train.convert.lerobot``; an enabled ``rtc_config``, relative actions and padding cameras
refused). pi0.5's differences:

- The expert's norms are adaptive: ``input_layernorm.dense`` / ``post_attention_layernorm.dense`` /
  ``norm.dense`` (weight (3 D, D), bias (3 D)), conditioned on ``time_mlp_in`` / ``time_mlp_out``;
  there is no ``state_proj``.
- The state is written into the prompt: LeRobot's ``Pi05PrepareStateTokenizerProcessorStep``
  (``pi05_prepare_state_tokenizer_processor_step``) digitizes the normalized state into 256 bins (a
  constant of that step, not a config field) and writes ``"Task: {task}, State: {bins};\nAction: "``,
  so the backbone gets ``discrete_state_bins=256``. ``max_state_dim`` shapes no tensor and that step
  does not pad with it: it is ignored (in ``config.json`` and in the step's config). The step's
  ``task_key`` must be ``task``. There is no newline step (the prompt ends in its own newline).
- LeRobot's PI05Config defaults differ from PI0Config's in ``tokenizer_max_length`` (200) and the
  ``normalization_mapping`` (QUANTILES for STATE and ACTION).
- LeRobot's ``_fix_pytorch_state_dict_keys`` renames unprefixed ``action_time_mlp_*`` to
  ``time_mlp_*`` (done here too) and *skips* unprefixed ``state_proj`` and non-adaptive expert norm
  weights, which leaves the adaptive norms at their initial values: such a checkpoint is refused.

Quirks kept: the loss averages over the real action dims only (LeRobot's ``forward``); a state
value below -1 lands in bin -1 (see :mod:`vla_backbones.paligemma.prompt`); ``n_obs_steps`` has no
effect; ``dtype: bfloat16`` converts exactly to float32 (with a warning), as for pi0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError

from vla_train.convert.lerobot import (
    DEFAULT_STEPS,
    check_fields,
    check_processors,
    read_json,
)
from vla_train.convert.lerobot_pi0 import (
    DEFAULTS as PI0_DEFAULTS,
)
from vla_train.convert.lerobot_pi0 import (
    EXPERT,
    IGNORED_FIELDS,
    PALIGEMMA,
    backbone_config,
    check_config,
    check_step,
    flow_fields,
    lerobot_tensors,
    wrap_policy,
    write_policy,
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
# LeRobot 0.6.1 ``PI05Config`` defaults: PI0Config's fields, with its own prompt length and normalization.
DEFAULTS: dict[str, Any] = {
    **PI0_DEFAULTS,
    "tokenizer_max_length": 200,
    "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "QUANTILES", "ACTION": "QUANTILES"},
}
# max_state_dim shapes no pi05 tensor and the state step does not pad with it.
IGNORED = IGNORED_FIELDS | {"max_state_dim"}
STATE_STEP = "pi05_prepare_state_tokenizer_processor_step"
KNOWN_STEPS = DEFAULT_STEPS | {STATE_STEP, "tokenizer_processor", "relative_actions_processor",
                               "absolute_actions_processor"}


def check_pi05_step(where: str, name: str, cfg: dict[str, Any], lr: dict[str, Any]) -> None:
    """pi05's processor steps as the converted policy reproduces them: the state prompt reads ``task``."""
    check_step(where, name, cfg, lr, DEFAULTS)
    if name == STATE_STEP and cfg.get("task_key", "task") != "task":
        raise ConfigError(f"{where}: task_key {cfg['task_key']!r}; the converted policy writes the state into "
                          "the prompt of 'task'")


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
    check_config(lr, policy="pi05", defaults=DEFAULTS)
    lr = {**DEFAULTS, **lr}
    backbone = {**backbone_config(lr, tensors, tokenizer, policy="pi05"), "discrete_state_bins": STATE_BINS}
    head = {"type": "pi05_flow", **flow_fields(lr, tensors, backbone)}
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
    check_fields(lr, src / "config.json", policy="pi05", known=frozenset(DEFAULTS) | {"input_features", "output_features"},
                 ignored=IGNORED)
    tensors = lerobot_tensors(src, LEGACY_NAMES)
    check_pi05_tensors(tensors)
    config = policy_config(lr, tensors, None if tokenizer is None else str(tokenizer))
    check_processors(src, lr, lr.get("normalization_mapping", DEFAULTS["normalization_mapping"]), policy="pi05",
                     known_steps=KNOWN_STEPS, step_check=lambda where, name, cfg: check_pi05_step(where, name, cfg, lr))
    return write_policy(src, lr, config, tensors, dst, NAME_MAPPING)
