"""Resumable training state without pickle (safetensors + JSON), and the inference export.

Layout under ``run_dir/checkpoints``::

    latest                     one line naming the newest complete checkpoint (``step_00001000``)
    step_00001000/
        state.safetensors      every tensor of the shared state, whole (FSDP shards gathered); rank 0 writes
        state.json             the rest of the shared state (step, data position, scheduler, optimizer
                               hyper-parameters); a tensor appears as {"$tensor": "<name in state.safetensors>"}
        rank_00000.json ...    each rank's own state (its RNG streams, as base64 safetensors bytes)
        checkpoint.json        written last: format, version, step, world size and the size of every file

The state is a mapping of ``Stateful`` objects (``state_dict()`` / ``load_state_dict()``, as for
torch.distributed.checkpoint); objects with ``per_rank = True`` go to the rank files. Saving: every
rank calls ``state_dict()`` (FSDP's DTensors are gathered with ``full_tensor()``), rank 0 writes the
shared files and each rank its own, all into ``.tmp-step_*``; each file and the directory are
fsynced, then the directory is renamed and only then is ``latest`` replaced (temp file +
``os.replace``). A crash at any moment leaves the previous ``latest`` loadable; a failed write (a
full disk) removes the partial directory and names the path. Loading: every rank reads the files,
copies each tensor into the object's current one (its own shard of a DTensor) and calls
``load_state_dict``, so resuming is bit-exact and works after FSDP re-sharding.

Checkpoints written by earlier versions (torch.distributed.checkpoint, whose ``.metadata`` is a pickle
that runs code when loaded) are refused unless the caller trusts them (``vla train --resume
--trust-checkpoint``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from vla_core import CheckpointError, CheckpointWriteError, build_policy, save_safetensors

from vla_train.distributed import World

LATEST = "latest"
MANIFEST = "checkpoint.json"
TENSORS = "state.safetensors"
STATE = "state.json"
FORMAT, VERSION = "vla-train-checkpoint", 1
LEGACY_METADATA = ".metadata"  # torch.distributed.checkpoint's pickled metadata
NAME = re.compile(r"step_\d{8,}")
TENSOR_REF = "$tensor"
INLINE = "$safetensors_b64"


def rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.json"


class ModelAndOptimizer:
    """``Stateful`` view of a (possibly FSDP-sharded) model and its optimizer (FQN-keyed state).

    ``trainable_only`` (LoRA runs): the frozen parameters are left out (the run rebuilds them from its
    config and ``peft.base``); the trainable ones, the buffers and the optimizer state are kept."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, trainable_only: bool = False) -> None:
        self.model, self.optimizer = model, optimizer
        self.options = StateDictOptions(ignore_frozen_params=trainable_only)

    def state_dict(self) -> dict[str, Any]:
        model, optim = get_state_dict(self.model, self.optimizer, options=self.options)
        return {"model": model, "optim": optim}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        options = self.options
        if options.ignore_frozen_params:
            own = set(get_model_state_dict(self.model, options=options))
            if set(state["model"]) != own:
                diff = sorted(set(state["model"]) ^ own)
                raise CheckpointError(f"the checkpoint's trainable tensors differ from the run's (peft section "
                                      f"changed?): {diff[:5]}")
            options = StateDictOptions(ignore_frozen_params=True, strict=False)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=options)


class RNGState:
    """This rank's torch RNG streams (CPU, and CUDA when used)."""

    per_rank = True

    def state_dict(self) -> dict[str, Any]:
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["cpu"])
        if "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------- tree <-> (JSON, tensors)
def _encode(value: Any, where: str, store: Callable[[str, torch.Tensor], Any]) -> Any:
    """A JSON-able tree of ``value``; each tensor becomes what ``store(path, whole_tensor)`` returns.

    A DTensor is gathered with ``full_tensor()`` (a collective: every rank encodes the same trees in
    the same order)."""
    if isinstance(value, torch.Tensor):
        whole = value.full_tensor() if hasattr(value, "full_tensor") else value
        return store(where, whole.detach())
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key in (TENSOR_REF, INLINE):
                raise CheckpointError(f"checkpoint state {where}: cannot store the key {key!r} in JSON")
            out[key] = _encode(item, f"{where}/{key}", store)
        return out
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{where}/{i}", store) for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(f"checkpoint state {where}: cannot store a {type(value).__name__} (tensors, numbers, "
                          "strings, lists and string-keyed mappings only)")


def _inline(where: str, tensor: torch.Tensor) -> dict[str, str]:
    return {INLINE: base64.b64encode(save_bytes({"t": tensor.cpu().contiguous()})).decode("ascii")}


def _copy_into(target: Any, value: torch.Tensor, where: str) -> torch.Tensor:
    """Copy the whole tensor ``value`` into ``target`` in place (its shard when a DTensor); returns target."""
    if not isinstance(target, torch.Tensor):
        return value
    if tuple(target.shape) != tuple(value.shape) or target.dtype != value.dtype:
        raise CheckpointError(f"checkpoint tensor {where}: expected {target.dtype} {tuple(target.shape)}, "
                              f"the checkpoint holds {value.dtype} {tuple(value.shape)}")
    with torch.no_grad():
        if hasattr(target, "device_mesh"):  # a DTensor: keep this rank's part of the whole
            from torch.distributed.tensor import distribute_tensor

            local = target.to_local()
            part = distribute_tensor(value.to(local.device), target.device_mesh, target.placements, src_data_rank=None)
            local.copy_(part.to_local())
        else:
            target.copy_(value)
    return target


def _decode(saved: Any, target: Any, where: str, tensors: tuple[Any, set[str]] | None) -> Any:
    """Rebuild a tree from its JSON form, copying tensors into ``target``'s matching tensors in place.
    ``tensors``: the open ``state.safetensors`` and its tensor names (None for the rank files)."""
    if isinstance(saved, dict) and TENSOR_REF in saved:
        name = saved[TENSOR_REF]
        if tensors is None or name not in tensors[1]:
            raise CheckpointError(f"checkpoint tensor {where}: missing from {TENSORS}")
        return _copy_into(target, tensors[0].get_tensor(name), where)
    if isinstance(saved, dict) and INLINE in saved:
        return _copy_into(target, load_bytes(base64.b64decode(saved[INLINE]))["t"], where)
    if isinstance(saved, dict):
        own = target if isinstance(target, Mapping) else {}
        return {k: _decode(v, own.get(k), f"{where}/{k}", tensors) for k, v in saved.items()}
    if isinstance(saved, list):
        own = target if isinstance(target, (list, tuple)) and len(target) == len(saved) else [None] * len(saved)
        return [_decode(v, t, f"{where}/{i}", tensors) for i, (v, t) in enumerate(zip(saved, own))]
    return saved


# ---------------------------------------------------------------------------- files
def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None


class Checkpointer:
    def __init__(self, directory: str | Path, *, every: int, keep_last: int, world: World,
                 trust_legacy: bool = False) -> None:
        self.directory = Path(directory)
        self.every, self.keep_last, self.world = every, keep_last, world
        self.trust_legacy = trust_legacy

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    # ------------------------------------------------------------------ finding
    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None``. ``latest`` must name a checkpoint of this directory."""
        pointer = self.directory / LATEST
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        if not NAME.fullmatch(name):
            raise CheckpointError(f"{pointer} names {name!r}, which is not a checkpoint of {self.directory} "
                                  "(expected a name like step_00001000 inside it); refusing to follow it")
        path = self.directory / name
        if path.resolve().parent != self.directory.resolve():
            raise CheckpointError(f"{pointer} names {name}, which resolves to {path.resolve()}, outside "
                                  f"{self.directory}; refusing to follow it")
        if not ((path / MANIFEST).is_file() or (path / LEGACY_METADATA).is_file()):
            raise CheckpointError(f"{pointer} names {name}, which is missing or incomplete")
        return path

    # ------------------------------------------------------------------ saving
    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` (Stateful objects) as checkpoint ``step``; all ranks call this."""
        name = f"step_{step:08d}"
        tmp, final = self.directory / f".tmp-{name}", self.directory / name
        self._attempt(final, tmp, lambda: self._make_dir(tmp) if self.world.is_main else None)
        self._attempt(final, tmp, lambda: self._write(state, tmp))
        self._attempt(final, tmp, lambda: self._publish(tmp, final) if self.world.is_main else None)
        return final

    def _attempt(self, final: Path, tmp: Path, step: Callable[[], None]) -> None:
        """Run ``step`` on every rank; if it fails on any, remove the partial checkpoint and raise on all."""
        failure = None
        try:
            step()
        except Exception as err:  # noqa: BLE001 - re-raised below, after every rank agrees
            failure = err
        if self.world.all_true(failure is None):
            return
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            pointer = self.directory / LATEST
            if not (pointer.is_file() and pointer.read_text().strip() == final.name):
                shutil.rmtree(final, ignore_errors=True)
        self.world.barrier()
        if failure is not None and not isinstance(failure, (OSError, SafetensorError)):
            raise failure
        what = str(failure) if failure is not None else "another rank could not write its part"
        raise CheckpointWriteError(f"cannot write checkpoint {final}: {what}; the partial checkpoint was removed "
                                   f"and {self.directory / LATEST} still names the last complete one") from failure

    @staticmethod
    def _make_dir(tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def _write(self, state: dict[str, Any], path: Path) -> None:
        """Every rank: gather the shared state (rank 0 writes it) and write this rank's own file."""
        tensors: dict[str, torch.Tensor] = {}

        def keep(where: str, tensor: torch.Tensor) -> dict[str, str]:
            if self.world.is_main:  # other ranks only take part in the gathers
                tensors[where] = tensor.cpu()
            return {TENSOR_REF: where}

        shared, own = {}, {}
        for key, obj in state.items():
            if getattr(obj, "per_rank", False):
                own[key] = _encode(obj.state_dict(), key, _inline)
            else:
                shared[key] = _encode(obj.state_dict(), key, keep)
        _write_json(path / rank_file(self.world.rank), own)
        if self.world.is_main:
            save_safetensors(tensors, path / TENSORS, metadata={"format": FORMAT})
            _write_json(path / STATE, shared)

    def _publish(self, tmp: Path, final: Path) -> None:
        """Rank 0, once every rank's files are in ``tmp``: the manifest, the rename, ``latest``, pruning."""
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        _write_json(tmp / MANIFEST, {"format": FORMAT, "version": VERSION, "world_size": self.world.world_size,
                                     "files": files})
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        self._point_latest(final.name)
        self._prune()

    def _point_latest(self, name: str) -> None:
        tmp = self.directory / f".{LATEST}.tmp"
        with open(tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / LATEST)
        _fsync_dir(self.directory)

    def _prune(self) -> None:
        steps = sorted(p for p in self.directory.glob("step_*") if p.is_dir())
        for old in steps[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.directory.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)

    # ------------------------------------------------------------------ loading
    def load(self, state: dict[str, Any], path: Path | None = None) -> Path:
        """Load ``latest`` (or ``path``) into ``state`` in place; all ranks call this."""
        path = path or self.latest()
        if path is None:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        if not (path / MANIFEST).is_file() and (path / LEGACY_METADATA).is_file():
            return self._load_legacy(state, path)
        self._check(path)
        shared, own = _read_json(path / STATE), _read_json(path / rank_file(self.world.rank))
        if not (isinstance(shared, dict) and isinstance(own, dict)):
            raise CheckpointError(f"checkpoint {path}: {STATE} and the rank files must hold JSON objects")
        missing = [k for k, o in state.items() if k not in (own if getattr(o, "per_rank", False) else shared)]
        if missing:
            raise CheckpointError(f"checkpoint {path} lacks {missing} (holds {sorted(shared)} and, per rank, "
                                  f"{sorted(own)})")
        try:
            with safe_open(str(path / TENSORS), framework="pt") as handle:
                tensors = (handle, set(handle.keys()))
                loaded = [(obj, _decode(shared[key], obj.state_dict(), key, tensors))
                          for key, obj in state.items() if not getattr(obj, "per_rank", False)]
        except SafetensorError as err:
            raise CheckpointError(f"{path / TENSORS}: not a readable safetensors file ({err})") from None
        for obj, value in loaded:
            obj.load_state_dict(value)
        for key, obj in state.items():  # per-rank state (RNG) last: nothing draws from it after
            if getattr(obj, "per_rank", False):
                obj.load_state_dict(_decode(own[key], obj.state_dict(), key, None))
        return path

    def _check(self, path: Path) -> dict[str, Any]:
        """The manifest, after checking the format, the world size and every file's size."""
        manifest = _read_json(path / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CheckpointError(f"{path / MANIFEST}: not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise CheckpointError(f"{path / MANIFEST}: format version {manifest.get('version')!r}, this vla-train "
                                  f"reads version {VERSION}")
        if manifest.get("world_size") != self.world.world_size:
            raise CheckpointError(f"checkpoint {path} was written by {manifest.get('world_size')} process(es); "
                                  f"resume it with the same number (this run has {self.world.world_size}): the "
                                  "data position and the RNG streams are per rank")
        for name, size in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint file {file} is missing")
            if file.stat().st_size != size:
                raise CheckpointError(f"checkpoint file {file} has {file.stat().st_size} bytes, the manifest says "
                                      f"{size}: truncated or changed")
        for name in (TENSORS, STATE, rank_file(self.world.rank)):
            if name not in manifest.get("files", {}):
                raise CheckpointError(f"checkpoint {path} lacks {name}")
        return manifest

    def _load_legacy(self, state: dict[str, Any], path: Path) -> Path:
        """A torch.distributed.checkpoint directory from an earlier vla-train (pickled ``.metadata``)."""
        if not self.trust_legacy:
            raise CheckpointError(
                f"{path} is an old-format checkpoint whose {LEGACY_METADATA} is a pickle, which can run code when "
                "loaded; it was not loaded. Resume from it only if you trust where it came from: "
                "vla train CONFIG --resume --trust-checkpoint"
            )
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        legacy = {(f"rng_rank{self.world.rank}" if getattr(obj, "per_rank", False) else key): obj
                  for key, obj in state.items()}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp.load(legacy, checkpoint_id=str(path))
        except (Exception, CheckpointException) as err:  # DCP wraps per-rank failures; name the checkpoint
            raise CheckpointError(f"cannot load checkpoint {path}: {describe_error(err)}") from err
        return path


def describe_error(err: BaseException) -> str:
    """One line for an error; torch's ``CheckpointException`` (a traceback per rank) becomes
    ``rank R: Type: message`` for each failed rank."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        parts = [f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in sorted(failures.items())]
        return " ".join(f"torch.distributed.checkpoint failed on {'; '.join(parts)}".split())
    return " ".join(str(err).split()) or type(err).__name__


def full_state_dict(model: nn.Module, *, sharded: bool) -> dict[str, torch.Tensor]:
    """The whole model's state on CPU (gathered from the shards on rank 0 when ``sharded``; all ranks call)."""
    if not sharded:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def exported_state(model: nn.Module, *, world: World, sharded: bool,
                   ema_shadow: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """The model's full state on CPU with the EMA weights (``ema_shadow``) in place of the trained ones,
    on rank 0; None on the other ranks. All ranks call (gathering shards is collective)."""
    state = full_state_dict(model, sharded=sharded)
    for name, value in (ema_shadow or {}).items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        if world.is_main:
            state[name] = full.detach().cpu()
    return state if world.is_main else None


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
    state = exported_state(model, world=world, sharded=sharded, ema_shadow=ema_shadow)
    if state is None:
        return None
    policy = build_policy(policy_config)
    policy.load_state_dict(state, strict=True)
    return policy.save_pretrained(directory)
