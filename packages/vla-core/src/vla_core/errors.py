"""The errors vla raises: each names what was expected, what came, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value or field is invalid (names the field, the expected and the received)."""


class UnknownComponentError(LookupError):
    """A component name is not registered (lists the registered names and the closest match)."""


class MissingExtraError(ImportError):
    """An optional dependency is missing (names the package extra to install)."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded as asked (names the keys, files or shapes involved)."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint or policy could not be written (a full disk, a read-only directory): names the path;
    the partial files are removed. Also an ``OSError``."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {match[0]!r}?" if match else ""


def require(module: str, extra: str):
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{module!r} is required for this feature but is not installed; install it with "
            f"`pip install {extra}`."
        ) from err
