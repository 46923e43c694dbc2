"""LoRA fine-tuning through the ``peft`` library (``pip install vla-train[lora]``).

The training config's ``peft:`` section (:class:`PeftConfig`) adapts a policy in place, before FSDP2
wraps it: the linear layers matched by ``target_modules`` (glob patterns over our module / parameter
names; by default the ``lora_targets`` each component declares, e.g. the attention and MLP projections
of the VLM and of the action expert) get peft LoRA adapters (``peft.inject_adapter_in_model``); every
other parameter is frozen except those matched by ``unfreeze``. The policy keeps its module tree:
a targeted ``q_proj`` becomes a peft ``LoraLayer`` whose original weight is ``q_proj.base_layer.weight``
and whose adapters are ``q_proj.lora_A.default.weight`` (r, in) and ``q_proj.lora_B.default.weight``
(out, r); its output is ``base(x) + (alpha / r) * B(A(dropout(x)))``.

An adapter directory holds ``adapter_config.json`` (peft's ``LoraConfig``: the targets as peft
stores them (exact names, or the shortest suffixes that match the same layers), ``base_model_name_or_path`` the base policy when known) and ``adapter_model.safetensors``
(the adapters, as peft names them, plus the unfrozen parameters and the normalization stats under
their policy names): :func:`load_adapters` puts it onto the base policy; :func:`merge_adapters`
folds the adapters into the base weights (peft's ``merge``) and gives back a plain policy.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vla_core import (
    CheckpointError,
    ComponentConfig,
    ConfigError,
    MissingExtraError,
    load_tensors,
    save_safetensors,
)
from vla_core.checkpoint import atomic_write
from vla_core.config import check_choice, check_positive

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_NAME = "default"
LORA_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what peft's LoRA adapts


@dataclass(frozen=True, kw_only=True)
class PeftConfig(ComponentConfig):
    """The ``peft:`` section of a training config.

    ``target_modules``: glob patterns over module names (``head.layers.*.self_attn.q_proj``) or their
    weight names (``...q_proj.weight``); ``None`` takes the components' ``lora_targets``. ``unfreeze``:
    glob patterns over parameter names kept trainable besides the adapters (``head.action_out_proj.*``).
    ``merge_on_export``: the run's ``pretrained/`` export is the merged policy (the adapters alone are
    always written to ``run_dir/adapter``). ``base``: a ``save_pretrained`` directory (or hub id) whose
    weights the policy starts from (its normalization stats are recomputed from the data).
    """

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    unfreeze: tuple[str, ...] = ()
    merge_on_export: bool = True
    base: str | None = None

    def __post_init__(self) -> None:
        check_choice("peft", "method", self.method, ("lora",))
        check_positive("peft", r=self.r, alpha=self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"peft.dropout: expected a value in [0, 1), received {self.dropout}")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("peft.target_modules: expected at least one pattern, or null for the components' "
                              "defaults, received []")


def _peft():
    try:
        import peft
    except ImportError as err:
        raise MissingExtraError("LoRA fine-tuning (the peft: section) needs the peft library: "
                                "pip install 'vla-train[lora]'") from err
    return peft


def default_targets(policy: nn.Module) -> list[str]:
    """The components' ``lora_targets``, prefixed with their attribute names (``backbone.``, ``head.``)."""
    return [f"{name}.{pattern}" for name, child in policy.named_children()
            for pattern in getattr(child, "lora_targets", ())]


def target_names(policy: nn.Module, patterns: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Names of the LoRA-able layers (Linear, Embedding, Conv) matched by ``patterns`` (module names or
    their ``.weight`` names; default :func:`default_targets`). A pattern matching none raises."""
    patterns = list(patterns) if patterns is not None else default_targets(policy)
    if not patterns:
        raise ConfigError(f"peft.target_modules: none given and the policy's components "
                          f"({', '.join(type(c).__name__ for c in policy.children())}) declare no lora_targets; "
                          "set peft.target_modules to glob patterns over module names")
    layers = [n for n, m in policy.named_modules() if isinstance(m, LORA_LAYERS)]
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(f"{n}.weight", pattern)]
        if not hits:
            raise ConfigError(f"peft.target_modules: pattern {pattern!r} matches no Linear / Embedding / Conv layer "
                              f"of the policy (e.g. {layers[:3]})")
        chosen.update(hits)
    return sorted(chosen, key=layers.index)


def lora_config(config: PeftConfig, targets: list[str], *, base: str | None = None):
    """peft's ``LoraConfig`` for exact module names ``targets``."""
    peft = _peft()
    return peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=list(targets), bias="none", base_model_name_or_path=base)


def inject(policy: nn.Module, lora) -> nn.Module:
    """Add ``lora``'s adapters to ``policy`` in place (new adapter weights on the base weights' device;
    float32 adapters on a bf16 / fp16 base); only the adapters stay trainable. Returns ``policy``."""
    from peft.functional import cast_adapter_dtype, inject_adapter_in_model

    device = next(policy.parameters()).device
    with torch.device(device):  # meta stays meta (vla_train.memory)
        inject_adapter_in_model(lora, policy, adapter_name=ADAPTER_NAME)
    cast_adapter_dtype(policy, adapter_name=ADAPTER_NAME, autocast_adapter_dtype=True)
    return policy


def apply_peft(policy: nn.Module, config: PeftConfig, *, base: str | None = None) -> nn.Module:
    """Adapt ``policy`` in place as the ``peft`` section says (see the module docstring)."""
    inject(policy, lora_config(config, target_names(policy, config.target_modules), base=base))
    names = [n for n, _ in policy.named_parameters()]
    for pattern in config.unfreeze:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"peft.unfreeze: pattern {pattern!r} matches no parameter (e.g. {names[:3]})")
        for name in hits:
            policy.get_parameter(name).requires_grad_(True)
    return policy


def is_adapted(policy: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in policy.modules())


def trainable_summary(model: nn.Module) -> str:
    """``trainable parameters: T of N (P%)`` (counts of elements; FSDP shards count whole)."""
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()  # a DTensor reports its global size
        total += n
        trainable += n if p.requires_grad else 0
    return f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / max(total, 1):.2f}%)"


# ----------------------------------------------------------------------------- saving and loading
def adapter_state(policy: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapters (peft's names, adapter name dropped), the other trainable parameters and the
    normalization stats (policy names), from ``state`` (default: ``policy.state_dict()``)."""
    from peft.functional import get_peft_model_state_dict

    state = policy.state_dict() if state is None else state
    out = dict(get_peft_model_state_dict(policy, state_dict=state, adapter_name=ADAPTER_NAME))
    for name, param in policy.named_parameters():
        if param.requires_grad and "lora_" not in name:
            out[name] = state[name]
    for name, _ in policy.named_buffers():
        if name.startswith("normalizer."):
            out[name] = state[name]
    return out


def save_adapters(policy: nn.Module, directory: str | Path, *, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` of an adapted ``policy``."""
    directory = Path(directory)
    lora = policy.peft_config[ADAPTER_NAME]
    tensors = {k: v.detach().cpu() for k, v in adapter_state(policy, state).items()}
    text = json.dumps(lora.to_dict(), indent=2, sort_keys=True, default=_json_default)
    save_safetensors(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    atomic_write(directory / ADAPTER_CONFIG, lambda path: Path(path).write_text(text))
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def load_adapters(policy: nn.Module, directory: str | Path) -> nn.Module:
    """Put the adapters of ``directory`` (from :func:`save_adapters`) onto the base ``policy`` in place:
    every tensor must find its place, every adapter weight must be given."""
    peft = _peft()
    from peft.functional import set_peft_model_state_dict

    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{directory / ADAPTER_CONFIG} not found: not an adapter directory")
    try:
        lora = peft.LoraConfig.from_pretrained(str(directory))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{directory / ADAPTER_CONFIG}: not a peft LoRA config ({err})") from None
    try:
        inject(policy, lora)
    except ValueError as err:  # peft: a target matches no layer of the policy
        raise CheckpointError(f"{directory / ADAPTER_CONFIG} does not fit the policy: {err}") from None
    tensors = load_tensors(directory / ADAPTER_WEIGHTS)
    adapters = {k: v for k, v in tensors.items() if "lora_" in k}
    result = set_peft_model_state_dict(policy, adapters, adapter_name=ADAPTER_NAME)
    wanted = {n for n, _ in policy.named_parameters() if "lora_" in n}
    missing = sorted(n for n in wanted if n in set(result.missing_keys))
    if result.unexpected_keys or missing:
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS}: unexpected adapter tensors "
                              f"{list(result.unexpected_keys)[:5]}, missing {missing[:5]}")
    rest = {k: v for k, v in tensors.items() if "lora_" not in k}
    own = policy.state_dict()
    bad = sorted(k for k, v in rest.items() if k not in own or own[k].shape != v.shape)
    if bad:
        raise CheckpointError(f"{directory / ADAPTER_WEIGHTS}: tensors that fit no parameter of the policy: {bad[:5]}")
    policy.load_state_dict(rest, strict=False)
    for name, param in policy.named_parameters():  # unfrozen parameters train again when fine-tuned further
        if name in rest:
            param.requires_grad_(True)
    return policy


def merge_adapters(policy: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (peft's ``merge``) and put the base layers back: the
    policy's parameter names are the plain ones again. In place; returns ``policy``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(n, m) for n, m in policy.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        policy.set_submodule(name, layer.get_base_layer())
    if hasattr(policy, "peft_config"):
        del policy.peft_config
    return policy


# ----------------------------------------------------------------------------- the trainer's side
def load_base_weights(policy: nn.Module, base: str | Path) -> None:
    """Copy the weights (and stats) of the ``save_pretrained`` directory or hub id ``base`` into
    ``policy`` (strict: its config must build the same architecture)."""
    from vla_core import load_checkpoint
    from vla_core.policy_base import WEIGHTS_NAME, resolve_policy_dir

    try:
        load_checkpoint(policy, resolve_policy_dir(base) / WEIGHTS_NAME)
    except CheckpointError as err:
        raise CheckpointError(f"peft.base {base}: {err}") from None


def export_adapted(model: nn.Module, policy_config: dict[str, Any], config: PeftConfig, run_dir: str | Path, *,
                   world, sharded: bool, ema_shadow: dict[str, torch.Tensor] | None = None) -> Path | None:
    """End of a LoRA run (all ranks call, rank 0 writes): the adapters to ``run_dir/adapter`` and, with
    ``merge_on_export``, the merged policy to ``run_dir/pretrained``, which is returned (else None)."""
    from vla_core import build_policy

    from vla_train.checkpoint import exported_state

    state = exported_state(model, world=world, sharded=sharded, ema_shadow=ema_shadow)
    if state is None:
        return None
    policy = apply_peft(build_policy(policy_config), config, base=config.base)
    policy.load_state_dict(state, strict=True)
    save_adapters(policy, Path(run_dir) / "adapter")
    if not config.merge_on_export:
        return None
    return merge_adapters(policy).save_pretrained(Path(run_dir) / "pretrained")


def export(src: str | Path, dst: str | Path, *, merge: bool = False, base: str | None = None) -> Path:
    """``vla export``: the adapters of ``src`` (an adapter directory, or a run directory's ``adapter/``)
    put onto the base policy (``base``, default the adapters' ``base_model_name_or_path``) and written to
    ``dst``: as adapters again, or merged into a plain policy (``merge``)."""
    from vla_core import load_policy

    src = Path(src)
    if (src / "adapter" / ADAPTER_CONFIG).is_file():
        src = src / "adapter"
    if not (src / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{src / ADAPTER_CONFIG} not found: expected an adapter directory or a LoRA run "
                                "directory (with adapter/)")
    base = base or json.loads((src / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{src}: the adapters name no base policy (the run had no peft.base); pass --base DIR")
    policy = load_adapters(load_policy(base), src)
    if merge:
        return merge_adapters(policy).save_pretrained(dst)
    return save_adapters(policy, dst)


__all__ = ["PeftConfig", "adapter_state", "apply_peft", "default_targets", "export", "export_adapted",
           "load_adapters", "load_base_weights", "merge_adapters", "save_adapters", "target_names",
           "trainable_summary"]
