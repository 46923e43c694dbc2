"""benchmarks/gpu_latency.py runs end to end in its CPU mode (``--device cpu --tiny``): every family gets
a row, the compiled chunk equals eager, the CUDA graph columns say n/a off CUDA, the floor is positive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_latency.py"
FAMILIES = ("act", "diffusion_ddim10", "groot_n15", "pi0")


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
