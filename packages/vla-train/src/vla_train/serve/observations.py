"""Client observations -> policy batches: the key map, per-key validation and conversion, history.

A client (an ``openpi-client`` robot loop) sends one observation at a time, without a batch
dimension, under its own key names. The observation map declares which client key feeds which
policy input feature, e.g. ``{"observation/image": "observation.images.top", "observation/state":
"observation.state"}``; features it leaves out are read under their own key, and the LANGUAGE
feature (``task``) under ``"prompt"``. Keys the policy does not need are ignored.

Accepted values (S: the feature's shape; C, H, W: an image feature's channels, height, width):

- image (VISUAL): uint8 (H, W, C), scaled to float (C, H, W) in [0, 1]; or float (C, H, W) in [0, 1].
- state / environment state: a real-valued array or list of shape S, converted to float32.
- language: a ``str``.

Every rejection is an :class:`ObservationError` naming the client key, the policy feature, the
expected and the received.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_core.errors import ConfigError, closest
from vla_core.features import FeatureType, PolicyFeature

PROMPT = "prompt"
Sample = dict[str, "np.ndarray | str"]  # policy key -> float32 array (no batch dim) or a str


class ObservationError(ValueError):
    """A client observation does not match the policy's features (names key, expected, received)."""

    def __init__(self, key: str, expected: str, received: str, *, feature: str | None = None) -> None:
        where = f"observation key {key!r}" + (f" (policy feature {feature!r})" if feature and feature != key else "")
        super().__init__(f"{where}: expected {expected}, received {received}")
        self.key, self.feature, self.expected, self.received = key, feature, expected, received


def build_obs_map(features: Mapping[str, PolicyFeature], obs_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete map client key -> policy input feature key.

    ``obs_map`` entries come first; every feature it does not name is read under its own key, the
    LANGUAGE feature under ``"prompt"``. Raises :class:`ConfigError` for a target that is not an
    input feature, a feature fed twice, or a client key used twice.
    """
    inputs = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
    full: dict[str, str] = {}
    for client_key, target in (obs_map or {}).items():
        if not isinstance(client_key, str) or not isinstance(target, str):
            raise ConfigError(f"obs_map: expected string keys and values, received {client_key!r}: {target!r}")
        if target not in inputs:
            raise ConfigError(f"obs_map[{client_key!r}]: expected a policy input feature, received {target!r}."
                              f"{closest(target, inputs)} Features: {sorted(inputs)}")
        if target in full.values():
            raise ConfigError(f"obs_map: policy feature {target!r} is fed by two client keys "
                              f"{[k for k, v in full.items() if v == target] + [client_key]}")
        full[client_key] = target
    for key, feature in inputs.items():
        if key in full.values():
            continue
        client_key = PROMPT if feature.type is FeatureType.LANGUAGE else key
        if client_key in full:
            raise ConfigError(f"obs_map: client key {client_key!r} feeds {full[client_key]!r}, so policy feature "
                              f"{key!r} needs a client key of its own in obs_map")
        full[client_key] = key
    return full


def load_obs_map(text_or_path: str | Path) -> dict[str, str]:
    """An observation map from inline JSON (``'{"a": "b"}'``) or a JSON / YAML file."""
    text = str(text_or_path)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"--obs-map {text!r}: neither inline JSON (starting with '{{') nor a file")
        import yaml

        data = yaml.safe_load(path.read_text())
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--obs-map: expected a JSON object, received {text!r} ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--obs-map: expected a mapping of client key -> policy feature, received {type(data).__name__}")
    return data


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype.name} array of shape {value.shape}"
    if isinstance(value, str):
        return f"str {value[:40]!r}"
    return type(value).__name__


class ObservationAdapter:
    """Validates one client observation and converts it to a policy sample (no batch dimension)."""

    def __init__(self, features: Mapping[str, PolicyFeature], obs_map: Mapping[str, str]) -> None:
        self.features = {k: f for k, f in features.items() if f.type is not FeatureType.ACTION}
        self.obs_map = dict(obs_map)

    def expected(self, key: str) -> str:
        """What the client must send for policy feature ``key``, in words."""
        feature = self.features[key]
        if feature.type is FeatureType.LANGUAGE:
            return "a str"
        if feature.type is FeatureType.VISUAL:
            c, h, w = feature.shape
            return f"a uint8 image of shape {(h, w, c)} (HWC) or a float image of shape {(c, h, w)} (CHW) in [0, 1]"
        return f"a real-valued array of shape {feature.shape}"

    def convert(self, obs: Mapping[str, Any]) -> Sample:
        """Client observation -> ``{policy key: float32 array of the feature's shape, or str}``."""
        sample: Sample = {}
        for client_key, key in self.obs_map.items():
            if client_key not in obs:
                raise ObservationError(client_key, self.expected(key), f"no such key (keys: {sorted(obs)})", feature=key)
            sample[key] = self._convert_one(client_key, key, obs[client_key])
        return sample

    def _convert_one(self, client_key: str, key: str, value: Any) -> np.ndarray | str:
        feature = self.features[key]

        def fail(received: str, expected: str | None = None) -> ObservationError:
            return ObservationError(client_key, expected or self.expected(key), received, feature=key)

        if feature.type is FeatureType.LANGUAGE:
            if not isinstance(value, str):
                raise fail(_describe(value))
            return str(value)
        if isinstance(value, (list, tuple)):
            try:
                value = np.asarray(value)
            except ValueError:
                raise fail("a ragged list") from None
        if not isinstance(value, np.ndarray):
            raise fail(_describe(value))
        if feature.type is FeatureType.VISUAL:
            c, h, w = feature.shape
            if value.dtype == np.uint8 and value.shape == (h, w, c):
                return np.ascontiguousarray(value.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
            if value.dtype.kind != "f" or value.shape != (c, h, w):
                raise fail(_describe(value))
            out = value.astype(np.float32)
            self._check_finite(out, fail)
            lo, hi = float(out.min()), float(out.max())
            if lo < 0.0 or hi > 1.0:
                raise fail(f"values in [{lo:g}, {hi:g}]", "a float image with values in [0, 1]")
            return out
        if value.dtype.kind not in "iuf" or value.shape != feature.shape:
            raise fail(_describe(value))
        out = value.astype(np.float32)
        self._check_finite(out, fail)
        return out

    @staticmethod
    def _check_finite(value: np.ndarray, fail) -> None:
        bad = int(value.size - np.isfinite(value).sum())
        if bad:
            raise fail(f"{bad} NaN/Inf value(s)", "finite values")


class ObservationHistory:
    """One session's last ``n_obs_steps`` observations per key: single steps -> windows (T, ...).

    The first observation of a session (or after :meth:`reset`) fills the whole window, as
    ``Policy.select_action`` does in process.
    """

    def __init__(self, n_obs_steps: int) -> None:
        self.n_obs_steps = n_obs_steps
        self._past: dict[str, collections.deque] = {}

    def window(self, sample: Sample) -> Sample:
        """``sample`` with every array (S...) replaced by its window (T, S...); records the step."""
        if self.n_obs_steps == 1:
            return sample
        out: Sample = {}
        for key, value in sample.items():
            if isinstance(value, str):
                out[key] = value
                continue
            past = self._past.get(key)
            if past is None:
                past = self._past[key] = collections.deque([value] * self.n_obs_steps, maxlen=self.n_obs_steps)
            else:
                past.append(value)
            out[key] = np.stack(past)
        return out

    def reset(self) -> None:
        self._past.clear()


@dataclass(frozen=True)
class RTCRequest:
    """A request's real-time chunking part: ``prefix`` (H', A) float32 in robot units, ``delay`` int."""

    prefix: np.ndarray
    delay: int

    @property
    def group(self) -> tuple[int, int]:
        """Requests with equal (H', delay) run in one guided policy call."""
        return self.prefix.shape[0], self.delay


def parse_rtc(value: Any, *, horizon: int, action_dim: int, key: str = "__rtc__") -> RTCRequest:
    """The ``{"prefix": (H', A) array, "delay": int}`` map of a request, checked: 1 <= H' <= ``horizon``,
    A = ``action_dim``, finite values, 0 <= delay <= H'. Errors name ``__rtc__.prefix`` / ``__rtc__.delay``."""
    if not isinstance(value, dict) or set(value) != {"prefix", "delay"}:
        got = f"a map with keys {sorted(map(str, value))}" if isinstance(value, dict) else _describe(value)
        raise ObservationError(key, "a map {'prefix': array (H', A), 'delay': int}", got)
    prefix, delay = value["prefix"], value["delay"]
    if isinstance(prefix, (list, tuple)):
        try:
            prefix = np.asarray(prefix)
        except ValueError:
            raise ObservationError(f"{key}.prefix", "an array (H', A)", "a ragged list") from None
    want = f"a real-valued array (H', {action_dim}) with 1 <= H' <= {horizon} (the previous chunk's unexecuted actions)"
    if (not isinstance(prefix, np.ndarray) or prefix.dtype.kind not in "iuf" or prefix.ndim != 2
            or not 1 <= prefix.shape[0] <= horizon or prefix.shape[1] != action_dim):
        raise ObservationError(f"{key}.prefix", want, _describe(prefix))
    prefix = prefix.astype(np.float32)
    bad = int(prefix.size - np.isfinite(prefix).sum())
    if bad:
        raise ObservationError(f"{key}.prefix", "finite values", f"{bad} NaN/Inf value(s)")
    if isinstance(delay, (bool, np.bool_)) or not isinstance(delay, (int, np.integer)) or not 0 <= delay <= len(prefix):
        raise ObservationError(f"{key}.delay", f"an int in [0, H' = {len(prefix)}]", repr(delay))
    return RTCRequest(prefix, int(delay))


def collate(samples: list[Sample], device: torch.device | str = "cpu") -> dict[str, Any]:
    """Samples -> a policy batch: arrays stacked to tensors (B, ...) on ``device``, strings to lists."""
    batch: dict[str, Any] = {}
    for key, first in samples[0].items():
        if isinstance(first, str):
            batch[key] = [s[key] for s in samples]
        else:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples])).to(device)
    return batch
