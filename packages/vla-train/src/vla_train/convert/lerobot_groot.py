"""GR00T N1.5 -> vla policy (``eagle`` backbone + ``dit_flow_matching`` head): LeRobot 0.5.1 ``groot``
policy directories (:func:`convert`) and Isaac-GR00T checkpoint directories (``vla_train.convert.groot``).

A LeRobot 0.5.1 ``groot`` directory holds ``config.json`` (``GrootConfig``: features, ``base_model_path``,
``embodiment_tag``, ``tune_*``), ``model.safetensors`` (keys under ``_groot_model.``) and its processors
(``policy_preprocessor.json`` with the ``groot_pack_inputs_v3`` step's settings and stats). It holds no
architecture: LeRobot rebuilds the model from the *base model*'s ``config.json`` (``GR00TN15Config``:
``backbone_cfg``, ``action_head_cfg``) and Eagle from ``$HF_LEROBOT_HOME/<tokenizer_assets_repo>/config.json``.
Both are explicit options here (``base_model``, ``eagle_config``); the defaults are the paths LeRobot
itself reads (``base_model_path`` when it is a local directory, the Eagle cache file when it exists),
and a missing one is an error naming the option. Only ``config.json`` of the base model is read.

Reference quirks reproduced (each named where it is handled):

- normalization is the pack step's min-max to [-1, 1] whatever ``normalization_mapping`` says, and
  a feature without stats is left as is; a zero range maps to 0 in LeRobot but not here, so stats
  with a zero range are refused;
- cameras enter the prompt in *sorted* key order; the embodiment row is
  ``embodiment_mapping.get(embodiment_tag, 0)`` (an unknown tag selects row 0);
- ``n_action_steps`` below the horizon makes LeRobot's action queue (a ``deque(maxlen=n)``) keep the
  *last* n actions of each chunk: refused; at or above it, the whole chunk is executed;
- ``tune_projector=False`` freezes the state/action encoders, the decoder and the action positions but
  not the future tokens or the VL stack; ``backbone_cfg.project_to_dim`` builds ``Linear(2048, dim)``
  whatever the LLM width (refused unless the LLM is 2048 wide); ``backbone_cfg.select_layer`` -1 (the
  class default) pops *every* LLM layer (refused).
- the full head/Eagle quirks are in :func:`~vla_heads.dit_flow_matching.convert.head_config_from_groot`
  and :func:`~vla_backbones.eagle.convert.config_from_eagle`.

Parity (tests/interop/test_groot_convert_lerobot.py) is checked on pre-tokenized ``eagle_*`` inputs:
LeRobot's Eagle text/image processor (uint8 quantization, remote-code tokenizer) is not reproduced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from vla_backbones.eagle.convert import config_from_eagle, load_eagle_weights
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_tensors
from vla_core.paths import inside
from vla_heads.dit_flow_matching.convert import head_config_from_groot, load_groot_head

from vla_train.convert.lerobot import read_json

LEROBOT_PREFIX = "_groot_model"
DEFAULT_ASSETS_REPO = "lerobot/eagle2hg-processor-groot-n1p5"

# GR00TN15Config (top level of a GR00T N1.5 config.json): used, or ignored by name.
_N15_USED = {"backbone_cfg", "action_head_cfg", "action_horizon", "action_dim"}
_N15_IGNORED = {"compute_dtype", "model_dtype", "hidden_size", "model_type", "architectures", "transformers_version",
                "torch_dtype", "dtype", "_name_or_path", "attn_implementation", "_attn_implementation_autoset"}
# EagleBackbone(**backbone_cfg) defaults; eagle_path / use_flash_attention / load_bf16 are unused by it.
_BACKBONE_DEFAULTS = {"tune_llm": False, "tune_visual": False, "select_layer": -1, "reproject_vision": False,
                      "project_to_dim": 1536}
_BACKBONE_IGNORED = {"eagle_path", "use_flash_attention", "load_bf16", "tokenizer_assets_repo"}
# GrootConfig / PreTrainedConfig fields that cannot change the converted policy's outputs.
_LEROBOT_USED = {"type", "n_obs_steps", "input_features", "output_features", "chunk_size", "n_action_steps",
                 "max_state_dim", "max_action_dim", "base_model_path", "tokenizer_assets_repo", "embodiment_tag",
                 "tune_llm", "tune_visual", "tune_projector", "tune_diffusion_model", "use_peft", "use_bf16"}
_LEROBOT_IGNORED = {
    "normalization_mapping",  # unused by the groot processors (always min-max, see the module docstring)
    "image_size",  # unused by LeRobot 0.5.1's groot
    "lora_rank", "lora_alpha", "lora_dropout", "lora_full_model",  # never applied by LeRobot 0.5.1's groot
    "device", "use_amp", "push_to_hub", "repo_id", "private", "tags", "license", "pretrained_path",
    "optimizer_lr", "optimizer_betas", "optimizer_eps", "optimizer_weight_decay", "warmup_ratio",
    "video_backend", "balance_dataset_weights", "balance_trajectory_weights", "dataset_paths", "output_dir",
    "save_steps", "max_steps", "batch_size", "dataloader_num_workers", "report_to", "resume",
}
_PACK_STEP = "groot_pack_inputs_v3"
_UNPACK_STEP = "groot_action_unpack_unnormalize_v1"
_KNOWN_STEPS = {"rename_observations_processor", "to_batch_processor", _PACK_STEP, "groot_eagle_encode_v3",
                "groot_eagle_collate_v3", "device_processor", _UNPACK_STEP}


def _refuse_unknown(where: str, cfg: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def groot_policy_config(
    n15: Mapping[str, Any],
    eagle: Mapping[str, Any],
    *,
    input_features: Mapping[str, Any],
    output_features: Mapping[str, Any],
    embodiments: Mapping[str, int] | None = None,
    default_embodiment: str | None = None,
    normalize: bool = True,
    tune: Mapping[str, bool] | None = None,
    tokenizer: str | None = None,
    where: str = "GR00T config.json",
) -> dict[str, Any]:
    """Our VLAPolicy config from a GR00T N1.5 ``config.json`` (``n15``) and an Eagle ``config.json``.

    ``tune`` overrides ``backbone_cfg``'s ``tune_llm`` / ``tune_visual`` and gives ``tune_projector`` /
    ``tune_diffusion_model`` (GR00TN15.from_pretrained's arguments). Strict on unknown fields.
    """
    _refuse_unknown(where, n15, _N15_USED | _N15_IGNORED)
    head_cfg, raw_backbone = n15["action_head_cfg"], n15["backbone_cfg"]
    _refuse_unknown(f"{where}: backbone_cfg", raw_backbone, set(_BACKBONE_DEFAULTS) | _BACKBONE_IGNORED)
    backbone_cfg = {**_BACKBONE_DEFAULTS, **raw_backbone}
    for key in ("action_horizon", "action_dim"):  # GR00TN15.validate_data checks the head's output against them
        if key in n15 and int(n15[key]) != int(head_cfg[key]):
            raise ConfigError(f"{where}: {key} {n15[key]} differs from action_head_cfg.{key} {head_cfg[key]}")
    if backbone_cfg["reproject_vision"]:
        raise ConfigError(f"{where}: backbone_cfg.reproject_vision must be false (the reference asserts it)")
    select = int(backbone_cfg["select_layer"])
    if select < 1:  # EagleBackbone pops LLM layers while len(layers) > select_layer: -1 pops them all
        raise ConfigError(f"{where}: backbone_cfg.select_layer must be >= 1, received {select}")
    tune = {"tune_llm": backbone_cfg["tune_llm"], "tune_visual": backbone_cfg["tune_visual"],
            "tune_projector": True, "tune_diffusion_model": True, **(tune or {})}
    image_keys = tuple(sorted(k for k, f in input_features.items() if f["type"] == "VISUAL"))  # LeRobot sorts them
    project = backbone_cfg["project_to_dim"]
    backbone = config_from_eagle(eagle, select_layer=select, image_keys=image_keys, project_to_dim=project,
                                 tune_llm=bool(tune["tune_llm"]), tune_visual=bool(tune["tune_visual"]),
                                 tokenizer_path=tokenizer).to_dict()
    if project is not None and int(backbone["llm"]["hidden_size"]) != 2048:  # EagleBackbone: Linear(2048, dim)
        raise ConfigError(f"{where}: backbone_cfg.project_to_dim builds Linear(2048, {project}) in the reference, "
                          f"which cannot take this LLM's width {backbone['llm']['hidden_size']}")
    state = input_features.get("observation.state")
    action = output_features.get("action")
    if action is None:
        raise ConfigError(f"{where}: output_features has no 'action'")
    head = head_config_from_groot(head_cfg, action_dim=int(action["shape"][0]), embodiments=embodiments,
                                  default_embodiment=default_embodiment)
    width = backbone["project_to_dim"] or int(backbone["llm"]["hidden_size"])
    if width != head["context_dim"]:  # the reference would fail; vla would insert a projector: refuse
        raise ConfigError(f"{where}: the Eagle backbone gives width {width} but the action head expects "
                          f"{head['context_dim']} (backbone_embedding_dim / cross_attention_dim)")
    freeze = []
    if not tune["tune_projector"]:  # not the future tokens nor the VL stack (as the reference)
        freeze += ["head.state_encoder.*", "head.action_encoder.*", "head.action_decoder.*", "head.pos_embed.*"]
    if not tune["tune_diffusion_model"]:
        if head["dropout"]:  # the reference also puts the frozen DiT in eval mode (no dropout) while training
            raise ConfigError(f"{where}: tune_diffusion_model=False with DiT dropout {head['dropout']} trains the "
                              "DiT without dropout in the reference; vla has no such switch")
        freeze.append("head.dit.*")
    mode = "min_max" if normalize else "identity"
    inputs = {k: input_features[k] for k in image_keys}  # the cameras in the prompt's (sorted) order
    inputs.update({k: f for k, f in input_features.items() if k not in inputs})
    features = {"input_features": {**inputs, "task": {"type": "LANGUAGE", "shape": []}},
                "output_features": dict(output_features)}
    return {
        **features,
        "normalization": {"VISUAL": "identity", "STATE": mode, "ACTION": mode},
        "n_action_steps": head["horizon"],
        "backbone": {"type": "eagle", **{k: v for k, v in backbone.items() if k != "type"}},
        "head": {"type": "dit_flow_matching", **head, "state_dim": None if state is None else int(state["shape"][0])},
        "freeze": freeze,
    }


def groot_tensors(tensors: Mapping[str, torch.Tensor], prefix: str, *, tied: bool) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, every key under ``prefix`` checked: ``backbone.eagle_model.*``,
    ``backbone.eagle_linear.*`` or ``action_head.*``; a tied embedding saved only as ``lm_head`` is restored."""
    p = f"{prefix}." if prefix else ""
    parts = (f"{p}backbone.eagle_model.", f"{p}backbone.eagle_linear.", f"{p}action_head.")
    unknown = sorted(k for k in tensors if not k.startswith(parts))
    if unknown:
        raise CheckpointError(f"GR00T checkpoint: unexpected tensor(s) {unknown[:5]} (expected keys under {parts})")
    out = dict(tensors)
    embed, head = f"{p}backbone.eagle_model.language_model.model.embed_tokens.weight", f"{p}backbone.eagle_model.language_model.lm_head.weight"
    if embed not in out and head in out and tied:  # tie_word_embeddings: safetensors kept one name
        out[embed] = out[head]
    return out


def build_groot_policy(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], prefix: str,
                       stats: Mapping[str, Mapping[str, torch.Tensor]]) -> VLAPolicy:
    """The policy for ``config`` with the GR00T tensors under ``prefix`` and the normalization ``stats``."""
    policy = VLAPolicy(config)
    p = f"{prefix}." if prefix else ""
    projector = f"{p}backbone.eagle_linear" if config["backbone"].get("project_to_dim") else None
    if projector is None and any(k.startswith(f"{p}backbone.eagle_linear.") for k in tensors):
        raise CheckpointError("GR00T checkpoint holds backbone.eagle_linear but backbone_cfg.project_to_dim is null")
    load_eagle_weights(policy.backbone, tensors, prefix=f"{p}backbone.eagle_model", projector=projector)
    load_groot_head(policy.head, tensors, prefix=f"{p}action_head")
    if any(policy.normalizer.stats_of(k) for k in policy.normalizer.modes):
        policy.normalizer.set_stats(stats)
    return policy


def _processor_step(src: Path, pipeline: str, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state tensors) of step ``name`` in ``src/<pipeline>.json``; unknown steps are refused."""
    path = src / f"{pipeline}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a LeRobot 0.5.1 groot directory saves its processors there")
    steps = read_json(path).get("steps", [])
    found = None
    for step in steps:
        reg = step.get("registry_name")
        if reg not in _KNOWN_STEPS:
            raise ConfigError(f"{path}: unknown processor step {reg!r}; known: {sorted(_KNOWN_STEPS)}")
        if reg == "rename_observations_processor" and step.get("config", {}).get("rename_map"):
            raise ConfigError(f"{path}: a non-empty rename_map is not supported (rename the features instead)")
        if reg == name:
            found = step
    if found is None:
        raise ConfigError(f"{path}: no {name!r} step")
    state = {}
    if found.get("state_file"):
        state = load_tensors(inside(src, str(found["state_file"]), f"{path.name}: state_file"))
    return dict(found.get("config", {})), state


def _stats(flat: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in flat.items():
        key, _, stat = name.rpartition(".")
        out.setdefault(key, {})[stat] = tensor
    return out


def lerobot_stats(src: Path, features: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], bool]:
    """(pack-step config, stats, normalize) from LeRobot's processors, checked against each other."""
    pack, pack_state = _processor_step(src, "policy_preprocessor", _PACK_STEP)
    unpack, unpack_state = _processor_step(src, "policy_postprocessor", _UNPACK_STEP)
    if pack.get("formalize_language"):
        raise ConfigError(f"{src}: {_PACK_STEP}.formalize_language=True (lower-cased, stripped task text) is not supported")
    if int(pack.get("state_horizon", 1)) != 1:
        raise ConfigError(f"{src}: {_PACK_STEP}.state_horizon must be 1, received {pack['state_horizon']}")
    normalize = bool(pack.get("normalize_min_max", True))
    if normalize != bool(unpack.get("normalize_min_max", True)):
        raise ConfigError(f"{src}: the pre- and postprocessor disagree on normalize_min_max")
    stats = _stats(pack_state) if normalize else {}
    post = _stats(unpack_state).get("action", {})
    for stat in ("min", "max"):
        if normalize and "action" in stats and not torch.equal(stats["action"][stat], post.get(stat, torch.empty(0))):
            raise ConfigError(f"{src}: the postprocessor's action {stat} differs from the preprocessor's")
    if normalize and "action" in features and "action" not in stats:  # the postprocessor's defaults: min 0, max 1
        raise ConfigError(f"{src}: no action stats: LeRobot's postprocessor then maps actions y to (y + 1) / 2")
    for key in (k for k in ("observation.state", "action") if k in features and k in stats):
        s = stats[key]
        if "min" not in s or "max" not in s:  # LeRobot then uses 0 / 1 per missing stat: refuse instead
            raise ConfigError(f"{src}: stats for {key!r} lack min or max, received {sorted(s)}")
        if bool((s["max"] == s["min"]).any()):
            raise ConfigError(f"{src}: stats for {key!r} have a zero range (max == min at dims "
                              f"{torch.nonzero(s['max'] == s['min']).flatten().tolist()}); LeRobot maps those to 0, "
                              "vla's min_max does not")
    return pack, stats, normalize


def _base_config(lr: Mapping[str, Any], base_model: str | os.PathLike | None) -> dict[str, Any]:
    given = base_model if base_model is not None else lr.get("base_model_path")
    path = Path(str(given)).expanduser() if given else None
    if path is None or not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"GR00T base model config not found (base_model_path={lr.get('base_model_path')!r}; tried {path}): pass "
            "base_model= (--base-model) a local directory holding the base model's config.json (e.g. a download "
            "of nvidia/GR00T-N1.5-3B); LeRobot rebuilds the architecture from it"
        )
    return read_json(path / "config.json")


def _eagle_config(lr: Mapping[str, Any], eagle_config: str | os.PathLike | None) -> dict[str, Any]:
    if eagle_config is None:
        from huggingface_hub.constants import HF_HOME

        home = Path(os.environ.get("HF_LEROBOT_HOME", Path(HF_HOME) / "lerobot"))
        eagle_config = home / lr.get("tokenizer_assets_repo", DEFAULT_ASSETS_REPO)
    path = Path(eagle_config).expanduser()
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"Eagle config not found at {path}: pass eagle_config= (--eagle-config) the Eagle config.json "
            "LeRobot reads ($HF_LEROBOT_HOME/<tokenizer_assets_repo>/config.json, from "
            "lerobot/eagle2hg-processor-groot-n1p5)"
        )
    return read_json(path)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, base_model: str | os.PathLike | None = None,
            eagle_config: str | os.PathLike | None = None, tokenizer: str | os.PathLike | None = None) -> Path:
    """Write the vla policy for the LeRobot 0.5.1 ``groot`` directory ``src`` to ``dst``.

    ``base_model``: the GR00T base model directory (its ``config.json``; default ``base_model_path``).
    ``eagle_config``: Eagle's ``config.json`` or its directory (default: LeRobot's Eagle cache).
    ``tokenizer``: a local Eagle tokenizer directory for ``task`` strings (optional: without it the
    policy takes pre-tokenized ``eagle_input_ids`` / ``eagle_attention_mask`` / ``eagle_pixel_values``).
    """
    src, dst = Path(src), Path(dst)
    lr = read_json(src / "config.json")
    if lr.get("type") != "groot":
        raise ConfigError(f"{src / 'config.json'}: expected a LeRobot groot policy, received type {lr.get('type')!r}")
    _refuse_unknown(f"{src / 'config.json'}", lr, _LEROBOT_USED | _LEROBOT_IGNORED)
    if lr.get("use_peft"):
        raise ConfigError(f"{src / 'config.json'}: use_peft=True (an adapter checkpoint) is not supported")
    if int(lr.get("n_obs_steps", 1)) != 1:
        raise ConfigError(f"{src / 'config.json'}: n_obs_steps must be 1, received {lr['n_obs_steps']}")
    n15, eagle = _base_config(lr, base_model), _eagle_config(lr, eagle_config)
    horizon = int(n15["action_head_cfg"]["action_horizon"])
    if int(lr.get("n_action_steps", 50)) < horizon:  # deque(maxlen=n).extend(chunk) keeps the chunk's last n
        raise ConfigError(f"{src / 'config.json'}: n_action_steps {lr['n_action_steps']} < the horizon {horizon}: "
                          "LeRobot then executes the last n actions of each chunk; vla executes the first")
    for ours, theirs in (("max_state_dim", "max_state_dim"), ("max_action_dim", "action_dim")):
        if ours in lr and int(lr[ours]) != int(n15["action_head_cfg"][theirs]):
            raise ConfigError(f"{src / 'config.json'}: {ours} {lr[ours]} differs from the base model's "
                              f"action_head_cfg.{theirs} {n15['action_head_cfg'][theirs]} (LeRobot would fail)")
    features = {**lr["input_features"], **lr["output_features"]}
    visual = [k for k, f in lr["input_features"].items() if f.get("type") == "VISUAL"]
    if any(k.startswith("observation.images.") for k in visual) and not all(
            k.startswith("observation.images.") for k in visual):  # the pack step then drops the others
        raise ConfigError(f"{src / 'config.json'}: cameras {visual}: LeRobot's groot reads only the "
                          "observation.images.* ones when there are any")
    pack, stats, normalize = lerobot_stats(src, features)
    mapping = {str(k): int(v) for k, v in pack.get("embodiment_mapping", {}).items()}
    tag = str(pack.get("embodiment_tag", lr.get("embodiment_tag", "new_embodiment")))
    rows = int(n15["action_head_cfg"].get("max_num_embodiments", 32))
    if tag in mapping and mapping[tag] >= rows:
        raise ConfigError(f"{src}: embodiment_tag {tag!r} selects row {mapping[tag]} of {rows} embodiment rows")
    # LeRobot: embodiment_mapping.get(tag, 0); head_config_from_groot's default for an unknown tag is row 0 too
    config = groot_policy_config(
        n15, eagle, input_features=lr["input_features"], output_features=lr["output_features"],
        embodiments=mapping, default_embodiment=tag if tag in mapping else None, normalize=normalize,
        tune={k: bool(lr.get(k, d)) for k, d in (("tune_llm", False), ("tune_visual", False), ("tune_projector", True),
                                                  ("tune_diffusion_model", True))},
        tokenizer=None if tokenizer is None else str(tokenizer), where="GR00T base config.json",
    )
    if normalize and "observation.state" not in stats:  # LeRobot leaves a state without stats as is
        config["normalization"]["observation.state"] = "identity"
    tied = bool(eagle.get("text_config", {}).get("tie_word_embeddings", False))
    tensors = groot_tensors(load_tensors(src / "model.safetensors"), LEROBOT_PREFIX, tied=tied)
    return build_groot_policy(config, tensors, LEROBOT_PREFIX, stats).save_pretrained(dst)
