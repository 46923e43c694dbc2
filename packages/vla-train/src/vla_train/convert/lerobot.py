"""``vla convert lerobot SRC DST``: LeRobot 0.6.x policy directories -> vla policies.

A LeRobot policy directory holds ``config.json`` (with ``"type"``: act, diffusion, pi0, ...),
``model.safetensors`` and its processor files with the normalization stats. Each policy type
has its own module exposing ``convert(src: Path, dst: Path) -> Path``; the module is imported
only when its type is converted.

The checks every converter shares live here, so that each converter refuses the same things the same
way: :func:`check_fields` (every ``config.json`` field read, known to be irrelevant, or refused by
name), :func:`normalization_modes` (LeRobot modes -> ours; a feature type the mapping omits is not
normalized), :func:`check_processors` (every processor step known; the normalizer's modes, features
and ``eps`` as ``config.json`` says; one value per statistic) and :func:`check_stats` (no zero std or
range, where LeRobot divides by ``eps`` and vla by 1).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from vla_core import ConfigError, load_tensors
from vla_core.paths import inside, missing_path_error

# LeRobot ``NormalizationMode`` -> vla normalizer mode.
NORM_MODES = {
    "MEAN_STD": "mean_std",
    "MIN_MAX": "min_max",
    "QUANTILES": "quantile",
    "QUANTILE10": "quantile10",
    "IDENTITY": "identity",
}
# The statistics each vla mode divides by: (low, high) of the range, or (std, None).
_SPAN_STATS = {"mean_std": ("std", None), "min_max": ("min", "max"), "quantile": ("q01", "q99"),
               "quantile10": ("q10", "q90")}
# Processor steps that leave a saved policy's numbers alone (beyond the checks in ``check_processors``).
DEFAULT_STEPS = frozenset({"rename_observations_processor", "to_batch_processor", "device_processor",
                           "normalizer_processor", "unnormalizer_processor"})
# ``config.json`` fields of every LeRobot ``PreTrainedConfig`` with no effect on a saved policy's outputs:
# where it runs, hub metadata, optimizer and scheduler presets.
COMMON_IGNORED_FIELDS = frozenset({
    "device", "use_amp", "push_to_hub", "repo_id", "private", "tags", "license", "pretrained_path",
    "pretrained_revision", "use_peft",
})

LEROBOT_CONVERTERS = {
    "act": "vla_train.convert.lerobot_act",
    "diffusion": "vla_train.convert.lerobot_diffusion",
    "groot": "vla_train.convert.lerobot_groot",  # LeRobot 0.5.1 (GR00T N1.5)
    "pi0": "vla_train.convert.lerobot_pi0",
    "pi05": "vla_train.convert.lerobot_pi05",
}


def convert_lerobot(src: str | os.PathLike, dst: str | os.PathLike, **options: Any) -> Path:
    """Convert the LeRobot policy directory ``src`` into a vla policy directory ``dst``.

    ``options`` go to the policy type's converter (groot: ``base_model``, ``eagle_config``, ``tokenizer``);
    an option the type's converter does not take is an error.
    """
    given, src, dst = src, Path(src).expanduser(), Path(dst)
    if not src.is_dir():
        raise missing_path_error(given, "LeRobot policy directory") if not src.exists() else NotADirectoryError(
            f"{src} is not a directory: expected a LeRobot policy directory")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a LeRobot policy directory")
    policy_type = read_json(config_path).get("type")
    if policy_type not in LEROBOT_CONVERTERS:
        raise ConfigError(
            f"{config_path}: LeRobot policy type {policy_type!r} has no converter; supported: "
            f"{', '.join(sorted(LEROBOT_CONVERTERS))}"
        )
    module = importlib.import_module(LEROBOT_CONVERTERS[policy_type])
    taken = set(inspect.signature(module.convert).parameters) - {"src", "dst"}
    if set(options) - taken:
        raise ConfigError(
            f"LeRobot {policy_type} conversion takes no option(s) {sorted(set(options) - taken)}; it takes "
            f"{sorted(taken) or 'none'}"
        )
    return module.convert(src, dst, **options)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; errors name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, received {type(data).__name__}")
    return data


def read_lerobot_stats(src: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{feature: {stat: tensor}}`` from the (un)normalizer steps of LeRobot's processor files
    (``policy_preprocessor*.json`` / ``policy_postprocessor*.json`` and the state files they name,
    which must lie inside ``src``)."""
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for pipeline in sorted(src.glob("policy_*processor*.json")):
        steps = read_json(pipeline).get("steps", [])
        for step in steps if isinstance(steps, list) else []:
            state_file = step.get("state_file") if isinstance(step, dict) else None
            if not state_file or "normalizer" not in str(step.get("registry_name", "")):
                continue
            path = inside(src, str(state_file), f"{pipeline.name}: state_file")
            for name, tensor in load_tensors(path).items():
                feature, _, stat = name.rpartition(".")
                stats.setdefault(feature, {})[stat] = tensor
    if not stats:
        raise FileNotFoundError(
            f"{src}: no normalizer stats found (expected policy_preprocessor.json and the "
            "*_normalizer_processor.safetensors it names, as LeRobot 0.6.x saves them)"
        )
    return stats


def count_indices(tensors: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many ``prefix.<i>.`` indices the checkpoint holds (e.g. layers of a stack)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return len({m.group(1) for k in tensors if (m := pattern.match(k))})


def check_fields(lr_config: Mapping, path: Path, *, policy: str, known: frozenset[str],
                 ignored: frozenset[str]) -> None:
    """Every ``config.json`` field is read (``known``) or has no effect on outputs (``ignored``, plus
    :data:`COMMON_IGNORED_FIELDS`); ``use_peft`` must be off. ``policy`` names the converter in errors."""
    unknown = sorted(set(lr_config) - set(known) - set(ignored) - COMMON_IGNORED_FIELDS - {"type"})
    if unknown:
        raise ConfigError(
            f"{path}: field(s) {unknown} unknown to the {policy} converter (written for LeRobot 0.6.1); it "
            "converts only what it understands, so a newer field must be added to it first"
        )
    if lr_config.get("use_peft"):
        raise ConfigError(f"{path}: use_peft is true: a PEFT (LoRA) {policy} checkpoint is not convertible; "
                          "merge the adapters into the weights first")


def normalization_modes(lr_config: Mapping, mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Our mode for every feature type the policy has, from LeRobot's ``normalization_mapping``
    (``mapping``); a type the mapping omits is not normalized (IDENTITY), as LeRobot leaves it."""
    mapping = mapping or {}
    for ftype, mode in mapping.items():
        if mode not in NORM_MODES:
            raise ConfigError(f"config.json normalization_mapping[{ftype!r}]: LeRobot mode {mode!r} has no vla "
                              f"equivalent (known: {sorted(NORM_MODES)})")
    types = {f["type"] for f in [*lr_config["input_features"].values(), *lr_config["output_features"].values()]}
    return {t: NORM_MODES[mapping.get(t, "IDENTITY")] for t in sorted(types)}


def _check_step(where: str, name: str, cfg: Mapping, known: frozenset[str], policy: str) -> None:
    if name not in known:
        raise ConfigError(f"{where} is unknown to the {policy} converter (known: {sorted(known)})")
    if name == "rename_observations_processor" and cfg.get("rename_map"):
        raise ConfigError(f"{where}: rename_map {cfg['rename_map']} renames observations before the "
                          "policy; rename the features instead")
    if name == "device_processor" and cfg.get("float_dtype") not in (None, "float32"):
        raise ConfigError(f"{where}: float_dtype {cfg['float_dtype']!r} casts the inputs; only float32 "
                          "(or none) is reproduced")


def check_processors(src: Path, lr_config: Mapping, mapping: Mapping[str, str] | None, *, policy: str,
                     known_steps: frozenset[str] = DEFAULT_STEPS,
                     step_check=None) -> None:
    """Processor steps we reproduce (``known_steps``; ``step_check(where, name, config)`` may refuse
    more), with the normalizer's modes, features and eps as ``config.json`` says, and one value per
    statistic (the preprocessor's and the postprocessor's action stats agree)."""
    features = {**lr_config["input_features"], **lr_config["output_features"]}
    mapping = mapping or {}
    seen: dict[str, tuple[str, torch.Tensor]] = {}
    for pipeline in sorted(src.glob("policy_*processor*.json")):
        steps = read_json(pipeline).get("steps")
        if not isinstance(steps, list):
            raise ConfigError(f"{pipeline}: expected a list of steps, received {steps!r}")
        for step in steps:
            name = step.get("registry_name") if isinstance(step, dict) else None
            cfg = step.get("config") or {} if isinstance(step, dict) else {}
            where = f"{pipeline.name}: step {name!r}"
            _check_step(where, name, cfg, known_steps, policy)
            if step_check is not None:
                step_check(where, name, cfg)
            if name not in ("normalizer_processor", "unnormalizer_processor"):
                continue
            if cfg.get("eps", 1e-8) != 1e-8:
                raise ConfigError(f"{where}: eps {cfg['eps']!r}; vla normalizes with eps 1e-8")
            if (cfg.get("norm_map") or {}) != dict(mapping):
                raise ConfigError(f"{where}: norm_map {cfg.get('norm_map')} differs from config.json's "
                                  f"normalization_mapping {dict(mapping)}")
            want = features if name == "normalizer_processor" else lr_config["output_features"]
            got = {k: {"type": v["type"], "shape": list(v["shape"])} for k, v in (cfg.get("features") or {}).items()}
            if got != {k: {"type": v["type"], "shape": list(v["shape"])} for k, v in want.items()}:
                raise ConfigError(f"{where}: normalizes features {sorted(got)}, expected exactly {sorted(want)}")
            if step.get("state_file"):
                path = inside(src, str(step["state_file"]), f"{pipeline.name}: state_file")
                for stat, value in load_tensors(path).items():
                    if stat in seen and not torch.equal(seen[stat][1], value):
                        raise ConfigError(f"{where}: statistic {stat!r} differs from the one in {seen[stat][0]}; "
                                          "LeRobot normalizes inputs and unnormalizes actions with different "
                                          "values, which one normalizer cannot reproduce")
                    seen.setdefault(stat, (pipeline.name, value))


def check_stats(stats: Mapping[str, Mapping[str, torch.Tensor]], modes: Mapping[str, str],
                lr_config: Mapping) -> None:
    """Stats LeRobot and vla normalize alike: no zero std or range under a non-identity mode (LeRobot
    divides by ``eps`` there, vla by 1; LeRobot's MEAN_STD inverse then returns the mean)."""
    for key, f in {**lr_config["input_features"], **lr_config["output_features"]}.items():
        mode = modes[f["type"]]
        if mode == "identity" or key not in stats:
            continue  # a missing key fails in Normalizer.set_stats, by name
        low, high = _SPAN_STATS[mode]
        if low not in stats[key] or (high is not None and high not in stats[key]):
            continue  # likewise
        span = stats[key][low] if high is None else stats[key][high] - stats[key][low]
        zero = (span == 0).nonzero().flatten().tolist()
        if zero:
            what = "std" if high is None else f"{high} - {low}"
            raise ConfigError(
                f"normalization stats of {key!r}: {what} is 0 at flat index {zero[:5]}; LeRobot divides by eps "
                "(1e-8) there and vla by 1, so the converted policy would act differently"
            )
