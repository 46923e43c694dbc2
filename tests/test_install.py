"""A new user's install: the four wheels built from this tree, installed into a fresh venv (``uv venv`` +
``uv pip install`` of the local wheels, their dependencies from the registry), then, from a temporary
directory outside the repository, ``vla train quickstart --set steps=5`` (the built-in config, shipped in
the wheel) and ``vla eval`` on the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")
PACKAGES = ["vla_core", "vla_backbones", "vla_heads", "vla_train"]

pytestmark = pytest.mark.slow


def run(args, **kwargs):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kwargs)
    assert out.returncode == 0, f"{args}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.skipif(UV is None, reason="needs uv")
def test_wheels_install_and_the_quickstart_trains_and_evaluates_outside_the_repo(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    run([UV, "build", "--all-packages", "--out-dir", dist, "--quiet"], cwd=ROOT)
    wheels = {name: next(dist.glob(f"{name}-*.whl")) for name in PACKAGES}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_PROJECT_ENVIRONMENT")}
    env["OMP_NUM_THREADS"] = "1"
    run([UV, "venv", "--quiet", "-p", sys.executable, venv], env=env)
    python = venv / "bin" / "python"
    run([UV, "pip", "install", "--quiet", "--python", python, *(wheels[n] for n in PACKAGES[:3]),
         f"vla-train[models] @ {wheels['vla_train'].as_uri()}"], env=env, cwd=tmp_path)
    work.mkdir()
    vla = venv / "bin" / "vla"
    listed = run([vla, "configs"], cwd=work, env=env).stdout
    assert "quickstart" in listed and str(ROOT) not in run([python, "-c", "import vla_train; print(vla_train.__file__)"],
                                                           cwd=work, env=env).stdout
    trained = run([vla, "train", "quickstart", "--set", "steps=5"], cwd=work, env=env, timeout=1200)
    lines = trained.stdout.strip().splitlines()
    assert any(line.startswith("success_rate: ") for line in lines), trained.stdout[-2000:]
    assert lines[-1].startswith("run directory: ") and lines[-1].endswith(str(Path("runs") / "quickstart"))
    assert (work / "runs" / "quickstart" / "pretrained" / "model.safetensors").is_file()
    evaluated = run([vla, "eval", "runs/quickstart", "--episodes", "4"], cwd=work, env=env, timeout=1200)
    assert evaluated.stdout.strip().splitlines()[-1].startswith("success_rate: ")
    assert (work / "runs" / "quickstart" / "pretrained" / "eval.json").is_file()
