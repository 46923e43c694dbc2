"""Multi-process training on CPU (gloo): FSDP2 equivalence and sharding, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import kill_tree, run_probe, run_vla, tiny_config, write_config
from vla_train.config import TrainConfig
from vla_train.trainer import train

pytestmark = pytest.mark.slow

EQUIV = {"policy": {"backbone": {"type": "test_linear", "dim": 64}, "head": {"type": "test_mlp", "horizon": 1,
                                                                             "hidden_dim": 128}},
         "optim": {"lr": 1e-3, "grad_clip": 0.05}, "steps": 5, "batch_size": 8}


def test_two_rank_fsdp_matches_one_process_and_halves_the_bytes(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", **EQUIV))
    (single,) = run_probe(cfg, tmp_path / "one.json", 1, f"output_dir={tmp_path / 'one'}", "parallel.fsdp=false")
    ranks = run_probe(cfg, tmp_path / "two.json", 2, f"output_dir={tmp_path / 'two'}")
    assert len(single["losses"]) == 5 and len(set(single["losses"])) == 5  # the weights change
    for r in ranks:  # the same global batch gives the same losses (grad clipping active on DTensor grads)
        assert max(abs(a - b) for a, b in zip(r["losses"], single["losses"])) <= 1e-5
    full = single["param_bytes"]
    assert single["full_param_bytes"] == full and single["optim_bytes"] == 2 * full  # AdamW: exp_avg, exp_avg_sq
    assert sum(r["param_bytes"] for r in ranks) == full
    for r in ranks:
        assert 0.4 * full <= r["param_bytes"] <= 0.6 * full
        assert 0.4 * 2 * full <= r["optim_bytes"] <= 0.6 * 2 * full


def _wait_for_checkpoint(proc, latest: Path, timeout: float = 240) -> None:
    start = time.time()
    while time.time() - start < timeout:
        if latest.is_file() and latest.read_text().strip():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared in time")


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, nproc):
    # EMA on: its DTensor shadows are gathered and re-sharded too (the export holds them)
    cfg = tiny_config(tmp_path / "killed", steps=10, checkpoint={"every": 3, "keep_last": 1},
                      optim={"lr": 1e-3, "ema": True})
    path = write_config(tmp_path / "c.yaml", cfg)
    launch = nproc if nproc > 1 else 0
    if nproc == 1:
        reference = train(TrainConfig.from_dict({**cfg, "output_dir": str(tmp_path / "ref")}))
    else:
        ref = run_vla(["train", str(path), "--set", f"output_dir={tmp_path / 'ref'}"], nproc=launch)
        assert ref.wait(timeout=300) == 0, ref.stdout.read()[-3000:]
        reference = tmp_path / "ref"
    proc = run_vla(["train", str(path)], nproc=launch, env={"VLA_TEST_STEP_SLEEP": "0.4"})
    try:
        _wait_for_checkpoint(proc, tmp_path / "killed" / "checkpoints" / "latest")
    finally:
        kill_tree(proc)  # the launcher and, under torchrun, every rank
    assert not (tmp_path / "killed" / "pretrained").exists()  # killed mid-run
    resumed = run_vla(["train", str(path), "--resume"], nproc=launch)
    out = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 0, out[-3000:]
    assert "resumed from" in out and out.strip().splitlines()[-1] == f"run directory: {tmp_path / 'killed'}"
    expected = load_file(reference / "pretrained" / "model.safetensors")
    got = load_file(tmp_path / "killed" / "pretrained" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # metrics.jsonl was cut back to the checkpoint's step on resume: every step once, in order
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 11))
    ckpt = tmp_path / "killed" / "checkpoints" / "step_00000010"
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["checkpoint.json", "state.json", "state.safetensors", *(f"rank_{r:05d}.json" for r in range(nproc))])


@pytest.mark.parametrize("nproc", [1, 2])
def test_kills_at_random_moments_during_checkpoint_writes_still_resume_exactly(tmp_path, nproc):
    cfg = tiny_config(tmp_path / "killed", steps=8, checkpoint={"every": 1, "keep_last": 2},
                      optim={"lr": 1e-3, "ema": True})
    path = write_config(tmp_path / "c.yaml", cfg)
    launch = nproc if nproc > 1 else 0
    ref = run_vla(["train", str(path), "--set", f"output_dir={tmp_path / 'ref'}"], nproc=launch)
    assert ref.wait(timeout=300) == 0, ref.stdout.read()[-3000:]
    rng = random.Random(nproc)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    for _ in range(3):  # each run is killed at a random moment after a checkpoint has started or ended
        proc = run_vla(["train", str(path), "--resume"], nproc=launch, env={"VLA_TEST_CHECKPOINT_SLEEP": "0.1"})
        try:
            _wait_for_checkpoint(proc, latest)
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            kill_tree(proc)
    resumed = run_vla(["train", str(path), "--resume"], nproc=launch)
    out = resumed.stdout.read()
    assert resumed.wait(timeout=300) == 0, out[-3000:]
    expected = load_file(tmp_path / "ref" / "pretrained" / "model.safetensors")
    got = load_file(tmp_path / "killed" / "pretrained" / "model.safetensors")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 9))
    assert not list((tmp_path / "killed" / "checkpoints").glob(".tmp-*"))
