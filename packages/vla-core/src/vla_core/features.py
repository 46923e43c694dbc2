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


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def validate_batch(
    batch: Mapping[str, Any],
    features: Mapping[str, PolicyFeature],
    *,
    n_obs_steps: int = 1,
    horizon: int | None = None,
    check_finite: bool = True,
) -> int:
    """Check ``batch`` against declared features and return the batch size ``B``.

    Observations may come as ``(B, *shape)`` or, with ``n_obs_steps > 1``, as
    ``(B, n_obs_steps, *shape)``. ``ACTION`` features are checked as ``(B, H, A)`` with
    ``H <= horizon`` (when given) and, if present, ``action_is_pad`` as bool ``(B, H)``.
    Raises ``ValueError`` naming the key, the expected and the received shape or dtype, and
    rejects NaN/Inf in float inputs. Nothing is modified.
    """
    batch_size: int | None = None
    checked: list[tuple[str, torch.Tensor]] = []

    def check_b(key: str, b: int) -> None:
        nonlocal batch_size
        if batch_size is None:
            batch_size = b
        elif b != batch_size:
            raise ValueError(f"batch key {key!r}: batch size {b} differs from {batch_size} of the other keys")

    for key, feature in features.items():
        if feature.type is FeatureType.LANGUAGE:
            if key not in batch:
                raise ValueError(f"missing batch key {key!r}: expected a list of B strings")
            value = batch[key]
            if isinstance(value, str) or not all(isinstance(s, str) for s in value):
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
        if not value.is_floating_point():
            raise ValueError(f"batch key {key!r}: expected a floating-point tensor, received dtype {value.dtype}")
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
            with_time = (n_obs_steps,) + feature.shape
            ok = shape[1:] == feature.shape or (n_obs_steps > 1 and shape[1:] == with_time)
            if n_obs_steps > 1 and shape[1:] != with_time:
                ok = False
            if not ok:
                want = f"(B, {n_obs_steps}, {', '.join(map(str, feature.shape))})" if n_obs_steps > 1 else (
                    f"(B, {', '.join(map(str, feature.shape))})"
                )
                raise ValueError(f"batch key {key!r}: expected shape {want}, received {shape}")
        check_b(key, shape[0])
        checked.append((key, value))
    if batch_size is None:
        raise ValueError("the batch holds none of the declared features")
    if check_finite and checked and not torch.stack([torch.isfinite(v).all() for _, v in checked]).all():
        # one host sync per batch; the offending key is looked up only on failure
        key, value = next((k, v) for k, v in checked if not torch.isfinite(v).all())
        bad = (~torch.isfinite(value)).sum().item()
        raise ValueError(f"batch key {key!r}: contains {bad} NaN/Inf value(s)")
    return batch_size

