"""Fixtures for the vla-train tests; helpers live in train_helpers.py (importable: this folder is on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_helpers import tiny_config, write_config  # noqa: E402


@pytest.fixture
def cfg_file(tmp_path):
    """``cfg_file(**overrides) -> Path`` of a tiny YAML config under tmp_path."""
    counter = iter(range(1000))

    def make(**overrides) -> Path:
        n = next(counter)
        overrides.setdefault("output_dir", str(tmp_path / f"run{n}"))
        return write_config(tmp_path / f"config{n}.yaml", tiny_config(Path(overrides["output_dir"]), **overrides))

    return make
