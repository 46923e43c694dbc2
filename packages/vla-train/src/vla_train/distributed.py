"""Process-group setup: single process, or one rank per process under ``torchrun`` (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.initialized:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (a collective; the flag itself in a single process)."""
        if not (self.initialized and self.world_size > 1):
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks (identity in a single process)."""
        if self.initialized and self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value /= self.world_size
        return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world(device: str = "auto", *, need_group: bool = False) -> World:
    """Join the ``torchrun`` process group if launched by it; otherwise start a 1-rank group when
    ``need_group`` (FSDP in one process) or run without one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        from vla_core import ConfigError

        raise ConfigError(f"parallel.device: expected a usable device, received 'cuda' but torch {torch.__version__} "
                          f"sees no CUDA GPU (built for CUDA {torch.version.cuda or 'none'}); use "
                          "--set parallel.device=cpu (or auto)")
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    if not dist.is_initialized() and (launched or need_group):
        if not launched:
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1")
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    index = torch.cuda.current_device() if device == "cuda" else None
    return World(rank=rank, world_size=world_size, device=torch.device(device, index))


def close_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
