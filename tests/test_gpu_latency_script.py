"""benchmarks/gpu_latency.py runs end to end in its CPU mode (``--device cpu --tiny``): every family gets
a row, the compiled chunk equals eager, the CUDA graph columns say n/a off CUDA, the floor is positive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_latency.py"
FAMILIES = ("act", "diffusion_ddim10", "groot_n15", "pi0", "pi05")


@pytest.mark.slow
def test_gpu_latency_cpu_tiny_mode():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--backend", "eager", "--calls", "3",
         "--warmup", "1", "--train-steps", "1"],
        check=False, capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("| ") and line.count("|") > 6}
    assert set(FAMILIES) <= set(rows), proc.stdout
    for family in FAMILIES:
        _, _params, lerobot, eager, compiled, graph, bf16_graph, floor, ratio, err = rows[family]
        assert lerobot == graph == bf16_graph == "n/a"
        assert float(eager.split(" / ")[0]) > 0 and float(compiled.split(" / ")[0]) > 0
        assert float(floor) > 0 and float(ratio) > 0
        err_compiled, err_bf16 = (float(e) for e in err.split(" / "))
        assert err_compiled <= 1e-5 and 0 < err_bf16 < 0.1, err
    trained = [line for line in proc.stdout.splitlines() if line.count("|") == 4]
    assert {line.split("|")[1].strip() for line in trained} == {"act", "diffusion_ddim10", "pi0"}


def test_gpu_latency_refuses_cuda_without_a_gpu_and_unknown_families():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for argv, needle in ((["--families", "act"], "no CUDA device here"),
                         (["--device", "cpu", "--families", "act,pi9"], "unknown ['pi9']")):
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], check=False, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


@pytest.mark.slow
def test_full_size_configs_build_on_the_meta_device(tmp_path):
    """The full-size policies the GPU run builds are wired correctly (no weights allocated here)."""
    import importlib.util

    import torch
    from vla_core import VLAPolicy

    spec = importlib.util.spec_from_file_location("gpu_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    millions = {}
    for family in FAMILIES:
        with torch.device("meta"):
            policy = VLAPolicy(module.policy_config(family, False, tmp_path))
        millions[family] = sum(p.numel() for p in policy.parameters()) / 1e6
    # ACT ~52 M, Diffusion Policy (PushT) ~263 M, GR00T N1.5 with its LLM cut at layer 12 ~2.4 B, pi0 ~3.2 B,
    # pi0.5 ~3.35 B (pi0 without the state projection, with the expert's adaptive-norm maps)
    expected = {"act": 51.6, "diffusion_ddim10": 262.7, "groot_n15": 2398.3, "pi0": 3238.0, "pi05": 3353.4}
    assert millions == pytest.approx(expected, rel=1e-3), millions
