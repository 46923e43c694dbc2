"""LeRobot 0.6.x ``DiffusionPolicy`` dirs -> vla policies (``resnet_spatial_softmax`` + ``unet_diffusion``).

Reads ``config.json``, ``model.safetensors`` and the processor files (``policy_preprocessor.json`` /
``policy_postprocessor.json`` and the normalizer stats they name). Nothing is guessed:

- every ``config.json`` field is either read (:data:`DEFAULTS`, features, normalization), known to leave
  a saved policy's outputs unchanged (:data:`IGNORED_FIELDS` and ``lerobot.COMMON_IGNORED_FIELDS``:
  training-only switches, optimizer and scheduler presets, the torchvision weights the backbone started
  from) or refused by name; a field the file lacks takes LeRobot 0.6.1's ``DiffusionConfig`` default;
- every architecture field is checked against the tensors it shapes (a mismatch names the field, the
  tensor and both values); the GroupNorm group count, the crop and the noise schedule are read from
  ``config.json`` alone (no tensor shows them);
- weights are renamed by :data:`KEY_RENAMES` (regex -> replacement, applied in order: data, not code;
  the tensor layouts are the same on both sides) and loaded strictly; a tensor with no counterpart is
  refused by its LeRobot name;
- the processors and stats pass the checks every LeRobot converter shares (``vla_train.convert.lerobot``).

Reference quirks (LeRobot 0.6.1), each reproduced or refused:

1. The UNet's final Conv-GroupNorm-Mish block (``final_conv.0``) is built with 8 GroupNorm groups
   whatever ``n_groups`` says (``DiffusionConv1dBlock``'s default; the residual blocks take
   ``n_groups``): the converted head sets ``final_n_groups: 8``. Without it a checkpoint with
   ``n_groups`` != 8 converts silently and predicts different actions.
2. ``compile_model: true`` wraps the UNet in ``torch.compile`` before saving, so its tensors are named
   ``diffusion.unet._orig_mod.*``; the ``_orig_mod`` is dropped (and must agree with the field).
3. ``crop_shape`` is derived when ``resize_shape`` is set: ``int(resize * crop_ratio)`` per side when
   ``crop_ratio < 1``, else no crop at all (a ``crop_shape`` in the file is then ignored), as
   ``DiffusionConfig.__post_init__`` recomputes it on load. Without ``resize_shape``, ``crop_shape``
   is used as written and ``crop_ratio`` is ignored.
4. The training-time random crop (``crop_is_random``) is torchvision's ``RandomCrop`` on the whole
   batch: one window for every image of an encoder call; ``resnet_spatial_softmax`` draws one window
   per image. Inference (center crop) is identical; only the augmentation's distribution differs.
5. A feature type missing from ``normalization_mapping`` is not normalized (IDENTITY).
6. Only the STATE feature named ``observation.state`` conditions the model (another STATE feature is
   normalized and ignored; LeRobot fails without ``observation.state``), the ENV feature is read from
   ``observation.environment_state`` whatever its declared name, only ``action`` is predicted: other
   names are refused. A policy with no camera (environment state alone, which LeRobot allows) is
   refused: ``resnet_spatial_softmax`` needs at least one camera.
7. An even ``kernel_size`` builds, but the 'same' padding ``k // 2`` lengthens the sequence and the
   residual sum fails at the first forward; an odd ``diffusion_step_embed_dim`` builds and fails too
   (the sinusoidal embedding has ``dim - 1`` features): no working checkpoint has either; refused.
8. ``use_group_norm`` with ``pretrained_backbone_weights`` set is refused by LeRobot at build time, so
   such a directory does not load there; refused here too. Otherwise ``pretrained_backbone_weights``
   has no effect (the checkpoint holds the trained weights).
9. GroupNorm in the ResNet has ``num_features // 16`` groups, as ``resnet_spatial_softmax`` builds it;
   the action window starts at step ``n_obs_steps - 1`` (``action_start``).
10. ``beta_schedule: sigmoid`` exists for DDPM only (diffusers' DDIMScheduler refuses it, and so does
    LeRobot at build time).
11. ``num_inference_steps: null`` samples with ``num_train_timesteps`` steps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_into, load_tensors

from vla_train.convert.lerobot import (
    check_fields,
    check_processors,
    check_stats,
    normalization_modes,
    read_json,
    read_lerobot_stats,
)

# LeRobot key (regex) -> vla key, applied in order to every key.
KEY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^diffusion\.rgb_encoder\.(\d+)\.", r"backbone.encoders.\1."),  # one encoder per camera
    (r"^diffusion\.rgb_encoder\.", "backbone.encoders.0."),  # one shared encoder
    (r"\.pool\.nets\.", ".pool.conv."),
    (r"^(backbone\.encoders\.\d+)\.out\.", r"\1.proj."),
    (r"^diffusion\.unet\.diffusion_step_encoder\.", "head.unet.step_encoder."),
    (r"^diffusion\.unet\.down_modules\.(\d+)\.0\.", r"head.unet.encoder.\1.res1."),
    (r"^diffusion\.unet\.down_modules\.(\d+)\.1\.", r"head.unet.encoder.\1.res2."),
    (r"^diffusion\.unet\.down_modules\.(\d+)\.2\.", r"head.unet.encoder.\1.downsample."),
    (r"^diffusion\.unet\.mid_modules\.", "head.unet.mid."),
    (r"^diffusion\.unet\.up_modules\.(\d+)\.0\.", r"head.unet.decoder.\1.res1."),
    (r"^diffusion\.unet\.up_modules\.(\d+)\.1\.", r"head.unet.decoder.\1.res2."),
    (r"^diffusion\.unet\.up_modules\.(\d+)\.2\.", r"head.unet.decoder.\1.upsample."),
    (r"^diffusion\.unet\.final_conv\.0\.", "head.unet.final_block."),
    (r"^diffusion\.unet\.final_conv\.1\.", "head.unet.final_proj."),
    (r"\.block\.0\.", ".conv."),
    (r"\.block\.1\.", ".norm."),
    (r"\.cond_encoder\.1\.", ".film."),
    (r"\.residual_conv\.", ".residual."),
)

# LeRobot 0.6.1 ``DiffusionConfig`` defaults of the fields read here (used when config.json lacks one).
DEFAULTS: dict[str, Any] = {
    "n_obs_steps": 2,
    "horizon": 64,
    "n_action_steps": 32,
    "normalization_mapping": {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"},
    "vision_backbone": "resnet18",
    "resize_shape": None,
    "crop_ratio": 1.0,
    "crop_shape": None,
    "crop_is_random": True,
    "use_group_norm": False,
    "spatial_softmax_num_keypoints": 32,
    "use_separate_rgb_encoder_per_camera": True,
    "down_dims": [512, 1024, 2048],
    "kernel_size": 5,
    "n_groups": 8,
    "diffusion_step_embed_dim": 128,
    "use_film_scale_modulation": True,
    "compile_model": False,
    "noise_scheduler_type": "DDPM",
    "num_train_timesteps": 100,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "num_inference_steps": None,
    "do_mask_loss_for_padding": False,
}
ARCHITECTURE_FIELDS = frozenset(DEFAULTS) | {"input_features", "output_features", "pretrained_backbone_weights"}
# Fields with no effect on a saved policy's outputs: training-only switches (activation checkpointing,
# compile mode, dropping a dataset's last frames), optimizer and scheduler presets.
IGNORED_FIELDS = frozenset({
    "gradient_checkpointing", "compile_mode", "drop_n_last_frames", "optimizer_lr", "optimizer_betas",
    "optimizer_eps", "optimizer_weight_decay", "scheduler_name", "scheduler_warmup_steps",
})
SCHEDULE_FIELDS = ("noise_scheduler_type", "num_train_timesteps", "num_inference_steps", "beta_schedule",
                   "beta_start", "beta_end", "prediction_type", "clip_sample", "clip_sample_range")
# LeRobot's DiffusionConv1dBlock default, which final_conv.0 never overrides (quirk 1).
FINAL_N_GROUPS = 8
OBS_STATE, OBS_ENV_STATE, ACTION = "observation.state", "observation.environment_state", "action"
RESNET_DEPTHS = {
    (2, 2, 2, 2): "resnet18",
    (3, 4, 6, 3): "resnet34",
    (3, 4, 23, 3): "resnet101",
    (3, 8, 36, 3): "resnet152",
}
COMPILED = "diffusion.unet._orig_mod."


def rename_keys(tensors: Mapping[str, torch.Tensor], renames=KEY_RENAMES) -> dict[str, torch.Tensor]:
    """Apply every ``(pattern, replacement)`` of ``renames`` to every key, in order."""
    out = {}
    for key, tensor in tensors.items():
        new = key
        for pattern, replacement in renames:
            new = re.sub(pattern, replacement, new)
        out[new] = tensor
    return out


def _field(lerobot: Mapping[str, Any], name: str) -> Any:
    return lerobot[name] if name in lerobot else DEFAULTS[name]


def _expect(field: str, value: Any, tensor: str, found: Any) -> None:
    if value != found:
        raise CheckpointError(f"config.json {field} is {value!r} but model.safetensors {tensor} says {found!r}")


def _shape(tensors: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    if name not in tensors:
        raise CheckpointError(f"model.safetensors: missing tensor {name!r}")
    return tuple(tensors[name].shape)


def _resnet_name(tensors: Mapping[str, torch.Tensor], prefix: str) -> str | None:
    """The torchvision ResNet whose residual blocks per stage the tensors under ``prefix`` show."""
    depths = tuple(
        len({k[len(f"{prefix}{i}.") :].split(".")[0] for k in tensors if k.startswith(f"{prefix}{i}.")})
        for i in (4, 5, 6, 7)
    )
    bottleneck = any(k.startswith(prefix) and ".conv3." in k for k in tensors)
    return "resnet50" if bottleneck and depths == (3, 4, 6, 3) else RESNET_DEPTHS.get(depths)


def unet_tensors(lerobot: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with ``compile_model``'s ``_orig_mod`` dropped from the UNet's names (quirk 2)."""
    compiled = any(k.startswith(COMPILED) for k in tensors)
    _expect("compile_model", bool(_field(lerobot, "compile_model")), "diffusion.unet._orig_mod.* (present)", compiled)
    return {("diffusion.unet." + k[len(COMPILED):] if k.startswith(COMPILED) else k): v for k, v in tensors.items()}


def check_features(lerobot: Mapping[str, Any]) -> None:
    """The features LeRobot's diffusion model reads, under the names its forward reads them by (quirk 6)."""
    inputs = lerobot["input_features"]
    for key, f in inputs.items():
        ok = {"STATE": key == OBS_STATE, "ENV": True, "VISUAL": True}.get(f["type"], False)
        if not ok:
            raise ConfigError(
                f"config.json input_features[{key!r}] (type {f['type']}): LeRobot's diffusion policy reads only "
                f"{OBS_STATE!r} (STATE), one ENV feature and VISUAL features; it would ignore or fail on this one, "
                "so it is not converted"
            )
    if sum(f["type"] == "ENV" for f in inputs.values()) > 1:
        raise ConfigError("config.json input_features: more than one ENV feature; LeRobot reads only the first")
    if OBS_STATE not in inputs:
        raise ConfigError(f"config.json input_features: LeRobot's diffusion policy needs {OBS_STATE!r} (STATE)")
    outputs = lerobot["output_features"]
    if list(outputs) != [ACTION] or outputs[ACTION]["type"] != "ACTION":
        raise ConfigError(f"config.json output_features: LeRobot's diffusion policy predicts exactly {ACTION!r} "
                          f"(ACTION), received {dict(outputs)}")
    if not any(f["type"] == "VISUAL" for f in inputs.values()):
        raise ConfigError(
            "config.json input_features: this diffusion policy has no camera (LeRobot allows environment state "
            "alone); resnet_spatial_softmax needs at least one VISUAL feature, so it is not converted"
        )


def crop_shape(lerobot: Mapping[str, Any]) -> list[int] | None:
    """The crop LeRobot applies, derived from ``resize_shape`` and ``crop_ratio`` as its config does (quirk 3)."""
    resize, ratio = _field(lerobot, "resize_shape"), _field(lerobot, "crop_ratio")
    if not 0 < ratio <= 1:
        raise ConfigError(f"config.json crop_ratio: expected a ratio in (0, 1], received {ratio!r}")
    if resize is not None:
        return [int(resize[0] * ratio), int(resize[1] * ratio)] if ratio < 1 else None
    crop = _field(lerobot, "crop_shape")
    return list(crop) if crop else None


def backbone_config(lerobot: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``resnet_spatial_softmax`` spec: config.json fields, each checked against the tensors it shapes."""
    separate = any(k.startswith("diffusion.rgb_encoder.0.") for k in tensors)
    _expect("use_separate_rgb_encoder_per_camera", bool(_field(lerobot, "use_separate_rgb_encoder_per_camera")),
            "diffusion.rgb_encoder.0.* (present)", separate)
    enc = "diffusion.rgb_encoder.0." if separate else "diffusion.rgb_encoder."
    name = _field(lerobot, "vision_backbone")
    _expect("vision_backbone", name, f"{enc}backbone.* (residual blocks per stage)", _resnet_name(tensors, enc + "backbone."))
    group_norm = not any(k.startswith(enc) and k.endswith("running_mean") for k in tensors)
    _expect("use_group_norm", bool(_field(lerobot, "use_group_norm")), f"{enc}backbone.*.running_mean (absent)",
            group_norm)
    if group_norm and lerobot.get("pretrained_backbone_weights"):
        raise ConfigError("config.json use_group_norm with pretrained_backbone_weights: LeRobot refuses to build "
                          "this (GroupNorm would discard the pretrained BatchNorm), so the directory does not load there")
    keypoints = _field(lerobot, "spatial_softmax_num_keypoints")
    _expect("spatial_softmax_num_keypoints", keypoints, f"{enc}pool.nets.weight (rows)",
            _shape(tensors, enc + "pool.nets.weight")[0])
    resize = _field(lerobot, "resize_shape")
    return {
        "type": "resnet_spatial_softmax",
        "vision_backbone": name,
        "use_group_norm": group_norm,
        "resize_shape": list(resize) if resize else None,
        "crop_shape": crop_shape(lerobot),
        "crop_is_random": bool(_field(lerobot, "crop_is_random")),
        "num_keypoints": keypoints,
        "separate_encoder_per_camera": separate,
    }


def head_config(lerobot: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``unet_diffusion`` spec: config.json fields, each checked against the tensors it shapes."""
    f = lambda name: _field(lerobot, name)
    unet = "diffusion.unet."
    n_levels = len({k.split(".")[3] for k in tensors if k.startswith(unet + "down_modules.")})
    down_dims = [_shape(tensors, f"{unet}down_modules.{i}.0.conv1.block.0.weight")[0] for i in range(n_levels)]
    _expect("down_dims", list(f("down_dims")), f"{unet}down_modules.*.0.conv1.block.0.weight (out channels)", down_dims)
    kernel = f("kernel_size")
    _expect("kernel_size", kernel, f"{unet}down_modules.0.0.conv1.block.0.weight (width)",
            _shape(tensors, f"{unet}down_modules.0.0.conv1.block.0.weight")[-1])
    if kernel % 2 == 0:
        raise ConfigError(f"config.json kernel_size: {kernel} is even; LeRobot's 'same' padding (k // 2) then "
                          "lengthens the sequence and its own UNet fails at the first forward")
    embed = f("diffusion_step_embed_dim")
    _expect("diffusion_step_embed_dim", embed, f"{unet}diffusion_step_encoder.3.weight (rows)",
            _shape(tensors, f"{unet}diffusion_step_encoder.3.weight")[0])
    if embed % 2:
        raise ConfigError(f"config.json diffusion_step_embed_dim: {embed} is odd; LeRobot's sinusoidal embedding "
                          "then has one feature fewer and its own UNet fails at the first forward")
    film = _shape(tensors, f"{unet}down_modules.0.0.cond_encoder.1.weight")[0]
    _expect("use_film_scale_modulation", bool(f("use_film_scale_modulation")),
            f"{unet}down_modules.0.0.cond_encoder.1.weight (rows {film} = 2 x {down_dims[0]})", film == 2 * down_dims[0])
    head = {
        "type": "unet_diffusion",
        "horizon": f("horizon"),
        "down_dims": down_dims,
        "kernel_size": kernel,
        "n_groups": f("n_groups"),
        "final_n_groups": FINAL_N_GROUPS,  # quirk 1
        "diffusion_step_embed_dim": embed,
        "use_film_scale_modulation": bool(f("use_film_scale_modulation")),
        "do_mask_loss_for_padding": bool(f("do_mask_loss_for_padding")),
        "context_pooling": "flatten",
    }
    return {**head, **{name: f(name) for name in SCHEDULE_FIELDS}}


def policy_config(lerobot: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Our VLAPolicy config dict from LeRobot's ``config.json``, checked against the (renamed-compile) tensors."""
    check_features(lerobot)
    n_obs = _field(lerobot, "n_obs_steps")
    feats = lambda d: {k: {"type": v["type"], "shape": list(v["shape"])} for k, v in d.items()}
    return {
        "input_features": feats(lerobot["input_features"]),
        "output_features": feats(lerobot["output_features"]),
        "normalization": normalization_modes(lerobot, _field(lerobot, "normalization_mapping")),
        "n_obs_steps": n_obs,
        "n_action_steps": _field(lerobot, "n_action_steps"),
        "action_start": n_obs - 1,  # LeRobot's action window starts at the last observation step
        "backbone": backbone_config(lerobot, tensors),
        "head": head_config(lerobot, tensors),
    }


def convert(src: Path, dst: Path) -> Path:
    """Convert the LeRobot diffusion policy directory ``src`` into a vla policy directory ``dst``."""
    src, dst = Path(src), Path(dst)
    lerobot = read_json(src / "config.json")
    if lerobot.get("type") != "diffusion":
        raise ConfigError(
            f"{src / 'config.json'}: expected a LeRobot 'diffusion' policy, received {lerobot.get('type')!r}"
        )
    check_fields(lerobot, src / "config.json", policy="diffusion", known=ARCHITECTURE_FIELDS, ignored=IGNORED_FIELDS)
    tensors = unet_tensors(lerobot, load_tensors(src / "model.safetensors"))
    config = policy_config(lerobot, tensors)
    mapping = _field(lerobot, "normalization_mapping")
    check_processors(src, lerobot, mapping, policy="diffusion")
    stats = read_lerobot_stats(src)
    check_stats(stats, config["normalization"], lerobot)
    policy = VLAPolicy(config)
    renamed = rename_keys(tensors)
    leftover = sorted(k for k, new in zip(tensors, renamed) if not new.startswith(("backbone.", "head.")))
    if leftover:
        raise CheckpointError(f"model.safetensors: tensor(s) the diffusion converter does not understand: "
                              f"{leftover[:8]}{' ...' if len(leftover) > 8 else ''}")
    policy.normalizer.set_stats(stats)
    normalizer = {k: v for k, v in policy.state_dict().items() if k.startswith("normalizer.")}
    load_into(policy, {**renamed, **normalizer})
    return policy.save_pretrained(dst)
