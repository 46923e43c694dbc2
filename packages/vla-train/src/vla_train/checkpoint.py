"""Resumable training state with torch.distributed.checkpoint (DCP), and the inference export.

Layout under ``run_dir/checkpoints``: ``step_00001000/`` (a DCP directory) and ``latest`` (a
file naming the newest complete one). A checkpoint is written into ``.tmp-step_*`` and renamed
when complete; only then is ``latest`` replaced (temp file + ``os.replace``), so a crash at any
moment leaves the previous ``latest`` loadable. Every rank writes its own shards.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from vla_core import CheckpointError, build_policy

from vla_train.distributed import World

LATEST = "latest"


class ModelAndOptimizer:
    """DCP ``Stateful`` view of a (possibly FSDP-sharded) model and its optimizer."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        model, optim = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


class RNGState:
    """This rank's torch RNG streams (CPU, and CUDA when used)."""

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    def __init__(self, directory: str | Path, *, every: int, keep_last: int, world: World) -> None:
        self.directory = Path(directory)
        self.every, self.keep_last, self.world = every, keep_last, world

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None``."""
        pointer = self.directory / LATEST
        if not pointer.is_file():
            return None
        path = self.directory / pointer.read_text().strip()
        if not (path / ".metadata").is_file():
            raise CheckpointError(f"{pointer} names {path.name}, which is missing or incomplete")
        return path

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` (DCP Stateful objects and tensors) as checkpoint ``step``; all ranks call this."""
        name = f"step_{step:08d}"
        tmp, final = self.directory / f".tmp-{name}", self.directory / name
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.world.barrier()
        self._write(state, tmp)
        self.world.barrier()
        if self.world.is_main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._point_latest(name)
            self._prune()
        self.world.barrier()
        return final

    def _write(self, state: dict[str, Any], path: Path) -> None:
        with warnings.catch_warnings():  # a single process without a process group is a supported case
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(state, checkpoint_id=str(path))

    def _point_latest(self, name: str) -> None:
        tmp = self.directory / f".{LATEST}.tmp"
        with open(tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / LATEST)

    def _prune(self) -> None:
        steps = sorted(p for p in self.directory.glob("step_*") if p.is_dir())
        for old in steps[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.directory.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, state: dict[str, Any], path: Path | None = None) -> Path:
        """Load ``latest`` (or ``path``) into ``state`` in place; all ranks call this."""
        path = path or self.latest()
        if path is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(state, checkpoint_id=str(path))
        except Exception as err:  # DCP wraps per-rank failures; name the checkpoint
            raise CheckpointError(f"cannot load checkpoint {path}: {err}") from err
        return path


def full_state_dict(model: nn.Module, *, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole model's state on CPU (gathered from the shards on rank 0 when ``sharded``; all ranks call)."""
    if not sharded:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_pretrained(
    model: nn.Module,
    policy_config: Any,
    directory: str | Path,
    *,
    world: World,
    sharded: bool,
    ema_shadow: dict[str, torch.Tensor] | None = None,
) -> Path | None:
    """``save_pretrained`` of the trained (or EMA) weights into ``directory``; all ranks call, rank 0 writes."""
    state = full_state_dict(model, sharded=sharded)
    for name, value in (ema_shadow or {}).items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        if world.is_main:
            state[name] = full.detach().cpu()
    if not world.is_main:
        return None
    policy = build_policy(policy_config)
    policy.load_state_dict(state, strict=True)
    return policy.save_pretrained(directory)
