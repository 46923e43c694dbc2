"""The ``Policy`` base class: what every top-level policy shares, whatever sits inside it.

A policy takes raw batches (robot units, images in [0, 1]) and returns actions in robot units. The
base class owns the boundary: feature declarations, batch validation, normalization, the action
queue / temporal ensemble / observation history behind ``select_action``, and
``save_pretrained`` / ``from_pretrained``. A subclass builds its modules and implements two methods
on normalized batches:

- ``compute_loss(nbatch) -> HeadOutput`` (training), and
- ``sample_chunk(nbatch, *, noise, generator) -> Tensor`` (B, H, A), normalized actions.

Policies register under names in ``POLICIES`` (entry-point group ``vla.policies``); the generic
:class:`~vla_core.policy.VLAPolicy` is ``"vla"``. ``config.json`` records the name, so
:func:`load_policy` rebuilds any registered policy from a saved directory.
"""

from __future__ import annotations

import abc
import collections
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vla_core.actions import ActionQueue, TemporalEnsembler
from vla_core.checkpoint import atomic_write, load_checkpoint, save_safetensors
from vla_core.config import ComponentConfig
from vla_core.errors import ConfigError
from vla_core.features import ACTION, FeatureType, PolicyFeature, parse_features, validate_batch
from vla_core.interfaces import Batch, HeadOutput
from vla_core.normalize import Normalizer, resolve_modes
from vla_core.registry import POLICIES

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_POLICY = "vla"


@dataclass(frozen=True, kw_only=True)
class BasePolicyConfig(ComponentConfig):
    """The fields every policy has: its features, normalization and how chunks become actions."""

    input_features: dict[str, Any]
    output_features: dict[str, Any]
    normalization: dict[str, str] = field(default_factory=dict)  # feature key or type -> mode
    n_obs_steps: int = 1
    n_action_steps: int | None = None  # defaults to the horizon minus action_start
    # chunk index of the first executed action; None: n_obs_steps - 1, as the training windows start
    # at the oldest observed step (LeRobot's convention)
    action_start: int | None = None
    temporal_ensemble_coeff: float | None = None  # ACT uses 0.01; needs n_action_steps == 1

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

    @property
    def inputs(self) -> dict[str, PolicyFeature]:
        return parse_features(self.input_features)

    @property
    def outputs(self) -> dict[str, PolicyFeature]:
        return parse_features(self.output_features)


class Policy(nn.Module, metaclass=abc.ABCMeta):
    """Base of every registered policy. Subclasses set ``self.horizon`` (H) in ``__init__``."""

    config_class: ClassVar[type[BasePolicyConfig]] = BasePolicyConfig
    registered_name: ClassVar[str]
    horizon: int

    def __init__(self, config: BasePolicyConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            config = self.build_config(config if isinstance(config, Mapping) else config.to_dict())
        self.config = config
        self.input_features = config.inputs
        self.output_features = config.outputs
        self.normalizer = Normalizer({**self.input_features, **self.output_features}, config.normalization)
        self._selection: tuple[ActionQueue, TemporalEnsembler | None] | None = None
        self._obs_history: dict[str, collections.deque] = {}

    # ----------------------------------------------------------------- what subclasses implement
    @abc.abstractmethod
    def compute_loss(self, nbatch: Batch) -> HeadOutput:
        """Training loss on a validated, normalized batch (target ``nbatch["action"]`` (B, H, A))."""

    @abc.abstractmethod
    def sample_chunk(self, nbatch: Batch, *, noise: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Normalized action chunk (B, H, A) for a validated, normalized batch."""

    def fsdp_units(self) -> set[type[nn.Module]]:
        """Module classes to shard one by one with FSDP2. Default: none (the root only)."""
        return set()

    @property
    def training_defaults(self) -> dict[str, Any]:
        """Defaults suggested to a trainer (e.g. ``{"ema": True}`` for diffusion heads)."""
        return {}

    @classmethod
    def build_config(cls, data: Mapping[str, Any]) -> BasePolicyConfig:
        """The complete config from a mapping (subclasses fill derived fields here)."""
        return cls.config_class.from_dict(data)

    # ----------------------------------------------------------------- the boundary
    @property
    def action_dim(self) -> int:
        return self.output_features[ACTION].shape[-1]

    def validate(self, batch: Batch, *, training: bool = False) -> int:
        """Check ``batch`` against the features (and the target when ``training``); returns B."""
        features = dict(self.input_features)
        if training:
            if ACTION not in batch:
                raise ValueError(f"missing batch key {ACTION!r}: training needs the target chunk (B, H, A)")
            features.update(self.output_features)
        return validate_batch(batch, features, n_obs_steps=self.config.n_obs_steps, horizon=self.horizon)

    def forward(self, batch: Batch) -> HeadOutput:
        """Training: the loss on the normalized target ``batch["action"]`` (B, H, A)."""
        self.validate(batch, training=True)
        return self.compute_loss(self.normalizer.normalize_batch(batch))

    @torch.no_grad()
    def predict_action_chunk(
        self, batch: Batch, *, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, H, A) actions in robot units. ``noise`` (B, H, A) seeds generative heads."""
        bsz = self.validate(batch)
        if noise is not None:
            want = (bsz, self.horizon, self.action_dim)
            if tuple(noise.shape) != want:
                raise ValueError(f"noise: expected shape {want}, received {tuple(noise.shape)}")
        chunk = self.sample_chunk(self.normalizer.normalize_batch(batch), noise=noise, generator=generator)
        return self.normalizer.unnormalize(ACTION, chunk)

    # ----------------------------------------------------------------- one action per control step
    def _action_selection(self) -> tuple[ActionQueue, TemporalEnsembler | None]:
        if self._selection is None:
            c = self.config
            start = c.n_obs_steps - 1 if c.action_start is None else c.action_start
            steps = c.n_action_steps or self.horizon - start
            if steps < 1 or start + steps > self.horizon:
                after = f" starting at action_start {start}" if start else ""
                raise ConfigError(f"n_action_steps: expected <= the horizon {self.horizon}, received {steps}{after}")
            ensembler = None if c.temporal_ensemble_coeff is None else TemporalEnsembler(c.temporal_ensemble_coeff, self.horizon)
            self._selection = (ActionQueue(steps, start=start), ensembler)
        return self._selection

    @property
    def n_action_steps(self) -> int:
        return self._action_selection()[0].n_action_steps

    @property
    def queued_actions(self) -> int:
        """Actions of the last chunk still waiting to be returned by ``select_action``."""
        return len(self._action_selection()[0])

    def _stack_history(self, batch: Batch) -> tuple[Batch, dict[str, list[Tensor]]]:
        """The batch with single-step observations (B, ...) stacked with the last ``n_obs_steps - 1``
        into windows (B, T, ...), and the histories to keep if it is accepted. Changes nothing."""
        t = self.config.n_obs_steps
        if t == 1:
            return batch, {}
        out, histories = dict(batch), {}
        for key, feature in self.input_features.items():
            value = batch.get(key)
            if not isinstance(value, Tensor) or value.dim() != len(feature.shape) + 1:
                continue  # already a window (B, T, ...), or not a tensor (validation names it)
            past = list(self._obs_history.get(key, ()))
            history = ([value] * t if not past else past + [value])[-t:]
            if any(h.shape != value.shape for h in history):
                raise ValueError(f"batch key {key!r}: shape {tuple(value.shape)} differs from the previous "
                                 f"observation's {tuple(history[0].shape)}; call reset() between episodes")
            histories[key] = history
            out[key] = torch.stack(history, dim=1)
        return out, histories

    @torch.no_grad()
    def select_action(self, batch: Batch, *, generator: torch.Generator | None = None) -> Tensor:
        """One action (B, A) for this control step, from the queue or the temporal ensemble.

        The observation is validated before anything changes: a rejected observation leaves the
        history, the queue and the ensemble as they were.
        """
        queue, ensembler = self._action_selection()
        window, histories = self._stack_history(batch)
        self.validate(window)
        chunk = None
        if ensembler is not None or len(queue) == 0:
            chunk = self.predict_action_chunk(window, generator=generator)
        for key, history in histories.items():
            self._obs_history[key] = collections.deque(history, maxlen=self.config.n_obs_steps)
        if ensembler is not None:
            return ensembler.update(chunk)
        if chunk is not None:
            queue.push(chunk)
        return queue.pop()

    def reset(self) -> None:
        """Forget queued actions and observation history (call at the start of an episode)."""
        self._obs_history.clear()
        if self._selection is not None:
            queue, ensembler = self._selection
            queue.reset()
            if ensembler is not None:
                ensembler.reset()

    # ----------------------------------------------------------------- saving
    def config_to_save(self) -> dict[str, Any]:
        """The config written to ``config.json`` (subclasses drop fields that point at weight files)."""
        return self.config.to_dict()

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` (with the policy ``type``) and ``model.safetensors`` (weights and stats)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME, metadata={"format": "pt"})
        text = json.dumps({"type": self.registered_name, **self.config_to_save()}, indent=2, sort_keys=True)
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
    ) -> Policy:
        """Load a local directory or a hub repo id (safetensors only; no pickle, no remote code).

        Called on a subclass, the saved ``type`` must name it (or a subclass of it). The policy
        comes back in eval mode, ready for inference; call ``.train()`` to fine-tune.
        """
        directory = resolve_policy_dir(path_or_repo_id, revision=revision)
        data = json.loads((directory / CONFIG_NAME).read_text())
        name = data.pop("type", DEFAULT_POLICY)
        policy_cls = POLICIES.get(name)
        if not issubclass(policy_cls, cls):
            raise ConfigError(f"{directory / CONFIG_NAME}: holds a {name!r} policy ({policy_cls.__qualname__}), "
                              f"not a {cls.__qualname__}; load it with vla_core.load_policy")
        data.update(config_overrides)
        policy = policy_cls(data)
        load_checkpoint(policy, directory / WEIGHTS_NAME, strict=strict)
        return policy.eval()


def resolve_policy_dir(path_or_repo_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local policy directory, or a hub repo id downloaded (config and weights only)."""
    directory = Path(path_or_repo_id)
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        directory = Path(
            snapshot_download(str(path_or_repo_id), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
        )
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory / CONFIG_NAME} not found: not a vla policy directory")
    return directory


def build_policy(spec: Mapping[str, Any]) -> Policy:
    """A registered policy from ``{"type": name, **config}`` (``type`` defaults to ``"vla"``)."""
    spec = dict(spec)
    return POLICIES.get(spec.pop("type", DEFAULT_POLICY))(spec)


def load_policy(path_or_repo_id: str | os.PathLike, **kwargs: Any) -> Policy:
    """Any registered policy from a ``save_pretrained`` directory or hub repo id."""
    return Policy.from_pretrained(path_or_repo_id, **kwargs)
