"""Load a local PaliGemma directory written by transformers' ``save_pretrained``.

The key layout differs between transformers releases (``model.language_model.`` or
``language_model.model.``; SigLIP under ``vision_model.`` or not): :data:`PART_PREFIXES` lists the
known places of each part and the loader maps the ones it finds (a name mapping, ours <- theirs).
``lm_head`` (tied to the embedding) and SigLIP's pooling ``head`` are unused by PaliGemma and dropped.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from torch import nn
from vla_core import CheckpointError, load_into, load_tensors

# Where each part of PaliGemma lives in the checkpoint files, most specific first: ours <- one of these.
PART_PREFIXES = {
    "vision_tower.vision_model": (
        "model.vision_tower.vision_model",  # transformers 4.52 .. 5.5 in memory
        "vision_tower.vision_model",  # original hub files
        "model.vision_tower",  # later 5.x in memory (SigLIP lost its ``vision_model`` level)
        "vision_tower",  # later 5.x save_pretrained
    ),
    "multi_modal_projector": ("model.multi_modal_projector", "multi_modal_projector"),
    "language_model": ("model.language_model", "language_model.model"),
}
UNUSED = re.compile(r"(^|\.)lm_head\.weight$|vision_tower\.(vision_model\.)?head\.")


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


def name_mapping(keys: list[str]) -> dict[str, str]:
    """ours -> theirs prefixes for the layout ``keys`` use (raises when a part is missing)."""
    mapping = {}
    for ours, candidates in PART_PREFIXES.items():
        found = next((c for c in candidates if any(k.startswith(c + ".") for k in keys)), None)
        if found is None:
            raise CheckpointError(f"no PaliGemma {ours} weights found under any of {candidates} (keys: {keys[:5]} ...)")
        mapping[ours] = found
    return mapping


def load_paligemma_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load the PaliGemma weights in ``path`` into a :class:`PaliGemmaBackbone` (strict, no lm_head)."""
    tensors = {k: v for k, v in read_weights(path).items() if not UNUSED.search(k)}
    load_into(module, tensors, name_mapping=name_mapping(sorted(tensors)), strict=True)
