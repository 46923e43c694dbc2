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
from vla_core import ConfigError, LoadReport, load_into, load_tensors

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


# Generic PretrainedConfig keys (transformers 4.x and 5.x write them into every config.json): ignored by name.
_GENERIC = {
    "_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "return_dict",
    "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "pruned_heads", "tie_encoder_decoder",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
    "id2label", "label2id", "problem_type", "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "finetuning_task", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "_attn_implementation_autoset", "_attn_implementation", "auto_map", "use_cache",
    "initializer_range",
}
# Eagle25VLConfig fields for preprocessing or training only (tiling, chat template, checkpointing, LoRA init).
_EAGLE_IGNORED = {"pad2square", "template", "dynamic_image_size", "use_thumbnail", "loss_version", "min_dynamic_tiles",
                  "max_dynamic_tiles", "mlp_checkpoint", "llm_config", "tie_word_embeddings"}
_EAGLE_USED = {"vision_config", "text_config", "select_layer", "downsample_ratio", "use_pixel_shuffle",
               "mlp_connector_layers", "image_token_index", "force_image_size", "use_backbone_lora", "use_llm_lora"}
# Eagle25VLConfig's own defaults, for keys a config leaves out.
_EAGLE_DEFAULTS = {"select_layer": -4, "downsample_ratio": 0.5, "use_pixel_shuffle": True, "mlp_connector_layers": 2,
                   "image_token_index": None, "force_image_size": None, "use_backbone_lora": 0, "use_llm_lora": 0}
_TEXT_IGNORED = {"max_window_layers", "sliding_window", "layer_types", "rope_scaling", "rope_parameters",
                 "use_sliding_window"}


def _unused(key: str, prefix: str, select_layer: int, vision_layers: int | None = None) -> bool:
    p = f"{prefix}." if prefix else ""
    if key.startswith(f"{p}vision_model.vision_model.") and (".post_layernorm." in key or ".head." in key):
        return True
    if key.startswith(f"{p}language_model.lm_head."):
        return True
    m = re.match(rf"{re.escape(p)}vision_model\.vision_model\.encoder\.layers\.(\d+)\.", key)
    if m and vision_layers is not None and int(m.group(1)) >= vision_layers:  # past the vision select_layer
        return True
    m = re.match(rf"{re.escape(p)}language_model\.model\.layers\.(\d+)\.", key)
    return bool(m and int(m.group(1)) >= select_layer)


def load_eagle_weights(
    backbone, tensors: Mapping[str, Tensor], *, prefix: str = "", projector: str | None = None, strict: bool = True
) -> LoadReport:
    """Load reference-named Eagle tensors under ``prefix`` into ``backbone`` (other keys are ignored)."""
    p = f"{prefix}." if prefix else ""
    cfg = backbone.config
    keep = {k: v for k, v in tensors.items()
            if (k.startswith(p) or (projector and k.startswith(projector + ".")))
            and not _unused(k, prefix, cfg.select_layer, int(cfg.vision["num_hidden_layers"]))}
    return load_into(backbone, keep, name_mapping=eagle_name_mapping(prefix, projector), strict=strict)


def _check(where: str, cfg: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(k for k in set(cfg) - known - _GENERIC if not k.startswith("_"))  # "_x": transformers internals
    if unknown:
        raise ConfigError(f"Eagle config {where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _refuse(key: str, value: Any, expected: str) -> None:
    raise ConfigError(f"Eagle config {key}: expected {expected}, received {value!r} (no vla equivalent)")


def config_from_eagle(eagle_config: Mapping[str, Any], **overrides: Any) -> EagleConfig:
    """Our config from an Eagle 2 / 2.5 ``config.json`` (``vision_config``, ``text_config`` ...).

    Strict: every field is used, ignored by name (preprocessing, training, generic ``PretrainedConfig``
    keys, ``_``-prefixed transformers internals) or refused; a field left out takes ``Eagle25VLConfig``'s default (``select_layer=-4``,
    ``use_pixel_shuffle=True``, ``mlp_connector_layers=2``). Reference quirks reproduced: the vision
    ``select_layer`` indexes SigLIP's ``hidden_states`` (k >= 0: after k layers; negative: from the end),
    so the tower is built with only those layers and no final norm; ``-1`` takes ``last_hidden_state``
    *with* the final norm (refused). Refused: pixel shuffle with a 1-layer connector, a 2-layer connector
    without pixel shuffle (the reference cannot run it), LoRA-wrapped towers, ``force_image_size``
    other than the vision ``image_size``, sliding-window or scaled RoPE LLMs.
    """
    _check("", eagle_config, _EAGLE_USED | _EAGLE_IGNORED)
    top = {**_EAGLE_DEFAULTS, **eagle_config}
    text = dict(top["text_config"])
    vision_in = dict(top["vision_config"])
    _check("vision_config", vision_in, set(_VISION_KEYS) | {"vision_use_head"})
    _check("text_config", text, set(_LLM_KEYS) | _TEXT_IGNORED)
    arch = (text.get("architectures") or [text.get("model_type", "qwen3")])[0].lower()
    if "qwen" not in arch:
        _refuse("text_config.architectures", text.get("architectures"), "Qwen2ForCausalLM or Qwen3ForCausalLM")
    rope = text.get("rope_parameters") or {}
    if text.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        _refuse("text_config.rope_scaling", text.get("rope_scaling") or rope, "no RoPE scaling")
    if text.get("use_sliding_window"):
        _refuse("text_config.use_sliding_window", True, "False")
    llm = {k: text[k] for k in _LLM_KEYS if k in text}
    if "rope_theta" not in llm and "rope_theta" in rope:
        llm["rope_theta"] = rope["rope_theta"]
    if top["use_backbone_lora"] or top["use_llm_lora"]:
        _refuse("use_backbone_lora/use_llm_lora", (top["use_backbone_lora"], top["use_llm_lora"]), "0 (no LoRA)")
    shuffle, layers = bool(top["use_pixel_shuffle"]), int(top["mlp_connector_layers"])
    if (shuffle, layers) not in ((False, 1), (True, 2)):
        _refuse("use_pixel_shuffle/mlp_connector_layers", (shuffle, layers), "(False, 1) or (True, 2)")
    vision = {k: v for k, v in vision_in.items() if k in _VISION_KEYS}
    if top["force_image_size"] not in (None, vision.get("image_size")):
        _refuse("force_image_size", top["force_image_size"], f"None or the vision image_size {vision.get('image_size')}")
    total, sel = int(vision.get("num_hidden_layers", 12)), int(top["select_layer"])
    index = sel if sel >= 0 else total + 1 + sel  # hidden_states has total + 1 entries
    if sel == -1 or not 1 <= index <= total:
        _refuse("select_layer", sel, f"a SigLIP hidden-state index in 1..{total} or -{total}..-2 (-1 adds the final norm)")
    vision["num_hidden_layers"] = index
    if top["image_token_index"] is None:
        raise ConfigError("Eagle config image_token_index: required (the id of <IMG_CONTEXT>)")
    fields = {
        "vision": vision,
        "llm": llm,
        "llm_type": "qwen2" if "qwen2" in arch else "qwen3",
        "connector": "pixel_shuffle_mlp" if shuffle else "linear",
        "downsample_ratio": float(top["downsample_ratio"]),
        "image_token_id": int(top["image_token_index"]),
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
