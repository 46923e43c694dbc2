"""Load a local PaliGemma directory written by transformers' ``save_pretrained``.

Two key layouts exist: transformers >= 4.52 (and the 5.x series) nest everything under ``model.``;
older releases (and the original hub checkpoints) use ``language_model.model.`` for the decoder.
Both are handled by a name mapping (ours -> theirs); ``lm_head`` is tied to the embedding and dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from vla_core import CheckpointError, load_into, load_tensors

NAME_MAPPINGS = {
    "flat_siglip": {  # later transformers 5.x: SigLIP parameters no longer sit under ``vision_model``
        "vision_tower.vision_model": "model.vision_tower",
        "multi_modal_projector": "model.multi_modal_projector",
        "language_model": "model.language_model",
    },
    "nested": {  # transformers 4.52 .. 5.5
        "vision_tower": "model.vision_tower",
        "multi_modal_projector": "model.multi_modal_projector",
        "language_model": "model.language_model",
    },
    "legacy": {  # transformers < 4.52, google/paligemma-* on the hub
        "vision_tower": "vision_tower",
        "multi_modal_projector": "multi_modal_projector",
        "language_model": "language_model.model",
    },
}
DROPPED = ("lm_head.weight", "language_model.lm_head.weight")


def _rope_theta(text: Any) -> float:
    theta = getattr(text, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(text, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def config_from_pretrained(path: str | os.PathLike) -> dict[str, Any]:
    """Our config fields read from the directory's ``config.json`` (transformers' defaults filled in)."""
    from transformers import PaliGemmaConfig

    hf = PaliGemmaConfig.from_pretrained(str(path), local_files_only=True)
    text, vision = hf.text_config, hf.vision_config
    return {
        "image_size": vision.image_size,
        "vision_width": vision.hidden_size,
        "vision_depth": vision.num_hidden_layers,
        "vision_mlp_dim": vision.intermediate_size,
        "vision_num_heads": vision.num_attention_heads,
        "patch_size": vision.patch_size,
        "vision_eps": vision.layer_norm_eps,
        "width": text.hidden_size,
        "depth": text.num_hidden_layers,
        "mlp_dim": text.intermediate_size,
        "num_heads": text.num_attention_heads,
        "num_kv_heads": text.num_key_value_heads,
        "head_dim": text.head_dim,
        "vocab_size": text.vocab_size,
        "rms_eps": text.rms_norm_eps,
        "rope_theta": _rope_theta(text),
        "pretrained": str(path),
    }


def read_weights(path: str | os.PathLike) -> dict:
    """All tensors of ``model.safetensors`` or of the shards named by ``model.safetensors.index.json``."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_tensors(path / shard))
        return tensors
    return load_tensors(path / "model.safetensors")


def load_paligemma_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load the PaliGemma weights in ``path`` into a :class:`PaliGemmaBackbone` (strict, no lm_head)."""
    tensors = {k: v for k, v in read_weights(path).items() if k not in DROPPED}
    if any(k.startswith("model.vision_tower.vision_model.") for k in tensors):
        layout = "nested"
    elif any(k.startswith("model.vision_tower.") for k in tensors):
        layout = "flat_siglip"
    else:
        layout = "legacy"
    if layout == "legacy" and not any(k.startswith("language_model.model.") for k in tensors):
        raise CheckpointError(f"{path}: no PaliGemma language-model weights found (keys: {sorted(tensors)[:5]} ...)")
    load_into(module, tensors, name_mapping=NAME_MAPPINGS[layout], strict=True)
