"""Local path or hub repo id, and paths that must stay inside a root directory.

A name that can only be a local path never goes to the Hugging Face Hub: a mistyped directory gets
"does not exist", not a download attempt or a hub 404.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_local_path(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a local path rather than a hub repo id (``name`` or ``owner/name``).

    Local: a ``PathLike``; text starting with ``.``, ``/`` or ``~``; holding the OS separator (when it
    is not ``/``) or more than one ``/``; or a path that exists, wholly or partly (its parent directory
    does, e.g. ``runs/typo`` where ``runs/`` exists).
    """
    if isinstance(text, os.PathLike):
        return True
    if text.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in text) or text.count("/") > 1:
        return True
    path = Path(text)
    return path.exists() or (path.parent != Path(".") and path.parent.exists())


def missing_path_error(text: str | os.PathLike, what: str) -> FileNotFoundError:
    """The error for a local-looking ``text`` that does not exist (``what``: "policy directory", ...)."""
    path = Path(text).expanduser()
    existing = next((p for p in path.parents if str(p) not in ("", ".") and p.exists()), None)
    hint = f" ({existing} exists; nothing below it matches)" if existing is not None else ""
    return FileNotFoundError(f"{what} {text} does not exist{hint}; a local path is never looked up on the "
                             "Hugging Face Hub")


def inside(root: str | os.PathLike, relative: str, what: str) -> Path:
    """``root / relative``, refused (``ValueError`` naming ``what``) when it leaves ``root``.

    The check is on the normalized path (``..`` and absolute paths resolved), not through symlinks:
    hub snapshots link their files into a blob cache outside the snapshot directory.
    """
    root = Path(os.path.abspath(root))
    target = Path(os.path.abspath(root / relative))
    if Path(relative).is_absolute() or not (target == root or root in target.parents):
        raise ValueError(f"{what} {relative!r} leads to {target}, outside {root}; only paths inside it are read")
    return target
