"""``vla convert groot SRC DST``: an Isaac-GR00T N1.5 checkpoint directory -> vla policy (eagle + dit_flow_matching).

The directory (as ``GR00T_N1_5.save_pretrained`` writes it, e.g. a download of nvidia/GR00T-N1.5-3B or a
fine-tuned checkpoint) holds ``config.json`` (``GR00TN15Config``), ``model.safetensors`` or sharded
``model-*.safetensors`` with ``model.safetensors.index.json`` (keys ``backbone.eagle_model.*``,
``backbone.eagle_linear.*``, ``action_head.*``) and ``experiment_cfg/metadata.json`` (per embodiment tag:
``statistics`` and ``modalities`` of each state / action key). What the checkpoint does not hold is
explicit here, never guessed:

- ``eagle_config``: Eagle's ``config.json`` (Isaac-GR00T vendors it in its code,
  ``gr00t/model/backbone/eagle2_hg_model/config.json``);
- ``embodiment``: the tag whose statistics and row are used (the default embodiment of the policy);
- ``state_keys`` / ``action_keys``: the order in which the data config concatenates the modality keys
  (needed when the metadata has more than one key; the metadata's own order is not the data config's);
- ``cameras``: the video keys, in the data config's order (features ``observation.images.<key>``);
- ``normalization``: the data config's state/action normalization mode; only ``min_max`` (GR00T's
  ``2 (x - min) / (max - min) - 1``) is supported, and a zero range (which GR00T leaves unnormalized)
  is refused.

Everything else follows :mod:`vla_train.convert.lerobot_groot` (the same config translation and loaders).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from vla_core import ConfigError, load_tensors

from vla_train.convert.lerobot import read_json
from vla_train.convert.lerobot_groot import build_groot_policy, groot_policy_config, groot_tensors

NORMALIZATIONS = ("min_max",)


def _tensors(src: Path) -> dict[str, torch.Tensor]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{src}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_tensors(src / name))
    return tensors


def _concat(src: Path, meta: dict, modality: str, keys: Sequence[str] | None) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(keys, {"min", "max"}) of ``modality`` concatenated in ``keys`` order (default: the only key)."""
    stats = meta.get("statistics", {}).get(modality, {})
    if keys is None:
        if len(stats) != 1:
            raise ConfigError(f"{src}: metadata has {modality} keys {sorted(stats)}; pass {modality}_keys in the "
                              "data config's order (--state-keys / --action-keys)")
        keys = list(stats)
    missing = [k for k in keys if k not in stats]
    if missing:
        raise ConfigError(f"{src}: {modality} key(s) {missing} not in the metadata (has {sorted(stats)})")
    out = {}
    for stat in ("min", "max"):
        parts = []
        for key in keys:
            if stat not in stats[key]:
                raise ConfigError(f"{src}: metadata {modality}.{key} lacks {stat!r}")
            parts.append(torch.as_tensor(stats[key][stat], dtype=torch.float32).flatten())
        out[stat] = torch.cat(parts)
    zero = torch.nonzero(out["max"] == out["min"]).flatten().tolist()
    if zero:
        raise ConfigError(f"{src}: {modality} stats have a zero range at dims {zero}; GR00T leaves those "
                          "unnormalized, vla's min_max does not")
    return list(keys), out


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    eagle_config: str | os.PathLike,
    embodiment: str,
    cameras: Sequence[str],
    normalization: str,
    state_keys: Sequence[str] | None = None,
    action_keys: Sequence[str] | None = None,
    tokenizer: str | os.PathLike | None = None,
) -> Path:
    """Write the vla policy for the Isaac-GR00T N1.5 checkpoint directory ``src`` to ``dst`` (see the module doc)."""
    src, dst = Path(src), Path(dst)
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"normalization: expected one of {list(NORMALIZATIONS)}, received {normalization!r}")
    if not cameras:
        raise ConfigError("cameras: expected at least one video key (GR00T N1.5 needs an image)")
    n15 = read_json(src / "config.json")
    eagle_path = Path(eagle_config)
    eagle = read_json(eagle_path / "config.json" if eagle_path.is_dir() else eagle_path)
    meta_path = src / "experiment_cfg" / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: the normalization statistics of an Isaac-GR00T checkpoint")
    metadata = json.loads(meta_path.read_text())
    if embodiment not in metadata:
        raise ConfigError(f"{meta_path}: no embodiment {embodiment!r}; has {sorted(metadata)}")
    meta = metadata[embodiment]
    _, state = _concat(src, meta, "state", state_keys)
    _, action = _concat(src, meta, "action", action_keys)
    image_size = eagle["vision_config"]["image_size"]
    inputs = {f"observation.images.{k}": {"type": "VISUAL", "shape": [3, image_size, image_size]} for k in cameras}
    inputs["observation.state"] = {"type": "STATE", "shape": [int(state["min"].numel())]}
    outputs = {"action": {"type": "ACTION", "shape": [int(action["min"].numel())]}}
    config = groot_policy_config(n15, eagle, input_features=inputs, output_features=outputs,
                                 default_embodiment=embodiment, tokenizer=None if tokenizer is None else str(tokenizer),
                                 where=f"{src / 'config.json'}")
    config["backbone"]["image_keys"] = [f"observation.images.{k}" for k in cameras]  # the data config's order
    config["input_features"] = {**{k: inputs[k] for k in config["backbone"]["image_keys"]}, **config["input_features"]}
    head = config["head"]
    if embodiment not in head["embodiments"]:
        raise ConfigError(f"embodiment {embodiment!r} has no row among GR00T's tags {sorted(head['embodiments'])}")
    tied = bool(eagle.get("text_config", {}).get("tie_word_embeddings", False))
    tensors = groot_tensors(_tensors(src), "", tied=tied)
    stats = {"observation.state": state, "action": action}
    return build_groot_policy(config, tensors, "", stats).save_pretrained(dst)
