"""The vla-train tests' helpers live in train_helpers.py (importable: this folder is put on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
