"""The training config: strict dataclasses, YAML loading and ``--set key.sub=value`` overrides.

A run is described by one YAML file whose top level is ``policy``, ``data``, ``optim``,
``schedule``, ``parallel``, ``checkpoint``, ``log``, ``eval``, the optional ``peft`` (LoRA) and the
scalars ``steps``, ``batch_size`` (global, over all ranks and accumulation steps), ``seed`` and ``output_dir``.
``policy`` is ``{type: name, ...}`` for a registered policy (``type`` defaults to ``vla``, whose fields
are a :class:`vla_core.PolicyConfig`; the features may be left out: the dataset supplies them);
``data`` is ``{type: name, ...}`` for :func:`vla_train.data.build_dataset`.
Unknown keys fail with the key's dotted name and the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from vla_core import ComponentConfig, ConfigError
from vla_core.config import check_choice, check_positive
from vla_core.errors import closest

from vla_train.adapters import PeftConfig


@dataclass(frozen=True, kw_only=True)
class OptimConfig(ComponentConfig):
    """AdamW, clipping, accumulation and EMA.

    ``lr_scales`` maps parameter-name prefixes (``backbone``, ``head``, ``backbone.encoder``)
    to learning-rate factors; the longest matching prefix wins. ``ema=None`` follows the
    policy's ``training_defaults`` (on for diffusion heads).
    """

    lr: float = 1e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 10.0
    grad_accum_steps: int = 1
    lr_scales: dict[str, float] = field(default_factory=dict)
    ema: bool | None = None
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay_t = min(ema_decay, (1 + t) / (10 + t))

    def __post_init__(self) -> None:
        check_positive("optim", lr=self.lr, grad_accum_steps=self.grad_accum_steps, eps=self.eps)
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay: expected >= 0, received {self.weight_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay: expected a value in [0, 1), received {self.ema_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"optim.grad_clip: expected a positive number or null, received {self.grad_clip}")


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig(ComponentConfig):
    """Learning-rate schedule: linear warmup, then ``cosine`` decay to ``min_lr_ratio * lr`` or ``constant``."""

    name: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_choice("schedule", "name", self.name, ("cosine", "constant"))
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(
                f"schedule: expected warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, received "
                f"{self.warmup_steps} and {self.min_lr_ratio}"
            )


@dataclass(frozen=True, kw_only=True)
class ParallelConfig(ComponentConfig):
    """Device, FSDP2 and host-memory settings. ``None`` means automatic.

    ``fsdp=None`` shards when more than one process runs. ``mixed_precision``: ``auto`` is ``none``
    on CPU and, on GPU, ``fsdp`` (FSDP2 MixedPrecisionPolicy: bf16 parameters, fp32 gradient
    reduction) when sharding a model without floating-point buffers, else ``autocast`` (fp32
    parameters and reduction, bf16 compute under torch.autocast). ``retain_host_memory`` (opt-in):
    glibc's malloc keeps freed memory for the next step instead of returning (and re-faulting) it
    (:mod:`vla_train.host_memory`; faster CPU steps, resident memory stays at its peak). Off by
    default: a library does not change the process's allocator unasked.
    """

    device: str = "auto"
    fsdp: bool | None = None
    mixed_precision: str = "auto"
    # dtype the policy's weights are held in: bfloat16 halves weight memory (and, for the trainable
    # weights, gradient and AdamW-state memory: pure-bf16 training); with peft the frozen base is held in
    # bf16 and the adapters stay float32. Inputs are cast to it, normalization stats stay float32.
    weight_dtype: str = "float32"
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True
    retain_host_memory: bool = False

    def __post_init__(self) -> None:
        check_choice("parallel", "device", self.device, ("auto", "cpu", "cuda"))
        check_choice("parallel", "mixed_precision", self.mixed_precision, ("auto", "fsdp", "autocast", "none"))
        check_choice("parallel", "weight_dtype", self.weight_dtype, ("float32", "bfloat16"))


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig(ComponentConfig):
    """Training checkpoints (:mod:`vla_train.checkpoint`) every ``every`` steps and at the last step (0: none),
    keeping the last ``keep_last``."""

    every: int = 1000
    keep_last: int = 2
    export_ema: bool = True  # export the EMA weights (when EMA is on) to run_dir/pretrained

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"checkpoint.every: expected >= 0, received {self.every}")
        check_positive("checkpoint", keep_last=self.keep_last)


@dataclass(frozen=True, kw_only=True)
class LogConfig(ComponentConfig):
    every: int = 10  # metrics.jsonl line (and tracker record) every N steps
    progress: bool = True
    trackers: tuple[str, ...] = ("jsonl",)  # any of jsonl, tensorboard, wandb, trackio (vla_train.trackers)
    project: str = "vla"  # the wandb / trackio project
    run_name: str | None = None  # the wandb / trackio run name (default: the run directory's name)
    tensorboard: bool = False  # shorthand for adding "tensorboard" to trackers
    plot: bool = True

    def __post_init__(self) -> None:
        from vla_train.trackers import TRACKERS

        check_positive("log", every=self.every)
        for name in self.trackers:
            if name not in TRACKERS:
                raise ConfigError(f"log.trackers: expected names among {list(TRACKERS)}, received {name!r}."
                                  f"{closest(str(name), TRACKERS)}")

    @property
    def active_trackers(self) -> tuple[str, ...]:
        """``trackers`` with ``jsonl`` first and ``tensorboard`` when the shorthand is set, each once."""
        return tuple(dict.fromkeys(("jsonl", *self.trackers, *(("tensorboard",) if self.tensorboard else ()))))


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ComponentConfig):
    """Closed-loop evaluation after training (datasets that provide an environment)."""

    episodes: int = 0
    seed: int = 100_000
    batch_size: int = 50  # environments stepped together
    save_video: bool = False

    def __post_init__(self) -> None:
        if self.episodes < 0:
            raise ConfigError(f"eval.episodes: expected >= 0, received {self.episodes}")
        check_positive("eval", batch_size=self.batch_size)


SECTIONS: dict[str, type[ComponentConfig]] = {
    "peft": PeftConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "parallel": ParallelConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
    "eval": EvalConfig,
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The whole run. ``policy`` and ``data`` stay mappings: their own builders validate them."""

    policy: dict[str, Any]
    data: dict[str, Any]
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    peft: PeftConfig | None = None  # LoRA fine-tuning (vla_train.adapters); absent: full fine-tuning
    steps: int
    batch_size: int
    seed: int = 0
    output_dir: str

    def __post_init__(self) -> None:
        check_positive("config", steps=self.steps, batch_size=self.batch_size)
        for key in ("policy", "data"):
            value = getattr(self, key)
            if not isinstance(value, Mapping) or "type" not in value and key == "data":
                raise ConfigError(f"config key {key!r}: expected a mapping{' with a type' if key == 'data' else ''}, "
                                  f"received {value!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"the training config must be a mapping, received {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise ConfigError(f"unknown config key {key!r}.{closest(key, names)} Valid keys: {', '.join(names)}")
        missing = [n for n in ("policy", "data", "steps", "batch_size", "output_dir") if n not in data]
        if missing:
            raise ConfigError(f"the training config lacks required key(s) {missing}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "peft" and value is None:
                kwargs[key] = None
            elif key in SECTIONS:
                kwargs[key] = _section(key, SECTIONS[key], value or {})
            elif key in ("steps", "batch_size", "seed"):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError(f"config key {key!r}: expected an integer, received {value!r}")
                kwargs[key] = value
            elif key == "output_dir":
                kwargs[key] = str(value)
            else:
                kwargs[key] = dict(value) if isinstance(value, Mapping) else value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, ComponentConfig) else _plain(value)
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _section(name: str, cls: type[ComponentConfig], value: Any) -> ComponentConfig:
    try:
        return cls.from_dict(value)
    except ConfigError as err:
        msg = str(err).replace(f"{cls.__name__}.", f"{name}.").replace(f"{cls.__name__}:", f"{name}:")
        raise ConfigError(f"config section {msg}" if not msg.startswith(name) else msg) from None


# ---------------------------------------------------------------------------- YAML and overrides
MAX_YAML_NODES = 100_000  # after alias expansion; a training config has a few hundred


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases (``*name``) expand to more than
    ``MAX_YAML_NODES`` nodes, or refer to themselves, before anything is constructed: a
    billion-laughs alias bomb fails at once instead of filling the memory."""

    def construct_document(self, node: yaml.Node) -> Any:
        expanded_size(node, MAX_YAML_NODES)
        return super().construct_document(node)


def expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes of ``node`` with every alias expanded (counted once per distinct node, in linear time)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError("YAML: an alias refers to a node that contains it (a recursive structure); "
                              "refusing it")
        active.add(key)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        active.discard(key)
        if total > limit:
            raise ConfigError(f"YAML: the document expands to more than {limit:,} nodes through its aliases "
                              "(&anchor / *alias); refusing it (an alias bomb?)")
        sizes[key] = total
        return total

    return size(node)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML with :class:`BoundedLoader`; errors are ``ConfigError`` naming ``where``."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: the YAML nests too deeply") from None


def parse_value(text: str) -> Any:
    """A ``--set`` value as YAML (``1e-4`` is a float here, unlike in plain YAML 1.1)."""
    value = load_yaml(text, f"--set value {text!r}") if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` assignments (values YAML-parsed) to a nested mapping copy."""
    out = _plain(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key.sub=value, received {item!r}")
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])!r} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config (a file, or a shipped config's name: ``quickstart``) and apply ``--set``
    overrides."""
    from vla_train.builtin_configs import resolve_config

    path = resolve_config(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from None
    data = load_yaml(text, str(path)) or {}
    return TrainConfig.from_dict(apply_overrides(data, overrides))


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
