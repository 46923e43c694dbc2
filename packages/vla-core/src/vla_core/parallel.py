"""FSDP2 and activation checkpointing, driven only by what a model reports (``fsdp_units()``).

Model-agnostic and torch-only, so the trainer and the contract suite (:mod:`vla_core.testing`) wrap
models the same way.

- :func:`apply_activation_checkpointing` wraps each unit's ``forward`` in non-reentrant
  ``torch.utils.checkpoint``.
- :func:`apply_fsdp2` runs ``fully_shard`` on every unit, then on the root, and registers the methods
  that use a module's parameters outside its ``forward`` (a unit's inference caches, declared in its
  class attribute ``fsdp_forward_methods``; the root's ``predict_action_chunk``, which
  ``select_action`` goes through) so FSDP gathers the parameters for them too.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Root methods that run the model outside ``forward`` (inference), gathered by FSDP like ``forward``.
ROOT_FORWARD_METHODS = ("predict_action_chunk",)


def unit_modules(model: nn.Module) -> list[nn.Module]:
    """Instances of the classes in ``model.fsdp_units()``, in module order (the root excluded)."""
    units = tuple(model.fsdp_units())
    return [m for m in model.modules() if units and isinstance(m, units) and m is not model]


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each unit's activations in backward instead of storing them. Returns the count.

    The unit's ``forward`` is wrapped in non-reentrant ``torch.utils.checkpoint`` (what torchtitan's
    checkpoint wrapper does) without changing the module tree, so parameter names stay the same and
    FSDP's hooks on the unit still gather its parameters before the recomputation. A unit must be
    called as a module (``unit(x)``) for this to take effect.
    """
    modules = unit_modules(model)
    for module in modules:
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
    return len(modules)


def apply_fsdp2(
    model: nn.Module,
    mesh,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> int:
    """``fully_shard`` each unit of ``model.fsdp_units()``, then the root. Returns the number of units.

    ``param_dtype`` / ``reduce_dtype`` set FSDP's mixed precision (e.g. bf16 / fp32 on GPU);
    ``None`` keeps the parameters' dtype. A model with a ``mixed_precision_dtype`` attribute (a
    :class:`~vla_core.Policy`) gets ``param_dtype`` there: its inputs are cast to it. Methods named in a
    unit's ``fsdp_forward_methods`` and the root's inference methods are registered with
    ``register_fsdp_forward_method``.
    """
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    kwargs: dict = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None or reduce_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    if param_dtype is not None and hasattr(model, "mixed_precision_dtype"):
        model.mixed_precision_dtype = param_dtype
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    modules = unit_modules(model)
    for module in modules:
        fully_shard(module, **kwargs)
        for name in getattr(module, "fsdp_forward_methods", ()):
            register_fsdp_forward_method(module, name)
    # The root's own parameters are needed again at the start of backward: keep them gathered.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    for name in ROOT_FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    return len(modules)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
