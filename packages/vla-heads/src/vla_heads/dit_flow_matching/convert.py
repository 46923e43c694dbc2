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
from vla_core import LoadReport, load_into

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


def head_config_from_groot(action_head_cfg: Mapping[str, Any], *, action_dim: int | None = None) -> dict[str, Any]:
    """Our head fields from a GR00T N1.5 ``action_head_cfg`` (the ``config.json`` block).

    ``action_dim`` is the robot's real action dim (default: the checkpoint's padded ``action_dim``).
    """
    dit = dict(action_head_cfg["diffusion_model_cfg"])
    vl = dict(action_head_cfg.get("vl_self_attention_cfg") or {})
    use_vlln = bool(action_head_cfg.get("use_vlln", True))
    padded = int(action_head_cfg["action_dim"])
    return {
        "context_dim": int(action_head_cfg.get("backbone_embedding_dim", 1536)),
        "action_dim": action_dim or padded,
        "horizon": int(action_head_cfg["action_horizon"]),
        "max_action_dim": int(action_head_cfg.get("max_action_dim", padded)),
        "max_state_dim": int(action_head_cfg.get("max_state_dim", 64)),
        "num_embodiments": int(action_head_cfg.get("max_num_embodiments", 32)),
        "hidden_dim": int(action_head_cfg.get("hidden_size", 1024)),
        "num_future_tokens": int(action_head_cfg.get("num_target_vision_tokens", 32)),
        "add_pos_embed": bool(action_head_cfg.get("add_pos_embed", True)),
        "max_seq_len": int(action_head_cfg.get("max_seq_len", 1024)),
        "num_layers": int(dit["num_layers"]),
        "num_heads": int(dit["num_attention_heads"]),
        "head_dim": int(dit["attention_head_dim"]),
        "interleave_self_attention": bool(dit.get("interleave_self_attention", False)),
        "dropout": float(dit.get("dropout", 0.2)),
        "use_vlln": use_vlln,
        "vl_self_attention_layers": int(vl.get("num_layers", 0)) if use_vlln else 0,
        "vl_num_heads": int(vl.get("num_attention_heads", 32)),
        "noise_beta_alpha": float(action_head_cfg.get("noise_beta_alpha", 1.5)),
        "noise_beta_beta": float(action_head_cfg.get("noise_beta_beta", 1.0)),
        "noise_s": float(action_head_cfg.get("noise_s", 0.999)),
        "num_timestep_buckets": int(action_head_cfg.get("num_timestep_buckets", 1000)),
        "num_inference_timesteps": int(action_head_cfg.get("num_inference_timesteps") or 4),
    }


def load_groot_head(
    head, tensors: Mapping[str, Tensor], *, prefix: str = ISAAC_PREFIX, strict: bool = True
) -> LoadReport:
    """Load the GR00T action-head tensors under ``prefix`` (other keys, e.g. ``backbone.*``, are ignored)."""
    p = f"{prefix}." if prefix else ""
    own = {k: v for k, v in tensors.items() if k.startswith(p)}
    c = head.config
    vl_layers = c.vl_self_attention_layers if c.use_vlln else 0
    return load_into(head, own, name_mapping=groot_name_mapping(c.num_layers, vl_layers, prefix), strict=strict)
