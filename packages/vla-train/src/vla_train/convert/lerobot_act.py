"""LeRobot 0.6.x ACT policy directory -> vla policy (``resnet_act`` backbone + ``act_vae`` head).

Reads ``config.json``, ``model.safetensors`` and the processor files (``policy_preprocessor.json`` /
``policy_postprocessor.json`` and the normalizer stats they name). Nothing is guessed:

- every ``config.json`` field is either read (:data:`ARCHITECTURE_FIELDS`, features, normalization),
  known to leave a saved policy's outputs unchanged (:data:`IGNORED_FIELDS`: hub, device and optimizer
  settings, ``pretrained_backbone_weights``, whose weights the checkpoint replaces) or refused by name;
  a field the file lacks takes LeRobot 0.6.1's ``ACTConfig`` default (:data:`DEFAULTS`), as LeRobot
  itself does when it loads the directory;
- every architecture field is checked against the tensors it shapes (a mismatch names the field, the
  tensor and both values): LeRobot loads with ``strict=False`` and would leave such layers random;
- every tensor is renamed by :data:`NAME_MAPPING` (whole dotted prefixes) and loaded strictly; a tensor
  under no prefix is refused by its LeRobot name;
- every processor step is known (renaming with an empty map, batching, device moves without a dtype
  cast, the (un)normalizer) and the normalizer's modes, features and ``eps`` agree with ``config.json``.

Reference quirks (LeRobot 0.6.1), each reproduced or refused:

1. ``n_decoder_layers``: LeRobot builds and runs all of them, then ``decoder.norm``. Its default is 1
   because the original ACT built 7 but used only the first layer's output (tonyzhaozh/act#25): a
   LeRobot checkpoint with ``n_decoder_layers: 7`` runs 7 layers, and so does the converted policy.
2. ``decoder.norm`` (a LayerNorm) follows the last decoder layer with post-norm too (right after that
   layer's own ``norm3``); the encoders' final norm exists only with ``pre_norm`` (Identity otherwise).
3. A feature type missing from ``normalization_mapping`` is not normalized (IDENTITY): under ACT's
   default mapping (VISUAL, STATE, ACTION) ``observation.environment_state`` goes in raw. Every type
   is set explicitly here (our own default for ENV would be ``mean_std``).
4. Only the STATE feature named ``observation.state`` becomes ACT's state token (another STATE
   feature is ignored by the model); the ENV feature is read from ``observation.environment_state``
   whatever its declared name; only ``action`` is predicted. Other feature names are refused.
5. Without a state feature LeRobot's forward still reads ``batch["observation.state"]`` (for a
   device) and raises ``KeyError`` when it is absent; the converted policy needs no state key.
6. ``feedforward_activation: glu`` builds, but ``F.glu`` halves ``linear1``'s output and ``linear2``
   then fails at the first forward: no working checkpoint uses it; refused.
7. ``temporal_ensemble_coeff``: weight ``exp(-coeff * i)`` with ``i = 0`` the *oldest* prediction of a
   step (coeff > 0 favours older chunks), ``n_action_steps`` must be 1; the policy's
   ``TemporalEnsembler`` is the same online average.
8. Normalization divides by ``std + eps`` (MEAN_STD) or by the range, ``eps`` where the range is 0;
   MEAN_STD's inverse is ``y * std + mean`` without ``eps`` (ours multiplies by ``std + eps``: a
   relative 1e-8). Where a std or range is 0, LeRobot divides by ``eps`` (ours by 1) and its MEAN_STD
   inverse returns the mean: such stats are refused, naming the feature.
9. The training loss's L1 is averaged over the non-padded steps (the original ACT averaged over all
   elements), plus ``kl_weight`` x KL summed over the latent and averaged over the batch. In eval mode
   the forward uses the zero latent and no KL (``act_vae`` does the same).
10. ``replace_final_stride_with_dilation`` is typed ``int`` (0 / 1 or a bool); torchvision's
    BasicBlock cannot dilate, so only resnet50 and deeper have it. ``vision_backbone`` must start with
    ``resnet`` (LeRobot refuses resnext / wide_resnet).
11. The 2D sine positions split ``dim_model // 2`` channels per axis into sin / cos pairs: LeRobot's
    forward fails unless ``dim_model`` is a multiple of 4.
12. ``dropout`` has no effect in eval mode but is converted (it shapes training).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_into, load_tensors

from vla_train.convert.lerobot import (
    check_fields,
    check_processors,
    check_stats,
    count_indices,
    normalization_modes,
    read_json,
    read_lerobot_stats,
)

# ours <- theirs (vla_core.load_into's ``name_mapping``): whole dotted prefixes.
NAME_MAPPING: dict[str, str] = {
    "backbone.resnet": "model.backbone",
    "backbone.proj": "model.encoder_img_feat_input_proj",
    "head.vae_encoder": "model.vae_encoder",
    "head.vae_cls_embed": "model.vae_encoder_cls_embed",
    "head.vae_state_proj": "model.vae_encoder_robot_state_input_proj",
    "head.vae_action_proj": "model.vae_encoder_action_input_proj",
    "head.vae_latent_proj": "model.vae_encoder_latent_output_proj",
    "head.vae_pos_embed": "model.vae_encoder_pos_enc",
    "head.latent_proj": "model.encoder_latent_input_proj",
    "head.state_proj": "model.encoder_robot_state_input_proj",
    "head.env_state_proj": "model.encoder_env_state_input_proj",
    "head.token_pos_embed": "model.encoder_1d_feature_pos_embed",
    "head.encoder": "model.encoder",
    "head.decoder": "model.decoder",
    "head.query_pos_embed": "model.decoder_pos_embed",
    "head.action_proj": "model.action_head",
}

# LeRobot 0.6.1 ``ACTConfig`` defaults of the fields read here (used when config.json lacks one).
DEFAULTS: dict[str, Any] = {
    "n_obs_steps": 1,
    "chunk_size": 100,
    "n_action_steps": 100,
    "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
    "vision_backbone": "resnet18",
    "replace_final_stride_with_dilation": False,
    "pre_norm": False,
    "dim_model": 512,
    "n_heads": 8,
    "dim_feedforward": 3200,
    "feedforward_activation": "relu",
    "n_encoder_layers": 4,
    "n_decoder_layers": 1,
    "use_vae": True,
    "latent_dim": 32,
    "n_vae_encoder_layers": 4,
    "temporal_ensemble_coeff": None,
    "dropout": 0.1,
    "kl_weight": 10.0,
}
ARCHITECTURE_FIELDS = frozenset(DEFAULTS) | {"type", "input_features", "output_features"}
# Fields with no effect on a saved policy's outputs (besides lerobot.COMMON_IGNORED_FIELDS): optimizer
# presets, and the torchvision weights the backbone started from (the checkpoint holds the trained ones).
IGNORED_FIELDS = frozenset({"optimizer_lr", "optimizer_weight_decay", "optimizer_lr_backbone",
                            "pretrained_backbone_weights"})

OBS_STATE, OBS_ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"

# (blocks per stage, bottleneck) of the ResNets ``vision_backbone`` may name (LeRobot: "resnet*").
RESNET_LAYOUTS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}

def _field(lr_config: dict[str, Any], name: str) -> Any:
    return lr_config[name] if name in lr_config else DEFAULTS[name]


def check_features(lr_config: dict[str, Any]) -> None:
    """The features ACT's model reads, under the names its forward reads them by (quirk 4)."""
    for key, f in lr_config["input_features"].items():
        ok = {"STATE": key == OBS_STATE, "ENV": key == OBS_ENV_STATE, "VISUAL": True}.get(f["type"], False)
        if not ok:
            raise ConfigError(
                f"config.json input_features[{key!r}] (type {f['type']}): LeRobot's ACT reads only "
                f"{OBS_STATE!r} (STATE), {OBS_ENV_STATE!r} (ENV) and VISUAL features; it would ignore or fail "
                "on this one, so it is not converted"
            )
    outputs = lr_config["output_features"]
    if list(outputs) != [ACTION] or outputs[ACTION]["type"] != "ACTION":
        raise ConfigError(f"config.json output_features: LeRobot's ACT predicts exactly {ACTION!r} (ACTION), "
                          f"received {dict(outputs)}")
    if not any(f["type"] == "VISUAL" for f in lr_config["input_features"].values()):
        raise ConfigError(
            "config.json input_features: this ACT policy has no camera (LeRobot allows environment state "
            "alone); resnet_act needs at least one VISUAL feature, so it is not converted"
        )


def _expect(field: str, value: Any, tensor: str, found: Any) -> None:
    if value != found:
        raise CheckpointError(f"config.json {field} is {value!r} but model.safetensors {tensor} says {found!r}")


def _shape(tensors: dict[str, torch.Tensor], name: str) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"model.safetensors: missing tensor {name!r}")
    return tuple(tensors[name].shape)


def check_backbone(lr_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """``vision_backbone`` checked against the ResNet's layout in the tensors; returns it."""
    name = _field(lr_config, "vision_backbone")
    if name not in RESNET_LAYOUTS:
        raise ConfigError(f"config.json vision_backbone: expected one of {sorted(RESNET_LAYOUTS)} (LeRobot "
                          f"accepts torchvision 'resnet*' names), received {name!r}")
    blocks = tuple(count_indices(tensors, f"model.backbone.layer{i}") for i in range(1, 5))
    bottleneck = "model.backbone.layer1.0.conv3.weight" in tensors
    _expect("vision_backbone", name, f"model.backbone.* (blocks per stage {blocks}, bottleneck {bottleneck})",
            next((n for n, layout in RESNET_LAYOUTS.items() if layout == (blocks, bottleneck)), None))
    dilation = _field(lr_config, "replace_final_stride_with_dilation")
    if dilation not in (0, 1) or isinstance(dilation, float):
        raise ConfigError(f"config.json replace_final_stride_with_dilation: expected a bool or 0 / 1, "
                          f"received {dilation!r}")
    return name


def head_config(lr_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The ``act_vae`` spec: config.json fields, each checked against the tensors it shapes."""
    f = lambda name: _field(lr_config, name)
    d, chunk = f("dim_model"), f("chunk_size")
    _expect("dim_model", d, "model.encoder_img_feat_input_proj.weight (out channels)",
            _shape(tensors, "model.encoder_img_feat_input_proj.weight")[0])
    if d % 4:
        raise ConfigError(f"config.json dim_model: LeRobot's 2D sine positions need a multiple of 4, received {d}")
    _expect("chunk_size", chunk, "model.decoder_pos_embed.weight (rows)", _shape(tensors, "model.decoder_pos_embed.weight")[0])
    _expect("dim_feedforward", f("dim_feedforward"), "model.encoder.layers.0.linear1.weight (rows)",
            _shape(tensors, "model.encoder.layers.0.linear1.weight")[0])
    _expect("latent_dim", f("latent_dim"), "model.encoder_latent_input_proj.weight (columns)",
            _shape(tensors, "model.encoder_latent_input_proj.weight")[1])
    _expect("n_encoder_layers", f("n_encoder_layers"), "model.encoder.layers.*", count_indices(tensors, "model.encoder.layers"))
    _expect("n_decoder_layers", f("n_decoder_layers"), "model.decoder.layers.*", count_indices(tensors, "model.decoder.layers"))
    _expect("pre_norm", f("pre_norm"), "model.encoder.norm.weight (present)", "model.encoder.norm.weight" in tensors)
    use_vae = f("use_vae")
    _expect("use_vae", use_vae, "model.vae_encoder_latent_output_proj.weight (present)",
            "model.vae_encoder_latent_output_proj.weight" in tensors)
    if use_vae:
        _expect("n_vae_encoder_layers", f("n_vae_encoder_layers"), "model.vae_encoder.layers.*",
                count_indices(tensors, "model.vae_encoder.layers"))
    activation = f("feedforward_activation")
    if activation == "glu":
        raise ConfigError("config.json feedforward_activation: 'glu' halves linear1's output, so LeRobot's own "
                          "ACT fails at linear2 on its first forward; no working checkpoint uses it")
    if activation not in ("relu", "gelu"):
        raise ConfigError(f"config.json feedforward_activation: expected 'relu' or 'gelu', received {activation!r}")
    return {
        "type": "act_vae",
        "horizon": chunk,
        "dim_model": d,
        "n_heads": f("n_heads"),
        "dim_feedforward": f("dim_feedforward"),
        "activation": activation,
        "pre_norm": f("pre_norm"),
        "n_encoder_layers": f("n_encoder_layers"),
        "n_decoder_layers": f("n_decoder_layers"),
        "use_vae": use_vae,
        "latent_dim": f("latent_dim"),
        # LeRobot keeps n_vae_encoder_layers in its config without a VAE; act_vae needs none then
        **({"n_vae_encoder_layers": f("n_vae_encoder_layers")} if use_vae else {"n_vae_encoder_layers": 0}),
        "dropout": float(f("dropout")),
        "kl_weight": float(f("kl_weight")),
    }


def policy_config(lr_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Our VLAPolicy config dict from LeRobot's ``config.json``, checked against the tensors."""
    if _field(lr_config, "n_obs_steps") != 1:
        raise ConfigError(f"config.json n_obs_steps: LeRobot's ACT takes 1, received {lr_config['n_obs_steps']}")
    check_features(lr_config)
    head = head_config(lr_config, tensors)
    backbone = {
        "type": "resnet_act",
        "variant": check_backbone(lr_config, tensors),
        "dim_model": head["dim_model"],
        "frozen_bn": True,
        "replace_final_stride_with_dilation": bool(_field(lr_config, "replace_final_stride_with_dilation")),
    }
    coeff = _field(lr_config, "temporal_ensemble_coeff")
    if coeff is not None and not math.isfinite(coeff):
        raise ConfigError(f"config.json temporal_ensemble_coeff: expected a finite number, received {coeff!r}")
    feats = lambda d: {k: {"type": v["type"], "shape": list(v["shape"])} for k, v in d.items()}
    return {
        "input_features": feats(lr_config["input_features"]),
        "output_features": feats(lr_config["output_features"]),
        "backbone": backbone,
        "head": head,
        "normalization": normalization_modes(lr_config, _field(lr_config, "normalization_mapping")),
        "n_obs_steps": 1,
        "n_action_steps": int(_field(lr_config, "n_action_steps")),
        "temporal_ensemble_coeff": coeff,
    }


def check_tensor_names(tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor lies under a prefix of :data:`NAME_MAPPING`; others are named in LeRobot's terms."""
    prefixes = tuple(NAME_MAPPING.values())
    unknown = sorted(k for k in tensors if not any(k == p or k.startswith(p + ".") for p in prefixes))
    if unknown:
        raise CheckpointError(f"model.safetensors: tensor(s) the ACT converter does not understand: {unknown[:8]}"
                              f"{' ...' if len(unknown) > 8 else ''}")


def convert(src: Path, dst: Path) -> Path:
    """Convert the LeRobot ACT directory ``src`` into a vla policy directory ``dst``; returns ``dst``."""
    src, dst = Path(src), Path(dst)
    lr_config = read_json(src / "config.json")
    if lr_config.get("type") != "act":
        raise ConfigError(f"{src}/config.json: expected LeRobot policy type 'act', received {lr_config.get('type')!r}")
    check_fields(lr_config, src / "config.json", policy="ACT", known=ARCHITECTURE_FIELDS, ignored=IGNORED_FIELDS)
    tensors = load_tensors(src / "model.safetensors")
    check_tensor_names(tensors)
    config = policy_config(lr_config, tensors)
    check_processors(src, lr_config, _field(lr_config, "normalization_mapping"), policy="ACT")
    stats = read_lerobot_stats(src)
    check_stats(stats, config["normalization"], lr_config)
    policy = VLAPolicy(config)
    policy.normalizer.set_stats(stats)
    # The normalizer's buffers come from the processor stats; every other tensor from the mapping, strictly.
    normalizer = {k: v for k, v in policy.state_dict().items() if k.startswith("normalizer.")}
    load_into(policy, {**tensors, **normalizer}, name_mapping=NAME_MAPPING)
    return policy.save_pretrained(dst)
