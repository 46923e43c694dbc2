"""Interop with GR00T N1.5 action-head checkpoints (Isaac-GR00T ``GR00T_N1_5`` and LeRobot 0.5.1 ``groot``).

The key names are data: :func:`groot_name_mapping` gives ``{our prefix: their prefix}`` for
:func:`vla_core.load_into`. Their keys live under ``action_head.`` (Isaac-GR00T) or
``_groot_model.action_head.`` (LeRobot 0.5.1 policy checkpoints). Weights load unchanged: the
per-embodiment weights keep their (C, in, out) layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor
from vla_core import ConfigError, LoadReport, load_into

ISAAC_PREFIX = "action_head"
LEROBOT_PREFIX = "_groot_model.action_head"

# ours -> theirs, relative to the action-head prefix.
_FIXED = {
    "state_encoder.layer1.weight": "state_encoder.layer1.W",
    "state_encoder.layer1.bias": "state_encoder.layer1.b",
    "state_encoder.layer2.weight": "state_encoder.layer2.W",
    "state_encoder.layer2.bias": "state_encoder.layer2.b",
    "action_encoder.w1.weight": "action_encoder.W1.W",
    "action_encoder.w1.bias": "action_encoder.W1.b",
    "action_encoder.w2.weight": "action_encoder.W2.W",
    "action_encoder.w2.bias": "action_encoder.W2.b",
    "action_encoder.w3.weight": "action_encoder.W3.W",
    "action_encoder.w3.bias": "action_encoder.W3.b",
    "action_decoder.layer1.weight": "action_decoder.layer1.W",
    "action_decoder.layer1.bias": "action_decoder.layer1.b",
    "action_decoder.layer2.weight": "action_decoder.layer2.W",
    "action_decoder.layer2.bias": "action_decoder.layer2.b",
    "future_tokens": "future_tokens",
    "pos_embed": "position_embedding",
    "vl_norm": "vlln",
    "vl_self_attention.blocks": "vl_self_attention.transformer_blocks",
    "dit.time_embed": "model.timestep_encoder.timestep_embedder",
    "dit.blocks": "model.transformer_blocks",
    "dit.proj_out_1": "model.proj_out_1",
    "dit.proj_out_2": "model.proj_out_2",
}


def groot_name_mapping(num_layers: int, vl_layers: int, prefix: str = ISAAC_PREFIX) -> dict[str, str]:
    """``{ours: theirs}`` key prefixes for a head with ``num_layers`` DiT and ``vl_layers`` VL blocks.

    Only ``attn1.to_out.0`` (theirs, a Sequential with dropout) -> ``attn1.to_out`` differs per block.
    """
    p = f"{prefix}." if prefix else ""
    mapping = {ours: p + theirs for ours, theirs in _FIXED.items()}
    for i in range(num_layers):
        mapping[f"dit.blocks.{i}.attn1.to_out"] = f"{p}model.transformer_blocks.{i}.attn1.to_out.0"
    for i in range(vl_layers):
        mapping[f"vl_self_attention.blocks.{i}.attn1.to_out"] = (
            f"{p}vl_self_attention.transformer_blocks.{i}.attn1.to_out.0"
        )
    return mapping


# GR00T N1.5's embodiment tags -> rows (Isaac-GR00T's EMBODIMENT_TAG_MAPPING plus LeRobot 0.5.1's so100 / unitree_g1).
GROOT_EMBODIMENTS = {"new_embodiment": 31, "oxe_droid": 17, "agibot_genie1": 26, "gr1": 24, "so100": 2, "unitree_g1": 3}

# The reference classes' defaults, used for keys a config leaves out (the DiT's are not the checkpoint values).
_HEAD_DEFAULTS = {"add_pos_embed": True, "backbone_embedding_dim": 1536, "input_embedding_dim": 1536, "hidden_size": 1024,
                  "max_seq_len": 1024, "noise_beta_alpha": 1.5, "noise_beta_beta": 1.0, "noise_s": 0.999,
                  "num_timestep_buckets": 1000, "max_num_embodiments": 32, "use_vlln": True,
                  "num_target_vision_tokens": 32, "expand_batch": None}
_DIT_DEFAULTS = {"num_attention_heads": 8, "attention_head_dim": 64, "output_dim": 26, "num_layers": 12, "dropout": 0.1,
                 "attention_bias": True, "activation_fn": "gelu-approximate", "upcast_attention": False,
                 "norm_type": "ada_norm", "norm_elementwise_affine": False, "norm_eps": 1e-5, "final_dropout": True,
                 "positional_embeddings": "sinusoidal", "interleave_self_attention": False, "cross_attention_dim": None}
_VL_DEFAULTS = {"num_attention_heads": 8, "attention_head_dim": 64, "num_layers": 12, "dropout": 0.1,
                "attention_bias": True, "activation_fn": "gelu-approximate", "upcast_attention": False,
                "final_dropout": True, "positional_embeddings": "sinusoidal"}
# Fields that cannot change outputs (training switches, unused by the N1.5 head), ignored by name.
_HEAD_IGNORED = {"model_dtype", "tune_projector", "tune_diffusion_model", "load_pretrained_det_decode_layer_path",
                 "detection_coeff", "freeze_decode_layer"}
_HEAD_USED = {"diffusion_model_cfg", "vl_self_attention_cfg", "action_dim", "action_horizon", "max_state_dim",
              "max_action_dim", "num_inference_timesteps", *_HEAD_DEFAULTS}
# Unused by the reference's DiT / SelfAttentionTransformer (or used only with positional_embeddings set).
_DIT_IGNORED = {"num_embeds_ada_norm", "compute_dtype", "max_num_positional_embeddings"}
_VL_IGNORED = {"num_embeds_ada_norm", "compute_dtype", "max_num_positional_embeddings", "output_dim",
               "interleave_self_attention"}


def _strict(block: str, cfg: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"GR00T {block}: unknown field(s) {unknown}; known: {sorted(known)}")


def _refuse(block: str, key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"GR00T {block}.{key}: expected {expected}, received {value!r} (no vla equivalent)")


def _common_block_checks(block: str, cfg: Mapping[str, Any]) -> None:
    """Options the N1.5 transformer blocks have and our blocks reproduce only at their released values."""
    if cfg["positional_embeddings"] is not None:  # the class default "sinusoidal" adds a PE to every block
        _refuse(block, "positional_embeddings", cfg["positional_embeddings"], "None (as GR00T N1.5 sets it)")
    if cfg["activation_fn"] != "gelu-approximate":
        _refuse(block, "activation_fn", cfg["activation_fn"], "'gelu-approximate'")
    if cfg["attention_bias"] is not True:
        _refuse(block, "attention_bias", cfg["attention_bias"], "True")
    if not cfg["final_dropout"] and cfg["dropout"]:
        _refuse(block, "final_dropout", False, "True (or dropout 0)")


def head_config_from_groot(
    action_head_cfg: Mapping[str, Any],
    *,
    action_dim: int | None = None,
    embodiments: Mapping[str, int] | None = None,
    default_embodiment: str | None = None,
) -> dict[str, Any]:
    """Our head fields from a GR00T N1.5 ``action_head_cfg`` (the ``config.json`` block).

    Strict: every field is used, ignored by name (it cannot change outputs) or refused, and a field
    left out takes the reference class's default (the DiT's and the VL stack's defaults are *not* the
    released values: e.g. ``positional_embeddings="sinusoidal"``, which is refused). Reference quirks
    reproduced: the DiT's ``AdaLayerNorm`` ignores ``norm_eps`` / ``norm_elementwise_affine`` (they
    reach only ``norm3``); ``max_action_dim`` is unused by the head (its width is ``action_dim``);
    with ``use_vlln`` false ``backbone_embedding_dim`` is unused and the context width is the DiT's
    ``cross_attention_dim``; ``upcast_attention`` has no effect under SDPA.

    ``action_dim`` is the robot's real action dim (default: the checkpoint's padded ``action_dim``).
    ``embodiments`` names rows (default :data:`GROOT_EMBODIMENTS`); tags whose row does not exist
    among the ``max_num_embodiments`` rows are left out and every unnamed row is ``embodiment_<row>``,
    so any row count translates. ``default_embodiment`` (used when a batch has no ``embodiment_id``):
    given, else ``new_embodiment`` when its row exists, else the name of row 0 (LeRobot 0.5.1 uses
    row 0 for a tag it does not know).
    """
    _strict("action_head_cfg", action_head_cfg, _HEAD_USED | _HEAD_IGNORED)
    for key in ("diffusion_model_cfg", "action_dim", "action_horizon", "max_state_dim", "num_inference_timesteps"):
        if action_head_cfg.get(key) is None:
            raise ConfigError(f"GR00T action_head_cfg.{key}: required (the reference cannot run without it)")
    head = {**_HEAD_DEFAULTS, **action_head_cfg}
    dit = {**_DIT_DEFAULTS, **head["diffusion_model_cfg"]}
    _strict("diffusion_model_cfg", head["diffusion_model_cfg"], set(_DIT_DEFAULTS) | _DIT_IGNORED)
    _common_block_checks("diffusion_model_cfg", dit)
    if dit["norm_type"] != "ada_norm":
        _refuse("diffusion_model_cfg", "norm_type", dit["norm_type"], "'ada_norm'")
    if dit["norm_elementwise_affine"] or dit["norm_eps"] != 1e-5:  # they shape norm3 only (AdaLayerNorm ignores them)
        _refuse("diffusion_model_cfg", "norm_elementwise_affine/norm_eps",
                (dit["norm_elementwise_affine"], dit["norm_eps"]), "(False, 1e-5)")
    if head["expand_batch"] is not None:
        _refuse("action_head_cfg", "expand_batch", head["expand_batch"], "None")
    width = int(dit["num_attention_heads"]) * int(dit["attention_head_dim"])
    if int(head["input_embedding_dim"]) != width:
        _refuse("action_head_cfg", "input_embedding_dim", head["input_embedding_dim"],
                f"the DiT width num_attention_heads * attention_head_dim = {width}")
    if int(dit["output_dim"]) != int(head["hidden_size"]):
        _refuse("diffusion_model_cfg", "output_dim", dit["output_dim"], f"hidden_size {head['hidden_size']}")
    padded = int(head["action_dim"])
    if head.get("max_action_dim") is not None and int(head["max_action_dim"]) != padded:
        _refuse("action_head_cfg", "max_action_dim", head["max_action_dim"], f"action_dim {padded} (the head's width)")
    use_vlln = bool(head["use_vlln"])
    context_dim = int(head["backbone_embedding_dim"]) if use_vlln else dit["cross_attention_dim"]
    if dit["cross_attention_dim"] is None or int(dit["cross_attention_dim"]) != context_dim:
        _refuse("diffusion_model_cfg", "cross_attention_dim", dit["cross_attention_dim"],
                f"the context width {context_dim} (backbone_embedding_dim)")
    vl_layers, vl_heads = 0, 1
    if use_vlln:
        raw_vl = head.get("vl_self_attention_cfg")
        if raw_vl is None:
            raise ConfigError("GR00T action_head_cfg.vl_self_attention_cfg: required when use_vlln is true")
        _strict("vl_self_attention_cfg", raw_vl, set(_VL_DEFAULTS) | _VL_IGNORED)
        vl = {**_VL_DEFAULTS, **raw_vl}
        _common_block_checks("vl_self_attention_cfg", vl)
        vl_layers, vl_heads = int(vl["num_layers"]), int(vl["num_attention_heads"])
        if vl_layers and vl_heads * int(vl["attention_head_dim"]) != context_dim:
            _refuse("vl_self_attention_cfg", "num_attention_heads * attention_head_dim",
                    vl_heads * int(vl["attention_head_dim"]), f"backbone_embedding_dim {context_dim}")
        if vl_layers and float(vl["dropout"]) != float(dit["dropout"]):
            _refuse("vl_self_attention_cfg", "dropout", vl["dropout"], f"the DiT's dropout {dit['dropout']} (one field in vla)")
        vl_heads = vl_heads if vl_layers else 1
    rows = int(head["max_num_embodiments"])
    names = {k: int(v) for k, v in (GROOT_EMBODIMENTS if embodiments is None else embodiments).items() if int(v) < rows}
    taken = set(names.values())
    names.update({f"embodiment_{r}": r for r in range(rows) if r not in taken})
    if default_embodiment is None:
        default_embodiment = "new_embodiment" if "new_embodiment" in names else next(n for n, r in names.items() if r == 0)
    return {
        "context_dim": context_dim,
        "action_dim": action_dim or padded,
        "horizon": int(head["action_horizon"]),
        "max_action_dim": padded,
        "max_state_dim": int(head["max_state_dim"]),
        "num_embodiments": rows,
        "embodiments": names,
        "default_embodiment": default_embodiment,
        "hidden_dim": int(head["hidden_size"]),
        "num_future_tokens": int(head["num_target_vision_tokens"]),
        "add_pos_embed": bool(head["add_pos_embed"]),
        "max_seq_len": int(head["max_seq_len"]),
        "num_layers": int(dit["num_layers"]),
        "num_heads": int(dit["num_attention_heads"]),
        "head_dim": int(dit["attention_head_dim"]),
        "interleave_self_attention": bool(dit["interleave_self_attention"]),
        "dropout": float(dit["dropout"]),
        "use_vlln": use_vlln,
        "vl_self_attention_layers": vl_layers,
        "vl_num_heads": vl_heads,
        "noise_beta_alpha": float(head["noise_beta_alpha"]),
        "noise_beta_beta": float(head["noise_beta_beta"]),
        "noise_s": float(head["noise_s"]),
        "num_timestep_buckets": int(head["num_timestep_buckets"]),
        "num_inference_timesteps": int(head["num_inference_timesteps"]),
    }


def load_groot_head(
    head, tensors: Mapping[str, Tensor], *, prefix: str = ISAAC_PREFIX, strict: bool = True
) -> LoadReport:
    """Load the GR00T action-head tensors under ``prefix`` (other keys, e.g. ``backbone.*``, are ignored)."""
    p = f"{prefix}." if prefix else ""
    own = {k: v for k, v in tensors.items() if k.startswith(p)}
    c = head.config
    if not c.num_future_tokens:  # num_target_vision_tokens=0: the reference still writes a (0, D) table
        empty = own.pop(f"{p}future_tokens.weight", None)
        if empty is not None and empty.numel():
            own[f"{p}future_tokens.weight"] = empty  # not empty: load_into reports it
    vl_layers = c.vl_self_attention_layers if c.use_vlln else 0
    return load_into(head, own, name_mapping=groot_name_mapping(c.num_layers, vl_layers, prefix), strict=strict)
