"""Repository-wide pytest setup: one intra-op thread (tiny models), and the peer (LeRobot) side venvs.

Tests use tiny models, for which torch's thread pool only costs time; with several processes on a
small machine (torchrun ranks, peers, pytest itself), spinning thread pools slow a 10 us matmul down
to milliseconds. Subprocesses the tests start inherit the setting through ``OMP_NUM_THREADS``.

The peer venvs are created on first use (minutes when uncached) by ``benchmarks/peer_env.py``, which is
imported by file path so that neither ``benchmarks`` nor LeRobot has to be importable here.  Set
``VLA_SKIP_PEERS=1`` to skip tests that need a peer instead of creating it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

_PEER_ENV_PATH = Path(__file__).resolve().parent / "benchmarks" / "peer_env.py"


def _load_peer_env():
    name = "vla_benchmarks_peer_env"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PEER_ENV_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses need the module registered while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def _peer_python(name: str) -> Path:
    if os.environ.get("VLA_SKIP_PEERS", "") not in ("", "0"):
        pytest.skip(f"VLA_SKIP_PEERS is set: not creating peer venv {name}")
    return _load_peer_env().ensure_peer(name)


@pytest.fixture(scope="session")
def peer_env():
    """The ``benchmarks/peer_env.py`` module (``ensure_peer``, ``run_in_peer``, ``PEERS`` ...)."""
    return _load_peer_env()


@pytest.fixture(scope="session")
def lerobot_061_python() -> Path:
    """Python executable of the LeRobot 0.6.1 peer venv (ACT, diffusion, pi0; our packages editable)."""
    return _peer_python("lerobot-0.6.1")


@pytest.fixture(scope="session")
def lerobot_051_python() -> Path:
    """Python executable of the LeRobot 0.5.1 peer venv (GR00T N1.5, transformers 5.3.0)."""
    return _peer_python("lerobot-0.5.1")
