"""safetensors checkpoint IO: atomic writes, name mapping, load reports, no pickle by default, no
NaN/Inf weights unless asked, and errors that name the file."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from vla_core.errors import CheckpointError, CheckpointWriteError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask (``0o644`` under the usual
    ``022``). ``os.umask`` can only be read by setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; on any error the old file is untouched and the
    temporary file removed. A failed write (a full disk) raises :class:`CheckpointWriteError` naming ``path``.

    The file gets the mode a plain ``open()`` would give (``0o644`` under the usual umask), not the
    ``0o600`` of the ``mkstemp`` temporary file: saved policies are readable by the team and by servers."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, _file_mode())  # after write: a writer may recreate the file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, CheckpointWriteError):
            raise
        raise CheckpointWriteError(f"cannot write {path}: {err}") from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``state_dict`` to ``path`` atomically. Tensors sharing storage are saved as copies."""
    seen: set[tuple[int, int]] = set()
    tensors = {}
    for name, tensor in state_dict.items():
        t = tensor.detach()
        ident = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if ident is not None and ident in seen:
            t = t.clone()
        elif ident is not None:
            seen.add(ident)
        tensors[name] = t.contiguous().cpu()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=dict(metadata or {})))


def load_tensors(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` on CPU.

    safetensors is read directly. Pickle-based files (.bin/.pt/.pth/.ckpt) are refused unless
    ``allow_pickle=True``, and then read with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as err:
            raise CheckpointError(f"{path}: not a readable safetensors file, truncated or damaged? ({err})") from None
    if path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CheckpointError(
                f"{path} is a pickle file, which can run code when loaded; convert it to safetensors or "
                "pass allow_pickle=True (it is then loaded with torch.load(weights_only=True))"
            )
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise CheckpointError(f"{path}: cannot be loaded as weights only ({type(err).__name__}: {err})") from None
        if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
            data = data["state_dict"]
        if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise CheckpointError(f"{path} does not hold a flat mapping of tensor names to tensors")
        return dict(data)
    raise CheckpointError(f"unsupported checkpoint format {path.suffix!r} ({path}); expected .safetensors")


def apply_name_mapping(
    tensors: Mapping[str, torch.Tensor], name_mapping: Mapping[str, str] | None
) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys: with ``{"ours": "theirs"}``, ``theirs.x`` becomes ``ours.x``.

    Prefixes match whole dotted components; the longest matching prefix wins. Keys that match no
    prefix keep their names. Two keys mapping onto one name raise :class:`CheckpointError`.
    """
    if not name_mapping:
        return dict(tensors)
    rules = sorted(((theirs, ours) for ours, theirs in name_mapping.items()), key=lambda r: -len(r[0]))
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in tensors.items():
        new = key
        for theirs, ours in rules:
            if theirs == "" or key == theirs or key.startswith(theirs + "."):
                rest = key[len(theirs):].lstrip(".") if theirs else key
                new = ".".join(p for p in (ours, rest) if p)
                break
        if new in out:
            raise CheckpointError(f"name_mapping maps both {origin[new]!r} and {key!r} onto {new!r}")
        out[new] = tensor
        origin[new] = key
    return out


@dataclass
class LoadReport:
    """What a load found: keys the model lacks, keys the checkpoint lacks, and shape mismatches."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, model, ckpt

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing from the checkpoint ({len(self.missing)}): {_head(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in the checkpoint ({len(self.unexpected)}): {_head(self.unexpected)}")
        for key, want, got in self.mismatched[:10]:
            lines.append(f"shape mismatch {key!r}: model {want}, checkpoint {got}")
        return "\n".join(lines) or "all keys matched"


def _head(keys: list[str], n: int = 10) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def nonfinite_tensors(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors holding NaN/Inf, except those a submodule declares NaN to mean
    "not set" for (``nan_means_unset = True``, e.g. the normalizer's stats) when they are all NaN."""
    bad = []
    for name, tensor in tensors.items():
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        owner = name.rpartition(".")[0]
        try:
            unset_ok = getattr(module.get_submodule(owner), "nan_means_unset", False)
        except AttributeError:
            unset_ok = False
        if not (unset_ok and bool(torch.isnan(tensor).all())):
            bad.append(name)
    return sorted(bad)


def load_into(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    *,
    name_mapping: Mapping[str, str] | None = None,
    strict: bool = True,
    allow_nonfinite: bool = False,
) -> LoadReport:
    """Load ``tensors`` (renamed by ``name_mapping``) into ``module`` and return the report.

    With ``strict`` (the default) any missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` before the module changes. With ``strict=False`` the matching keys
    are loaded and the rest reported. Tensors holding NaN/Inf raise :class:`CheckpointError` naming
    them, before the module changes, unless ``allow_nonfinite=True`` (then a ``RuntimeWarning`` names them).
    """
    tensors = apply_name_mapping(tensors, name_mapping)
    own = module.state_dict()
    report = LoadReport(
        missing=sorted(set(own) - set(tensors)),
        unexpected=sorted(set(tensors) - set(own)),
        mismatched=[
            (k, tuple(own[k].shape), tuple(t.shape)) for k, t in tensors.items() if k in own and own[k].shape != t.shape
        ],
    )
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint does not match {type(module).__name__}:\n{report}")
    bad = {k for k, _, _ in report.mismatched}
    loadable = {k: t for k, t in tensors.items() if k in own and k not in bad}
    nonfinite = nonfinite_tensors(module, loadable)
    if nonfinite:
        what = f"{len(nonfinite)} tensor(s) with NaN/Inf values: {_head(nonfinite)}"
        if not allow_nonfinite:
            raise CheckpointError(f"checkpoint holds {what}; a policy with them gives NaN actions. Pass "
                                  "allow_nonfinite=True to load them anyway")
        warnings.warn(f"loading {what} into {type(module).__name__} (allow_nonfinite=True): its outputs will be "
                      "NaN or Inf", RuntimeWarning, stacklevel=2)
    module.load_state_dict(loadable, strict=False)
    return report


def load_checkpoint(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    name_mapping: Mapping[str, str] | None = None,
    strict: bool = True,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> LoadReport:
    """:func:`load_tensors` then :func:`load_into`; errors name the file."""
    tensors = load_tensors(path, allow_pickle=allow_pickle)
    try:
        return load_into(module, tensors, name_mapping=name_mapping, strict=strict, allow_nonfinite=allow_nonfinite)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
