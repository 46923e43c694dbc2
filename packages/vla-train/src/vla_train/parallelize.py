"""Parallelism for the trainer: the device mesh and mixed-precision facts, on top of
:mod:`vla_core.parallel` (FSDP2 and activation checkpointing driven by ``fsdp_units()``, shared with the
contract suite so components are tested the way the trainer wraps them).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from vla_core.parallel import apply_activation_checkpointing, apply_fsdp2, is_sharded, unit_modules


def build_mesh(device: torch.device, world_size: int) -> DeviceMesh:
    return init_device_mesh(device.type, (world_size,))


def float_buffers(model: nn.Module, *, skip: tuple[str, ...] = ("normalizer.",)) -> list[str]:
    """Floating-point buffers used in compute (e.g. BatchNorm statistics, fixed position tables).

    FSDP's MixedPrecisionPolicy casts parameters, not buffers: an fp32 buffer mixed into bf16
    activations promotes them to fp32 and the next bf16 layer fails. Models with such buffers
    use autocast instead. The normalizer is skipped: it casts back to the input dtype.
    """
    return [n for n, b in model.named_buffers() if b.is_floating_point() and not n.startswith(skip)]


__all__ = ["apply_activation_checkpointing", "apply_fsdp2", "build_mesh", "float_buffers", "is_sharded", "unit_modules"]
