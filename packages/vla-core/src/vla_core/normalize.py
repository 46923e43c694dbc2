"""Per-feature normalization with stats kept as buffers (saved with the weights).

Modes (LeRobot's formulas, ``eps = 1e-8``):

- ``mean_std``: ``y = (x - mean) / (std + eps)``
- ``min_max``: ``y = 2 (x - min) / (max - min) - 1``, into [-1, 1]
- ``quantile``: as ``min_max`` with ``q01`` / ``q99`` in place of ``min`` / ``max``
- ``quantile10``: as ``min_max`` with ``q10`` / ``q90`` (LeRobot's ``QUANTILE10``)
- ``identity``: ``y = x``

A zero-variance (or zero-range) feature is divided by 1 instead of ~0, so constant inputs stay
finite; every mode has an exact inverse. Image stats are per channel, shape (C, 1, 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from vla_core.errors import ConfigError
from vla_core.features import FeatureType, PolicyFeature

MODES = ("mean_std", "min_max", "quantile", "quantile10", "identity")
STATS_OF_MODE = {
    "mean_std": ("mean", "std"),
    "min_max": ("min", "max"),
    "quantile": ("q01", "q99"),
    "quantile10": ("q10", "q90"),
    "identity": (),
}
DEFAULT_MODES = {
    FeatureType.STATE: "mean_std",
    FeatureType.ENV: "mean_std",
    FeatureType.ACTION: "mean_std",
    FeatureType.VISUAL: "identity",
    FeatureType.LANGUAGE: "identity",
}


def _module_key(key: str) -> str:
    return key.replace(".", "__")


def stats_shape(feature: PolicyFeature) -> tuple[int, ...]:
    """Shape of one statistic: per channel (C, 1, 1) for images, the feature's shape otherwise."""
    if feature.type is FeatureType.VISUAL:
        return (feature.shape[0], 1, 1)
    return feature.shape


def resolve_modes(features: Mapping[str, PolicyFeature], modes: Mapping[str, str] | None) -> dict[str, str]:
    """Mode per feature key; ``modes`` may name a key or a feature type (``"STATE"``); keys win."""
    modes = dict(modes or {})
    types = {t.value for t in FeatureType}
    for name, mode in modes.items():
        if name not in features and name not in types:
            raise ConfigError(
                f"normalization: {name!r} is neither a feature key ({sorted(features)}) nor a feature type "
                f"({sorted(types)})"
            )
        if mode not in MODES:
            raise ConfigError(f"normalization[{name!r}]: expected one of {list(MODES)}, received {mode!r}")
    resolved = {}
    for key, feature in features.items():
        resolved[key] = modes.get(key, modes.get(feature.type.value, DEFAULT_MODES[feature.type]))
    return resolved


class _FeatureStats(nn.Module):
    """One feature's stats, float32 whatever the module around them is cast to: ``policy.to(torch.bfloat16)``
    (or ``.half()``) moves them to the new device but keeps their dtype, so a bf16 policy normalizes with
    exact statistics (the result is cast to the input's dtype)."""

    nan_means_unset = True  # all-NaN stats are "not set yet", not broken weights (vla_core.checkpoint)

    def __init__(self, names: tuple[str, ...], shape: tuple[int, ...]) -> None:
        super().__init__()
        for name in names:
            self.register_buffer(name, torch.full(shape, float("nan")))

    def _apply(self, fn, recurse: bool = True):  # nn.Module's hook behind .to() / .cuda() / .half()
        def keep_dtype(tensor: Tensor) -> Tensor:
            out = fn(tensor)
            if tensor.is_floating_point() and out.dtype != tensor.dtype:
                return tensor.to(device=out.device)
            return out

        return super()._apply(keep_dtype, recurse)


class Normalizer(nn.Module):
    """Normalizes batch entries and unnormalizes predictions, per feature key.

    Stats live in buffers named ``stats.<key with . as __>.<stat>`` and start as NaN: using a
    feature before its stats are set (``set_stats`` or a checkpoint load) raises.
    """

    def __init__(
        self,
        features: Mapping[str, PolicyFeature],
        modes: Mapping[str, str] | None = None,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.features = dict(features)
        self.modes = resolve_modes(self.features, modes)
        self.eps = eps
        self.stats = nn.ModuleDict()
        for key, feature in self.features.items():
            names = STATS_OF_MODE[self.modes[key]]
            if names and feature.type is not FeatureType.LANGUAGE:
                self.stats[_module_key(key)] = _FeatureStats(names, stats_shape(feature))
        self._checked: set[str] = set()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._checked.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def stats_of(self, key: str) -> dict[str, Tensor]:
        module = self.stats[_module_key(key)] if _module_key(key) in self.stats else None
        return {} if module is None else dict(module.named_buffers())

    def set_stats(self, stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Copy ``{key: {stat: array}}`` into the buffers; every needed stat must be given and finite.

        Extra keys and stats are ignored (a dataset's stats cover more than the policy uses). All
        values are checked before any buffer changes.
        """
        updates: list[tuple[Tensor, Tensor]] = []
        for key, mode in self.modes.items():
            buffers = self.stats_of(key)
            if not buffers:
                continue
            given = stats.get(key)
            if given is None:
                raise ValueError(f"normalization stats: missing key {key!r} (mode {mode!r} needs {list(buffers)})")
            for name, buf in buffers.items():
                if name not in given:
                    raise ValueError(f"normalization stats for {key!r}: missing {name!r} (mode {mode!r})")
                value = torch.as_tensor(given[name], dtype=torch.float32)
                if value.numel() != buf.numel():
                    raise ValueError(
                        f"normalization stats {key!r}.{name}: expected {buf.numel()} values (shape "
                        f"{tuple(buf.shape)}), received shape {tuple(value.shape)}"
                    )
                if not torch.isfinite(value).all():
                    raise ValueError(f"normalization stats {key!r}.{name}: contains NaN/Inf")
                updates.append((buf, value.reshape(buf.shape)))
        with torch.no_grad():
            for buf, value in updates:
                buf.copy_(value)
        self._checked.clear()

    def _params(self, key: str) -> tuple[str, dict[str, Tensor]]:
        mode = self.modes.get(key, "identity")
        buffers = self.stats_of(key)
        if buffers and key not in self._checked:
            for name, buf in buffers.items():
                if not torch.isfinite(buf).all():
                    raise RuntimeError(
                        f"normalization stats for {key!r} ({name}) are not set: call Normalizer.set_stats "
                        "or load a checkpoint that has them"
                    )
            self._checked.add(key)
        return mode, buffers

    def _denom_offset(self, key: str) -> tuple[str, Tensor, Tensor] | None:
        """(mode, denominator, offset) of ``key``; a zero std or range gives a denominator of 1."""
        mode, s = self._params(key)
        if mode == "identity" or not s:
            return None
        if mode == "mean_std":
            std = s["std"]
            return mode, torch.where(std == 0, torch.ones_like(std), std + self.eps), s["mean"]
        low, high = (s[name] for name in STATS_OF_MODE[mode])
        span = high - low
        return mode, torch.where(span == 0, torch.ones_like(span), span), low

    def normalize(self, key: str, x: Tensor) -> Tensor:
        """x (..., *feature.shape) -> normalized, same shape and dtype."""
        params = self._denom_offset(key)
        if params is None:
            return x
        mode, denom, offset = params
        if mode == "mean_std":
            return ((x - offset) / denom).to(x.dtype)
        return (2 * (x - offset) / denom - 1).to(x.dtype)

    def unnormalize(self, key: str, y: Tensor) -> Tensor:
        """Inverse of :meth:`normalize` (exact up to float rounding)."""
        params = self._denom_offset(key)
        if params is None:
            return y
        mode, denom, offset = params
        if mode == "mean_std":
            return (y * denom + offset).to(y.dtype)
        return ((y + 1) / 2 * denom + offset).to(y.dtype)

    def normalize_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A shallow copy of ``batch`` with every declared feature present normalized."""
        out = dict(batch)
        for key in self.features:
            if key in out and isinstance(out[key], Tensor):
                out[key] = self.normalize(key, out[key])
        return out
