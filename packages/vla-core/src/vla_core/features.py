"""Batch keys, feature declarations and the batch validator (LeRobot-compatible key names)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGES = "observation.images"
OBS_IMAGE_PREFIX = OBS_IMAGES + "."
TASK = "task"
ACTION = "action"
ACTION_IS_PAD = "action_is_pad"
EMBODIMENT_ID = "embodiment_id"


class FeatureType(str, enum.Enum):
    """What a feature is; decides its default normalization and who consumes it."""

    STATE = "STATE"
    ENV = "ENV"
    VISUAL = "VISUAL"
    LANGUAGE = "LANGUAGE"
    ACTION = "ACTION"


@dataclass(frozen=True)
class PolicyFeature:
    """A declared input or output: its type and its per-sample shape (no batch or time dims).

    ``shape`` is ``(S,)`` for state, ``(C, H, W)`` for an image, ``(A,)`` for an action and
    ``()`` for language.
    """

    type: FeatureType
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", FeatureType(self.type))
        shape = tuple(int(s) for s in self.shape)
        if any(s <= 0 for s in shape):
            raise ValueError(f"PolicyFeature shape must be positive, got {shape}")
        object.__setattr__(self, "shape", shape)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type.value, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | PolicyFeature) -> PolicyFeature:
        if isinstance(data, PolicyFeature):
            return data
        unknown = set(data) - {"type", "shape"}
        if unknown or "type" not in data:
            raise ValueError(
                f"a feature is a mapping with 'type' and 'shape', got keys {sorted(data)}"
            )
        try:
            ftype = FeatureType(str(data["type"]).upper())
        except ValueError:
            raise ValueError(
                f"unknown feature type {data['type']!r}; expected one of {[t.value for t in FeatureType]}"
            ) from None
        return cls(ftype, tuple(data.get("shape", ())))


def parse_features(data: Mapping[str, Any]) -> dict[str, PolicyFeature]:
    """Parse ``{key: {"type": ..., "shape": [...]}}`` into ``{key: PolicyFeature}``."""
    features = {}
    for key, value in data.items():
        try:
            features[key] = PolicyFeature.from_dict(value)
        except ValueError as err:
            raise ValueError(f"feature {key!r}: {err}") from None
    return features


def camera_keys(features: Mapping[str, PolicyFeature]) -> tuple[str, ...]:
    """Keys of the VISUAL features, in declaration order."""
    return tuple(k for k, f in features.items() if f.type is FeatureType.VISUAL)


def first_of_type(features: Mapping[str, PolicyFeature], ftype: FeatureType) -> tuple[str, PolicyFeature] | None:
    for key, feature in features.items():
        if feature.type is ftype:
            return key, feature
    return None


# Key prefixes of the declared observation types: a batch key under one of them that the features do
# not declare (an extra camera, ``observation.state_2``) is an error, not silently ignored.
DECLARED_PREFIXES = (OBS_IMAGE_PREFIX, OBS_STATE, OBS_ENV_STATE)
PAD_SUFFIX = "_is_pad"  # LeRobot's padding masks of windowed keys (``observation.state_is_pad``)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def _convert(key: str, value: torch.Tensor, feature: PolicyFeature, dtype: torch.dtype | None) -> torch.Tensor:
    """The dtype rule: uint8 images -> float in [0, 1]; other floats -> ``dtype``; other integers/bools refused."""
    target = dtype or (value.dtype if value.is_floating_point() else torch.float32)
    if feature.type is FeatureType.VISUAL and value.dtype == torch.uint8:
        return value.to(torch.float32).div_(255).to(target)
    if not value.is_floating_point():
        want = "a floating-point tensor in [0, 1] or uint8" if feature.type is FeatureType.VISUAL else (
            "a floating-point tensor")
        raise ValueError(f"batch key {key!r}: expected {want}, received dtype {value.dtype}")
    return value if value.dtype == target else value.to(target)


def prepare_batch(
    batch: Mapping[str, Any],
    features: Mapping[str, PolicyFeature],
    *,
    n_obs_steps: int = 1,
    horizon: int | None = None,
    dtype: torch.dtype | None = None,
    single_step: bool = False,
    check_values: bool = True,
) -> tuple[dict[str, Any], int]:
    """Check ``batch`` against the declared features; returns ``(converted copy, B)``.

    Shapes: observations are ``(B, *shape)``, or ``(B, n_obs_steps, *shape)`` when ``n_obs_steps > 1``
    (with ``single_step``, either); ``ACTION`` features are ``(B, H, A)`` with ``H <= horizon`` (when
    given) and, if present, ``action_is_pad`` is bool ``(B, H)``. ``B`` must be the same for every key
    and positive.

    dtypes: uint8 images become float in [0, 1]; floating tensors are cast to ``dtype`` (when given);
    integer and bool tensors for float features are refused. Values (``check_values``; one host sync for
    the whole batch): no NaN/Inf anywhere, float images within [0, 1]. A batch key under the prefix of a
    declared observation type (``observation.images.``, ``observation.state``,
    ``observation.environment_state``) that the features lack (an extra camera, ``observation.state_2``)
    is refused (``*_is_pad`` masks excepted). Errors are ``ValueError`` naming
    the key, the expected and the received. ``batch`` itself is not modified.
    """
    out = dict(batch)
    batch_size: int | None = None
    checked: list[tuple[str, torch.Tensor, bool]] = []  # key, value, is an image to range-check

    def check_b(key: str, b: int) -> None:
        nonlocal batch_size
        if batch_size is None:
            batch_size = b
        elif b != batch_size:
            raise ValueError(f"batch key {key!r}: batch size {b} differs from {batch_size} of the other keys")

    prefixes = tuple(p for p in DECLARED_PREFIXES if any(k.startswith(p) for k in features))
    for key in batch:
        if key.startswith(prefixes) and key not in features and not key.endswith(PAD_SUFFIX):
            declared = sorted(k for k in features if k.startswith(prefixes))
            raise ValueError(f"batch key {key!r} is not a declared input feature (declared: {declared}); remove it "
                             "from the batch or declare it in input_features")
    for key, feature in features.items():
        if feature.type is FeatureType.LANGUAGE:
            if key not in batch:
                raise ValueError(f"missing batch key {key!r}: expected a list of B strings")
            value = batch[key]
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(s, str) for s in value):
                raise ValueError(f"batch key {key!r}: expected a list of B strings, received {_describe(value)}")
            check_b(key, len(value))
            continue
        if key not in batch:
            if feature.type is FeatureType.ACTION:
                continue  # targets are optional at inference; the caller asks for them when training
            raise ValueError(
                f"missing batch key {key!r}: expected a tensor of shape (B, {', '.join(map(str, feature.shape))}) "
                f"({feature.type.value}); received keys {sorted(batch)}"
            )
        value = batch[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"batch key {key!r}: expected a torch.Tensor, received {_describe(value)}")
        shape = tuple(value.shape)
        if feature.type is FeatureType.ACTION:
            ok = len(shape) == 3 and shape[2:] == feature.shape and (horizon is None or shape[1] <= horizon)
            if not ok:
                h = "H" if horizon is None else f"H<={horizon}"
                raise ValueError(
                    f"batch key {key!r}: expected shape (B, {h}, {', '.join(map(str, feature.shape))}), "
                    f"received {shape}"
                )
            if ACTION_IS_PAD in batch:
                pad = batch[ACTION_IS_PAD]
                if not isinstance(pad, torch.Tensor) or pad.dtype != torch.bool or tuple(pad.shape) != shape[:2]:
                    raise ValueError(
                        f"batch key {ACTION_IS_PAD!r}: expected a bool tensor of shape {shape[:2]}, "
                        f"received {_describe(pad)}"
                    )
        else:
            window = (n_obs_steps,) + feature.shape
            ok = shape[1:] == window if n_obs_steps > 1 else shape[1:] == feature.shape
            ok = ok or (single_step and n_obs_steps > 1 and shape[1:] == feature.shape)
            if not ok:
                dims = ", ".join(map(str, feature.shape))
                want = f"(B, {dims})" if n_obs_steps == 1 else (
                    f"(B, {n_obs_steps}, {dims})" + (f" or (B, {dims})" if single_step else ""))
                raise ValueError(f"batch key {key!r}: expected shape {want}, received {shape}")
        check_b(key, shape[0])
        converted = _convert(key, value, feature, dtype)
        out[key] = converted
        range_check = feature.type is FeatureType.VISUAL and value.dtype != torch.uint8
        checked.append((key, converted, range_check))
    if batch_size is None:
        raise ValueError(f"the batch holds none of the declared features {sorted(features)}")
    if batch_size == 0:
        raise ValueError("empty batch: every key holds 0 samples (expected B >= 1)")
    if check_values and checked:
        _check_values(checked)
    return out, batch_size


def _check_values(checked: list[tuple[str, torch.Tensor, bool]]) -> None:
    """No NaN/Inf, images within [0, 1]: one host sync for the whole batch; details only on failure."""
    flags = []
    for _, value, is_image in checked:
        flags.append(torch.isfinite(value).all())
        if is_image:
            low, high = torch.aminmax(value)
            flags.append((low >= 0) & (high <= 1))
    device = flags[0].device
    if bool(torch.stack([f.to(device) for f in flags]).all()):
        return
    for key, value, is_image in checked:
        finite = torch.isfinite(value)
        if not finite.all():
            raise ValueError(f"batch key {key!r}: contains {int((~finite).sum())} NaN/Inf value(s)")
        if is_image:
            low, high = (float(v) for v in torch.aminmax(value))
            if low < 0 or high > 1:
                raise ValueError(f"batch key {key!r}: expected image values in [0, 1] (floats) or uint8 in "
                                 f"[0, 255], received values in [{low:g}, {high:g}]")


def validate_batch(
    batch: Mapping[str, Any],
    features: Mapping[str, PolicyFeature],
    *,
    n_obs_steps: int = 1,
    horizon: int | None = None,
    check_finite: bool = True,
) -> int:
    """Check ``batch`` against declared features and return the batch size ``B``
    (:func:`prepare_batch` without the dtype cast; nothing is modified)."""
    return prepare_batch(batch, features, n_obs_steps=n_obs_steps, horizon=horizon, check_values=check_finite)[1]
