"""VLAPolicy: normalizer -> backbone -> (projector) -> head -> unnormalizer, from one config dict."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vla_core.actions import ActionQueue, TemporalEnsembler
from vla_core.checkpoint import atomic_write, load_checkpoint, save_safetensors
from vla_core.config import ComponentConfig
from vla_core.errors import ConfigError
from vla_core.features import (
    ACTION,
    FeatureType,
    PolicyFeature,
    camera_keys,
    first_of_type,
    parse_features,
    validate_batch,
)
from vla_core.interfaces import ActionHead, Backbone, BackboneOutput, Batch, HeadOutput
from vla_core.normalize import Normalizer, resolve_modes
from vla_core.registry import BACKBONES, HEADS, PROJECTORS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True, kw_only=True)
class PolicyConfig(ComponentConfig):
    """Everything needed to rebuild a policy (its weights and stats live in model.safetensors).

    Component specs are ``{"type": name, **fields}``. Fields a component declares and the spec
    leaves out are filled from the features (see :func:`derived_fields`).
    """

    input_features: dict[str, Any]
    output_features: dict[str, Any]
    backbone: dict[str, Any]
    head: dict[str, Any]
    projector: dict[str, Any] | None = None
    normalization: dict[str, str] = field(default_factory=dict)  # feature key or type -> mode
    n_obs_steps: int = 1
    n_action_steps: int | None = None  # defaults to the head's horizon
    # chunk index of the first executed action; None: n_obs_steps - 1, as the training windows start
    # at the oldest observed step (LeRobot's convention)
    action_start: int | None = None
    temporal_ensemble_coeff: float | None = None  # ACT uses 0.01; needs n_action_steps == 1
    freeze_backbone: bool = False
    freeze: tuple[str, ...] = ()  # glob patterns over parameter names, e.g. "backbone.layer1.*"

    def __post_init__(self) -> None:
        name = type(self).__name__
        inputs = parse_features(self.input_features)
        outputs = parse_features(self.output_features)
        if ACTION not in outputs or outputs[ACTION].type is not FeatureType.ACTION:
            raise ConfigError(f"{name}.output_features: expected an ACTION feature {ACTION!r}, received {sorted(outputs)}")
        if any(f.type is FeatureType.ACTION for f in inputs.values()):
            raise ConfigError(f"{name}.input_features: ACTION features belong in output_features")
        resolve_modes({**inputs, **outputs}, self.normalization)
        if self.n_obs_steps < 1:
            raise ConfigError(f"{name}.n_obs_steps: expected >= 1, received {self.n_obs_steps}")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ConfigError(f"{name}.n_action_steps: expected >= 1, received {self.n_action_steps}")
        if self.action_start is not None and self.action_start < 0:
            raise ConfigError(f"{name}.action_start: expected >= 0, received {self.action_start}")
        if self.temporal_ensemble_coeff is not None and self.n_action_steps not in (None, 1):
            raise ConfigError(
                f"{name}: temporal ensembling predicts every step, so n_action_steps must be 1, "
                f"received {self.n_action_steps}"
            )
        for key in ("backbone", "head"):
            spec = getattr(self, key)
            if "type" not in spec:
                raise ConfigError(f"{name}.{key}: expected a mapping with a 'type' key, received {spec!r}")

    @property
    def inputs(self) -> dict[str, PolicyFeature]:
        return parse_features(self.input_features)

    @property
    def outputs(self) -> dict[str, PolicyFeature]:
        return parse_features(self.output_features)


def derived_fields(config: PolicyConfig) -> dict[str, Any]:
    """Facts a component may declare as config fields and receive from the policy's features.

    ``image_keys`` (camera keys), ``image_shape`` (C, H, W of the first camera), ``state_dim``,
    ``env_state_dim``, ``action_dim``, ``n_obs_steps``. ``context_dim`` (the width the head
    receives) is filled separately.
    """
    inputs, outputs = config.inputs, config.outputs
    cams = camera_keys(inputs)
    state = first_of_type(inputs, FeatureType.STATE)
    env = first_of_type(inputs, FeatureType.ENV)
    return {
        "image_keys": list(cams),
        "image_shape": list(inputs[cams[0]].shape) if cams else None,
        "state_dim": state[1].shape[-1] if state else None,
        "env_state_dim": env[1].shape[-1] if env else None,
        "action_dim": outputs[ACTION].shape[-1],
        "n_obs_steps": config.n_obs_steps,
    }


def _fill(
    kind: str, spec: Mapping[str, Any], config_class: type[ComponentConfig], facts: Mapping[str, Any],
    source: str = "the features give",
) -> dict:
    spec = dict(spec)
    names = config_class.field_names()
    for key, value in facts.items():
        if key not in names or value is None:
            continue
        if key not in spec:
            spec[key] = value
        elif _plain(spec[key]) != _plain(value):
            raise ConfigError(
                f"{kind}.{key}: {source} {value!r} but the {kind} spec says {spec[key]!r}; "
                f"drop the field to take it from {source.rsplit(' ', 1)[0]}"
            )
    return spec


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def resolve_config(config: PolicyConfig | Mapping[str, Any]) -> PolicyConfig:
    """Fill the component specs' derived fields, so the result is complete and explicit."""
    if not isinstance(config, PolicyConfig):
        config = PolicyConfig.from_dict(config)
    facts = derived_fields(config)
    backbone = _fill("backbone", config.backbone, BACKBONES.config_class(config.backbone["type"]), facts)
    head = _fill("head", config.head, HEADS.config_class(config.head["type"]), facts)
    return dataclasses.replace(config, backbone=backbone, head=head)


class VLAPolicy(nn.Module):
    """A robot policy composed of registered components.

    Inputs are raw batches (robot units, images in [0, 1]); ``predict_action_chunk`` returns
    (B, H, A) in robot units.
    """

    def __init__(self, config: PolicyConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.config = config = resolve_config(config)
        self.input_features = config.inputs
        self.output_features = config.outputs
        self.normalizer = Normalizer({**self.input_features, **self.output_features}, config.normalization)
        self.backbone: Backbone = BACKBONES.build(config.backbone)
        head_cls = HEADS.get(config.head["type"])
        head_spec = _fill("head", config.head, head_cls.config_class, self.backbone.context_spec(), "the backbone gives")
        context_dim = head_spec.get("context_dim") if "context_dim" in head_cls.config_class.field_names() else None
        self.projector: nn.Module | None = None
        if config.projector is not None or (context_dim is not None and context_dim != self.backbone.output_dim):
            if context_dim is None:
                raise ConfigError(
                    "projector: set head.context_dim to the width the projector should produce "
                    f"(the backbone gives {self.backbone.output_dim})"
                )
            spec = dict(config.projector or {"type": "linear"})
            spec.setdefault("in_dim", self.backbone.output_dim)
            spec.setdefault("out_dim", context_dim)
            self.projector = PROJECTORS.build(spec)
        elif "context_dim" in head_cls.config_class.field_names():
            head_spec["context_dim"] = self.backbone.output_dim
        self.config = config = dataclasses.replace(config, head=head_spec)
        self.head: ActionHead = HEADS.build(head_spec)
        if self.head.action_dim != self.output_features[ACTION].shape[-1]:
            raise ConfigError(
                f"head.action_dim is {self.head.action_dim} but output_features[{ACTION!r}] has "
                f"{self.output_features[ACTION].shape[-1]}"
            )
        action_start = config.n_obs_steps - 1 if config.action_start is None else config.action_start
        n_action_steps = config.n_action_steps or self.head.horizon - action_start
        if n_action_steps < 1 or action_start + n_action_steps > self.head.horizon:
            after = f" starting at action_start {action_start}" if action_start else ""
            raise ConfigError(
                f"n_action_steps: expected <= the head's horizon {self.head.horizon}, received {n_action_steps}{after}"
            )
        self.n_action_steps = n_action_steps
        self._queue = ActionQueue(n_action_steps, start=action_start)
        self._ensembler = (
            TemporalEnsembler(config.temporal_ensemble_coeff, self.head.horizon)
            if config.temporal_ensemble_coeff is not None
            else None
        )
        self._obs_history: dict[str, collections.deque] = {}
        self._apply_freezing()

    # ----------------------------------------------------------------- building
    @classmethod
    def from_config(cls, config: PolicyConfig | Mapping[str, Any]) -> VLAPolicy:
        return cls(config)

    def _apply_freezing(self) -> None:
        if self.config.freeze_backbone:
            self.backbone.requires_grad_(False)
        names = [n for n, _ in self.named_parameters()]
        for pattern in self.config.freeze:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ConfigError(f"freeze: pattern {pattern!r} matches no parameter (e.g. {names[:3]})")
            for name in hits:
                self.get_parameter(name).requires_grad_(False)

    def fsdp_units(self) -> set[type[nn.Module]]:
        """Module classes to shard one by one (the union of the components')."""
        units = set(self.backbone.fsdp_units()) | set(self.head.fsdp_units())
        if self.projector is not None:
            units |= set(self.projector.fsdp_units())
        return units

    @property
    def training_defaults(self) -> dict[str, Any]:
        """Defaults the components suggest to a trainer (e.g. ``{"ema": True}`` for diffusion heads)."""
        return {**self.backbone.training_defaults, **self.head.training_defaults}

    # ----------------------------------------------------------------- running
    def _prepare(self, batch: Batch, *, training: bool) -> dict[str, Any]:
        features = dict(self.input_features)
        if training:
            if ACTION not in batch:
                raise ValueError(f"missing batch key {ACTION!r}: training needs the target chunk (B, H, A)")
            features.update(self.output_features)
        validate_batch(batch, features, n_obs_steps=self.config.n_obs_steps, horizon=self.head.horizon)
        return self.normalizer.normalize_batch(batch)

    def encode(self, batch: Batch) -> BackboneOutput:
        """Normalized batch -> context (projected to the head's width when a projector is set)."""
        context = self.backbone(batch)
        if self.projector is not None:
            context = dataclasses.replace(context, features=self.projector(context.features))
        return context

    def forward(self, batch: Batch) -> HeadOutput:
        """Training: loss of the head on the normalized target ``batch["action"]`` (B, H, A)."""
        nbatch = self._prepare(batch, training=True)
        return self.head(self.encode(nbatch), nbatch)

    @torch.no_grad()
    def predict_action_chunk(
        self, batch: Batch, *, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, H, A) actions in robot units. ``noise`` (B, H, A) seeds generative heads."""
        nbatch = self._prepare(batch, training=False)
        if noise is not None:
            want = (noise.shape[0], self.head.horizon, self.head.action_dim)
            if tuple(noise.shape) != want:
                raise ValueError(f"noise: expected shape {want}, received {tuple(noise.shape)}")
        chunk = self.head.predict_action(self.encode(nbatch), nbatch, noise=noise, generator=generator)
        return self.normalizer.unnormalize(ACTION, chunk)

    def _with_history(self, batch: Batch) -> Batch:
        """Stack the last n_obs_steps single-step observations into (B, T, ...) windows."""
        t = self.config.n_obs_steps
        if t == 1:
            return batch
        out = dict(batch)
        for key, feature in self.input_features.items():
            value = batch.get(key)
            if not isinstance(value, Tensor) or value.dim() != len(feature.shape) + 1:
                continue  # already a window (B, T, ...) or not a tensor
            history = self._obs_history.setdefault(key, collections.deque(maxlen=t))
            if not history:
                history.extend([value] * t)
            else:
                history.append(value)
            out[key] = torch.stack(list(history), dim=1)
        return out

    @torch.no_grad()
    def select_action(self, batch: Batch, *, generator: torch.Generator | None = None) -> Tensor:
        """One action (B, A) for this control step, from the queue or the temporal ensemble."""
        batch = self._with_history(batch)
        if self._ensembler is not None:
            return self._ensembler.update(self.predict_action_chunk(batch, generator=generator))
        if len(self._queue) == 0:
            self._queue.push(self.predict_action_chunk(batch, generator=generator))
        return self._queue.pop()

    def reset(self) -> None:
        """Forget queued actions and observation history (call at the start of an episode)."""
        self._queue.reset()
        self._obs_history.clear()
        if self._ensembler is not None:
            self._ensembler.reset()

    # ----------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and normalization stats).

        Fields that only pointed at initial weight files (``weight_source_fields``) are saved as
        None: the directory is self-contained.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME, metadata={"format": "pt"})
        config = self.config.to_dict()
        for key, component in (("backbone", self.backbone), ("head", self.head)):
            for name in component.weight_source_fields:  # the weights are in model.safetensors now
                if config[key].get(name) is not None:
                    config[key][name] = None
        text = json.dumps(config, indent=2, sort_keys=True)
        atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        strict: bool = True,
        **config_overrides: Any,
    ) -> VLAPolicy:
        """Load a local directory or a hub repo id (safetensors only; no pickle, no remote code).

        The policy comes back in eval mode (dropout off), ready for inference, as transformers'
        ``from_pretrained``; call ``.train()`` to fine-tune.
        """
        directory = Path(path_or_repo_id)
        if not directory.is_dir():
            from huggingface_hub import snapshot_download

            directory = Path(
                snapshot_download(str(path_or_repo_id), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
            )
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not a vla policy directory")
        config = json.loads(config_path.read_text())
        config.update(config_overrides)
        policy = cls(config)
        load_checkpoint(policy, directory / WEIGHTS_NAME, strict=strict)
        return policy.eval()
