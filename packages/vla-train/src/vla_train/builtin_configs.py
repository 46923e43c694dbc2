"""The training and policy configs shipped inside the vla-train wheel, found by name.

``vla train quickstart`` works from any directory once vla-train is installed: a config argument that is
not an existing file and names a shipped config (with or without ``.yaml``) resolves to the copy in
``vla_train/configs/``. A file path always wins. ``vla configs`` lists the names with their first comment
line; ``vla configs NAME`` prints one, to copy and edit.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SUFFIX = ".yaml"


def config_dir() -> Path:
    """The directory of the shipped configs (inside the installed package)."""
    return Path(str(resources.files("vla_train") / "configs"))


def builtin_configs() -> dict[str, Path]:
    """Shipped config name (file name without ``.yaml``) -> its path, sorted by name."""
    return {p.name[: -len(SUFFIX)]: p for p in sorted(config_dir().glob(f"*{SUFFIX}"))}


def describe(path: Path) -> str:
    """The first comment line of a config file (its one-line summary), without the ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """An existing file, else the shipped config of that name (``quickstart`` or ``quickstart.yaml``).

    Anything else raises ``FileNotFoundError`` listing the shipped names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if os.sep not in text and "/" not in text:
        found = builtin_configs().get(text.removesuffix(SUFFIX))
        if found is not None:
            return found
    raise FileNotFoundError(f"training config not found: {text} is neither a file nor a built-in config "
                            f"({', '.join(builtin_configs())}; see `vla configs`)")


def list_configs() -> str:
    """One line per shipped config: the name and its summary."""
    configs = builtin_configs()
    width = max(map(len, configs), default=0)
    return "\n".join(f"{name:<{width}}  {describe(path)}" for name, path in configs.items())
