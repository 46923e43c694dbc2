"""Helpers for the vla-train tests: tiny configs of the test components on the toy task, subprocess launch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import vla_test_components  # noqa: F401  (registers test_linear / test_mlp)
import yaml

HERE = Path(__file__).resolve().parent
LAUNCH = HERE / "launch.py"
PROBE = HERE / "fsdp_probe.py"


def tiny_config(output_dir: Path, **overrides) -> dict:
    """A config that trains in well under a second per 10 steps."""
    cfg = {
        "policy": {"backbone": {"type": "test_linear", "dim": 32}, "head": {"type": "test_mlp", "horizon": 1}},
        "data": {"type": "toy_reach", "num_episodes": 8, "episode_length": 10, "image_size": 16,
                 "stats_frames": 80},
        "optim": {"lr": 1e-3},
        "checkpoint": {"every": 0},
        "log": {"every": 1, "progress": False, "plot": False},
        "steps": 6,
        "batch_size": 4,
        "output_dir": str(output_dir),
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_vla(args: list[str], *, nproc: int = 0, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start ``vla <args>`` (with the test components) as a subprocess; under torchrun when ``nproc``."""
    import torch

    full_env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **(env or {})}
    prefix = [sys.executable]
    if nproc:
        prefix += ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"]
    return subprocess.Popen([*prefix, str(LAUNCH), *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process below it, then wait until they are gone.

    torchrun starts its workers in sessions of their own, so killing the launcher's process group
    leaves the ranks running (and writing checkpoints); the tree is read from /proc first.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, frontier = [], [proc.pid]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier += children.get(pid, [])
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any((_stat(pid) or ["Z"])[0] != "Z" for pid in tree[1:]):
        time.sleep(0.05)


def run_probe(config: Path, out: Path, nproc: int, *overrides: str) -> list[dict]:
    """Run fsdp_probe.py under torchrun; returns one result dict per rank."""
    import json

    args = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(PROBE), str(config), str(out), *args]
    import torch

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(nproc)]
