"""Loading Eagle checkpoints (reference key names) into :class:`EagleBackbone`.

Reference keys: ``vision_model.vision_model.*`` (SiglipVisionModel), ``mlp1.*`` (connector),
``language_model.model.*`` (Qwen*ForCausalLM); in GR00T N1.5 checkpoints they sit under
``backbone.eagle_model.`` (LeRobot 0.5.1 adds ``_groot_model.``), with ``backbone.eagle_linear`` as
the optional projection. The mapping is data; unused reference tensors (the vision tower's final
norm and pooling head, ``lm_head``, LLM layers past ``select_layer``) are dropped explicitly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor
from vla_core import LoadReport, load_into, load_tensors

from vla_backbones.eagle.config import EagleConfig

GROOT_PREFIX = "backbone.eagle_model"
_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "hidden_act", "layer_norm_eps", "num_channels", "attention_dropout")
_LLM_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "rms_norm_eps", "rope_theta", "vocab_size", "max_position_embeddings", "hidden_act",
             "tie_word_embeddings", "attention_bias", "attention_dropout")


def eagle_name_mapping(prefix: str = "", projector: str | None = None) -> dict[str, str]:
    """``{ours: theirs}`` prefixes; ``prefix`` is where the Eagle model sits (e.g. ``backbone.eagle_model``)."""
    p = f"{prefix}." if prefix else ""
    mapping = {"vision": f"{p}vision_model.vision_model", "connector": f"{p}mlp1", "llm": f"{p}language_model.model"}
    if projector:
        mapping["projector"] = projector
    return mapping


def _unused(key: str, prefix: str, select_layer: int) -> bool:
    p = f"{prefix}." if prefix else ""
    if key.startswith(f"{p}vision_model.vision_model.") and (".post_layernorm." in key or ".head." in key):
        return True
    if key.startswith(f"{p}language_model.lm_head."):
        return True
    m = re.match(rf"{re.escape(p)}language_model\.model\.layers\.(\d+)\.", key)
    return bool(m and int(m.group(1)) >= select_layer)


def load_eagle_weights(
    backbone, tensors: Mapping[str, Tensor], *, prefix: str = "", projector: str | None = None, strict: bool = True
) -> LoadReport:
    """Load reference-named Eagle tensors under ``prefix`` into ``backbone`` (other keys are ignored)."""
    p = f"{prefix}." if prefix else ""
    keep = {k: v for k, v in tensors.items()
            if (k.startswith(p) or (projector and k.startswith(projector + ".")))
            and not _unused(k, prefix, backbone.config.select_layer)}
    return load_into(backbone, keep, name_mapping=eagle_name_mapping(prefix, projector), strict=strict)


def config_from_eagle(eagle_config: Mapping[str, Any], **overrides: Any) -> EagleConfig:
    """Our config from an Eagle 2 / 2.5 ``config.json`` (``vision_config``, ``text_config`` ...)."""
    text = dict(eagle_config["text_config"])
    arch = (text.get("architectures") or [text.get("model_type", "qwen3")])[0].lower()
    rope = text.get("rope_parameters") or {}
    llm = {k: text[k] for k in _LLM_KEYS if k in text}
    if "rope_theta" not in llm and "rope_theta" in rope:
        llm["rope_theta"] = rope["rope_theta"]
    fields = {
        "vision": {k: v for k, v in eagle_config["vision_config"].items() if k in _VISION_KEYS},
        "llm": llm,
        "llm_type": "qwen2" if "qwen2" in arch else "qwen3",
        "connector": "pixel_shuffle_mlp" if eagle_config.get("use_pixel_shuffle") else "linear",
        "downsample_ratio": float(eagle_config.get("downsample_ratio", 0.5)),
        "image_token_id": int(eagle_config.get("image_token_index", 151669)),
    }
    fields.update(overrides)
    return EagleConfig.from_dict(fields)


def from_pretrained(directory: str | Path, **overrides: Any):
    """Build an :class:`EagleBackbone` from a local Eagle checkpoint directory (``config.json`` + safetensors)."""
    from vla_backbones.eagle.model import EagleBackbone

    directory = Path(directory)
    config = config_from_eagle(json.loads((directory / "config.json").read_text()), **overrides)
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    tensors: dict[str, Tensor] = {}
    for name in files:
        tensors.update(load_tensors(directory / name))
    backbone = EagleBackbone(config)
    load_eagle_weights(backbone, tensors)
    return backbone
