"""FSDP2 and activation checkpointing, driven only by what the policy reports (``fsdp_units()``).

``apply_fsdp2`` shards every module whose class the policy lists, then the root, so each unit's
parameters are gathered just before it runs and freed after. Frozen parameters are sharded like
the others and simply get no gradient.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.utils.checkpoint import checkpoint
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard


def unit_modules(model: nn.Module) -> list[nn.Module]:
    """Instances of the classes in ``model.fsdp_units()``, in module order (the root excluded)."""
    units = tuple(model.fsdp_units())
    return [m for m in model.modules() if units and isinstance(m, units) and m is not model]


def apply_activation_checkpointing(model: nn.Module) -> int:
    """Recompute each unit's activations in backward instead of storing them. Returns the count.

    The unit's ``forward`` is wrapped in non-reentrant ``torch.utils.checkpoint`` (what torchtitan's
    checkpoint wrapper does) without changing the module tree, so parameter names stay the same and
    FSDP's hooks on the unit still gather its parameters before the recomputation.
    """
    modules = unit_modules(model)
    for module in modules:
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)
    return len(modules)


def build_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    return init_device_mesh(device.type, (world_size,))


def apply_fsdp2(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
    cpu_offload: bool = False,
) -> int:
    """``fully_shard`` each unit of ``model.fsdp_units()``, then the root. Returns the number of units.

    ``param_dtype`` / ``reduce_dtype`` set FSDP's mixed precision (e.g. bf16 / fp32 on GPU);
    ``None`` keeps the parameters' dtype.
    """
    kwargs: dict = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None or reduce_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    modules = unit_modules(model)
    for module in modules:
        fully_shard(module, **kwargs)
    # The root's own parameters are needed again at the start of backward: keep them gathered.
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return len(modules)


def float_buffers(model: nn.Module, *, skip: tuple[str, ...] = ("normalizer.",)) -> list[str]:
    """Floating-point buffers used in compute (e.g. BatchNorm statistics, fixed position tables).

    FSDP's MixedPrecisionPolicy casts parameters, not buffers: an fp32 buffer mixed into bf16
    activations promotes them to fp32 and the next bf16 layer fails. Models with such buffers
    use autocast instead. The normalizer is skipped: it casts back to the input dtype.
    """
    return [n for n, b in model.named_buffers() if b.is_floating_point() and not n.startswith(skip)]


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
