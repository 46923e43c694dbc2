"""The ``Policy`` base class: what every top-level policy shares, whatever sits inside it.

A policy takes raw batches (robot units, images in [0, 1]) and returns actions in robot units. The
base class owns the boundary: feature declarations, batch validation, normalization, the action
queue / temporal ensemble / observation history behind ``select_action``, and
``save_pretrained`` / ``from_pretrained``. A subclass builds its modules and implements two methods
on normalized batches:

- ``compute_loss(nbatch) -> HeadOutput`` (training), and
- ``sample_chunk(nbatch, *, noise, generator) -> Tensor`` (B, H, A), normalized actions.

``compile(mode, backend=, dtype=)`` swaps ``sample_chunk`` for a ``torch.compile``-d one (CUDA graphs,
bf16 weights optional; :mod:`vla_core.compiled`) behind ``predict_action_chunk``.

Policies register under names in ``POLICIES`` (entry-point group ``vla.policies``); the generic
:class:`~vla_core.policy.VLAPolicy` is ``"vla"``. ``config.json`` records the name, so
:func:`load_policy` rebuilds any registered policy from a saved directory.
"""

from __future__ import annotations

import abc
import collections
import itertools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vla_core.actions import ActionQueue, TemporalEnsembler
from vla_core.checkpoint import atomic_write, load_checkpoint, save_safetensors
from vla_core.compiled import COMPILE_MODES, CompiledSampler, compile_sampler
from vla_core.config import ComponentConfig, resolve_dtype
from vla_core.errors import CheckpointWriteError, ConfigError
from vla_core.features import ACTION, FeatureType, PolicyFeature, parse_features, prepare_batch
from vla_core.interfaces import Batch, HeadOutput
from vla_core.normalize import Normalizer, resolve_modes
from vla_core.paths import is_local_path, missing_path_error
from vla_core.registry import POLICIES
from vla_core.rtc import RTCGuide, check_prefix

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
    """Base of every registered policy. Subclasses set ``self.horizon`` (H) in ``__init__``.

    Every entry point (``forward``, ``predict_action_chunk``, ``select_action`` in each of its branches)
    checks its batch before anything runs or changes (:func:`~vla_core.features.prepare_batch`): a
    rejected batch leaves the weights, the BatchNorm statistics, the observation history and the action
    queue as they were. The input rules:

    - **dtype**: floating inputs of another float dtype (float16, bfloat16, float64) are cast to the
      policy's :attr:`compute_dtype` (the dtype of its floating parameters, or FSDP's mixed-precision
      dtype), so a float64 ``action`` or a float32 observation for a bf16 policy works; integer and
      bool tensors for float features are refused by key, except uint8 images, which become float
      ``x / 255`` in [0, 1].
    - **values**: NaN/Inf anywhere, and float images outside [0, 1] (0..255 floats, negative values),
      are refused by key with what was seen (one host sync per batch for all value checks).
    - **keys**: every declared feature must be present with its shape; a key under the prefix of a
      declared observation type (``observation.images.``, ``observation.state``,
      ``observation.environment_state``) that the features lack (an extra camera,
      ``observation.state_2``) is refused; ``*_is_pad`` masks and other keys pass through.
    - **size**: an empty batch (B = 0) is refused.
    """

    config_class: ClassVar[type[BasePolicyConfig]] = BasePolicyConfig
    registered_name: ClassVar[str]
    horizon: int
    # The dtype FSDP's mixed precision computes in (set by vla_core.parallel.apply_fsdp2), else None.
    mixed_precision_dtype: torch.dtype | None = None
    COMPILE_MODES: ClassVar[tuple[str, ...]] = COMPILE_MODES  # what compile(mode=...) takes (None = "default")

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
        self._compiled: CompiledSampler | None = None

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

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype floating inputs are cast to: :attr:`mixed_precision_dtype` when set, else the dtype
        holding most floating parameter elements (a bf16 base with fp32 LoRA adapters computes in bf16;
        float32 on a tie or when there are none)."""
        if self.mixed_precision_dtype is not None:
            return self.mixed_precision_dtype
        counts: dict[torch.dtype, int] = {}
        for p in self.parameters():
            if p.is_floating_point():
                counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
        if not counts:
            return torch.float32
        most = max(counts.values())
        winners = [d for d, n in counts.items() if n == most]
        return winners[0] if len(winners) == 1 else torch.float32

    def set_dtype(self, dtype: torch.dtype | str) -> Policy:
        """Hold every floating parameter and buffer in ``dtype`` (``torch.bfloat16``, ``"bf16"``, ...),
        except the normalization stats, which stay float32. Inputs are then cast to ``dtype`` at the
        boundary and actions come back as float32. Returns ``self``."""
        return self.to(resolve_dtype(dtype, f"{type(self).__name__}.set_dtype(dtype)"))

    def prepare(self, batch: Batch, *, training: bool = False, single_step: bool = False) -> tuple[Batch, int]:
        """``(checked batch, B)``: ``batch`` checked against the features (and the target when
        ``training``) and converted by the input rules (see the class docstring); ``batch`` is unchanged.
        ``single_step`` also accepts one observation step (B, ...) when ``n_obs_steps > 1``."""
        features = dict(self.input_features)
        if training:
            if ACTION not in batch:
                raise ValueError(f"missing batch key {ACTION!r}: training needs the target chunk (B, H, A)")
            features.update(self.output_features)
        return prepare_batch(batch, features, n_obs_steps=self.config.n_obs_steps, horizon=self.horizon,
                             dtype=self.compute_dtype, single_step=single_step)

    def validate(self, batch: Batch, *, training: bool = False) -> int:
        """Check ``batch`` against the features (and the target when ``training``); returns B."""
        return self.prepare(batch, training=training)[1]

    def forward(self, batch: Batch) -> HeadOutput:
        """Training: the loss on the normalized target ``batch["action"]`` (B, H, A)."""
        batch, _ = self.prepare(batch, training=True)
        return self.compute_loss(self.normalizer.normalize_batch(batch))

    @property
    def supports_rtc(self) -> bool:
        """Whether ``predict_action_chunk`` takes a ``prefix`` (real-time chunking; flow-matching heads)."""
        return False

    def rtc_unsupported_reason(self) -> str:
        """Why this policy refuses a ``prefix`` (subclasses name their head)."""
        return f"policy {self.registered_name!r} does not sample by flow matching"

    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: Batch,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        prefix: Tensor | None = None,
        delay: int = 0,
    ) -> Tensor:
        """(B, H, A) actions in robot units (float32 for a bf16 / fp16 policy). ``noise`` (B, H, A) seeds
        generative heads.

        Real-time chunking (:mod:`vla_core.rtc`, flow-matching heads only, see :attr:`supports_rtc`):
        ``prefix`` (H', A) or (B, H', A) holds the previous chunk's actions not yet executed when this
        observation was taken, in robot units, aligned with this chunk's first rows (1 <= H' <= H);
        ``delay`` (0 <= delay <= H') is how many of them run before this chunk arrives. The result's
        first ``delay`` actions equal the prefix's exactly; the rest are guided to continue it.
        """
        batch, bsz = self.prepare(batch)
        if noise is not None:
            want = (bsz, self.horizon, self.action_dim)
            if tuple(noise.shape) != want:
                raise ValueError(f"noise: expected shape {want}, received {tuple(noise.shape)}")
        nbatch = self.normalizer.normalize_batch(batch)
        if prefix is None:
            if delay != 0:
                raise ValueError(f"delay: {delay!r} needs a prefix (the previous chunk's actions); received prefix=None")
            return self._sample(nbatch, noise=noise, generator=generator)
        prefix = self._rtc_prefix(prefix, bsz, delay)
        guide = RTCGuide(self.normalizer.normalize(ACTION, prefix), delay, self.horizon)
        chunk = self._sample(nbatch, noise=noise, generator=generator, guide=guide)
        chunk[:, :delay] = prefix[:, :delay].to(chunk)  # exact in robot units, not only after a normalize round trip
        return chunk

    def _rtc_prefix(self, prefix: Any, bsz: int, delay: Any) -> Tensor:
        """``prefix`` as a (B, H', A) tensor in the compute dtype, checked (with ``delay``)."""
        if not self.supports_rtc:
            raise ValueError(f"prefix: real-time chunking needs a flow-matching head (a vla_core.rtc.FlowActionHead "
                             f"such as pi0_flow or dit_flow_matching); {self.rtc_unsupported_reason()}")
        if not isinstance(prefix, Tensor):
            try:
                prefix = torch.as_tensor(prefix)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"prefix: expected an array (H', A) or (B, H', A), received "
                                 f"{type(prefix).__name__}") from None
        if prefix.dim() == 2:
            prefix = prefix.unsqueeze(0).expand(bsz, -1, -1)
        if prefix.dim() == 3 and prefix.shape[0] != bsz:
            raise ValueError(f"prefix: expected (H', A) or (B, H', A) with B = {bsz} (the batch), received "
                             f"{tuple(prefix.shape)}")
        check_prefix(prefix, delay, self.horizon, self.action_dim)
        device = next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device
        return prefix.to(device=device, dtype=self.compute_dtype)

    def _sample(self, nbatch: Batch, **kwargs: Any) -> Tensor:
        """``sample_chunk`` (compiled when :meth:`compile` was called), unnormalized to robot units."""
        sample = self.sample_chunk if self._compiled is None else self._compiled
        return self.normalizer.unnormalize(ACTION, _float32_if_low(sample(nbatch, **kwargs)))

    # ----------------------------------------------------------------- compiled inference
    def compile(  # overrides nn.Module.compile on purpose: a policy compiles its inference path
        self,
        mode: str | None = None,
        *,
        backend: str | Any = "inductor",
        dtype: torch.dtype | None = None,
        fullgraph: bool = False,
    ) -> Policy:
        """Compile the inference path (``sample_chunk``: backbone, projector and the whole sampling loop)
        with ``torch.compile`` (static shapes); ``predict_action_chunk`` and ``select_action`` use it from
        now on. Returns ``self``. Training (``forward``) stays eager: this is not ``nn.Module.compile``.

        ``mode``: one of :data:`COMPILE_MODES` (None = ``"default"``); ``"reduce-overhead"`` captures CUDA
        graphs on a CUDA device and falls back to ``"default"`` with a warning elsewhere. ``backend``: a
        ``torch.compile`` backend name or callable. ``dtype``: cast the weights to it in place (e.g.
        ``torch.bfloat16``; normalization stats stay float32) and run under autocast; the chunk comes back
        float32. Calling ``compile`` again replaces the previous compilation. See :mod:`vla_core.compiled`.
        """
        self._compiled = compile_sampler(self, mode, backend=backend, dtype=dtype, fullgraph=fullgraph)
        return self

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`compile` was called (``predict_action_chunk`` runs the compiled path)."""
        return self._compiled is not None

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
        """The (checked) batch with single-step observations (B, ...) stacked with the last
        ``n_obs_steps - 1`` into windows (B, T, ...), and the histories to keep. Changes nothing."""
        t = self.config.n_obs_steps
        if t == 1:
            return batch, {}
        out, histories = dict(batch), {}
        for key, feature in self.input_features.items():
            value = batch.get(key)
            if not isinstance(value, Tensor) or value.dim() != len(feature.shape) + 1:
                continue  # already a window (B, T, ...), or language
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

        The observation is checked (and converted) before anything changes, whether an action is queued
        or not: a rejected observation leaves the history, the queue and the ensemble as they were.
        """
        queue, ensembler = self._action_selection()
        batch, _ = self.prepare(batch, single_step=True)
        window, histories = self._stack_history(batch)
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
        """Write ``config.json`` (with the policy ``type``) and ``model.safetensors`` (weights and stats).

        Both are written into a temporary directory inside ``directory`` and then renamed into place: a
        failure (a full disk) raises :class:`~vla_core.errors.CheckpointWriteError` naming the path and
        leaves no partial file (nor ``directory`` itself, when this call created it)."""
        directory = Path(directory)
        unset = [key for key in self.normalizer.modes
                 if any(bool(torch.isnan(b).all()) for b in self.normalizer.stats_of(key).values())]
        if unset:
            warnings.warn(f"saving a policy whose normalization stats are not set for {unset}: it cannot act "
                          "until they are; set them with policy.normalizer.set_stats(dataset_stats) before saving",
                          UserWarning, stacklevel=2)
        created = not directory.exists()
        # insertion order, not sorted: the order of the features is the order of the cameras
        text = json.dumps({"type": self.registered_name, **self.config_to_save()}, indent=2)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".saving-", dir=directory) as tmp:
                save_safetensors(self.state_dict(), Path(tmp) / WEIGHTS_NAME, metadata={"format": "pt"})
                atomic_write(Path(tmp) / CONFIG_NAME, lambda path: Path(path).write_text(text))
                os.replace(Path(tmp) / WEIGHTS_NAME, directory / WEIGHTS_NAME)
                os.replace(Path(tmp) / CONFIG_NAME, directory / CONFIG_NAME)
        except OSError as err:
            if created:
                shutil.rmtree(directory, ignore_errors=True)
            raise CheckpointWriteError(f"cannot save the policy to {directory}: {err}; the partial files were "
                                       "removed") from err
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        **card: Any,
    ):
        """Save this policy and upload it to the Hugging Face Hub repo ``repo_id`` (created if needed) with a
        model card (``README.md``); ``card`` goes to :func:`vla_core.hub.model_card` (``dataset``,
        ``dataset_id``, ``train_config``, ``eval_results``, ``tags``). Returns huggingface_hub's
        ``CommitInfo``. Load it back with ``load_policy(repo_id)``."""
        from vla_core.hub import card_for_directory, push_folder

        with tempfile.TemporaryDirectory(prefix="vla-push-") as tmp:
            directory = self.save_pretrained(Path(tmp) / "policy")
            return push_folder(directory, repo_id, card=card_for_directory(directory, repo_id=repo_id, **card),
                               private=private, token=token, revision=revision, commit_message=commit_message)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        revision: str | None = None,
        strict: bool = True,
        allow_nonfinite: bool = False,
        dtype: torch.dtype | str | None = None,
        **config_overrides: Any,
    ) -> Policy:
        """Load a local directory or a hub repo id (safetensors only; no pickle, no remote code).

        Called on a subclass, the saved ``type`` must name it (or a subclass of it). The policy
        comes back in eval mode, ready for inference; call ``.train()`` to fine-tune. Weights with
        NaN/Inf are refused unless ``allow_nonfinite=True`` (then a warning names them). A name that
        can only be a local path (see :func:`vla_core.paths.is_local_path`) is never looked up on the Hub.

        ``dtype`` (``torch.bfloat16``, ``"bf16"``, ``torch.float16``, ...) holds the weights in that dtype
        (see :meth:`set_dtype`): the policy is cast before the weights are copied in, so the full-precision
        copy is freed first; the normalization stats stay float32, float32 observations are cast at the
        boundary and actions come back as float32.
        """
        if dtype is not None:
            dtype = resolve_dtype(dtype, "from_pretrained(dtype)")
        directory = resolve_policy_dir(path_or_repo_id, revision=revision)
        config_file = directory / CONFIG_NAME
        try:
            data = json.loads(config_file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{config_file}: not a readable JSON policy config ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: expected a JSON object, received {type(data).__name__}")
        name = data.pop("type", DEFAULT_POLICY)
        policy_cls = POLICIES.get(name)
        if not issubclass(policy_cls, cls):
            raise ConfigError(f"{config_file}: holds a {name!r} policy ({policy_cls.__qualname__}), "
                              f"not a {cls.__qualname__}; load it with vla_core.load_policy")
        data.update(config_overrides)
        try:
            policy = policy_cls(data)
        except ConfigError as err:
            raise ConfigError(f"{config_file}: {err}") from None
        if dtype is not None:
            policy.set_dtype(dtype)
        load_checkpoint(policy, directory / WEIGHTS_NAME, strict=strict, allow_nonfinite=allow_nonfinite)
        return policy.eval()


def _float32_if_low(chunk: Tensor) -> Tensor:
    """A bf16 / fp16 policy's chunk in float32 (robot units, unnormalized with the float32 stats)."""
    return chunk.float() if chunk.dtype.itemsize < 4 else chunk


def resolve_policy_dir(path_or_repo_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local policy directory, or a hub repo id downloaded (config and weights only).

    A name that can only be local and does not exist raises ``FileNotFoundError`` without asking the Hub."""
    directory = Path(path_or_repo_id).expanduser()
    if not directory.is_dir():
        if is_local_path(path_or_repo_id):
            raise missing_path_error(path_or_repo_id, "policy directory")
        from huggingface_hub import snapshot_download

        try:
            directory = Path(snapshot_download(str(path_or_repo_id), revision=revision,
                                               allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
        except (OSError, ValueError) as err:  # huggingface_hub's errors derive from these
            raise FileNotFoundError(f"{path_or_repo_id} is no local directory, and the Hugging Face Hub gave no "
                                    f"policy for it: {type(err).__name__}: {' '.join(str(err).split())}") from None
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
