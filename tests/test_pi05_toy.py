"""The pi0.5 toy run with language (configs/pi05_toy.yaml, benchmarks/pi05_toy.py), test-sized.

The full run (8000 steps, see benchmarks/README.md) is a benchmark; here the script runs end to end
on a shortened config: it writes the toy tokenizer, trains, exports and evaluates twice (the real
instructions and the swapped ones), and the exported policy reads its task strings through that
tokenizer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vla_core import load_policy
from vla_train.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pi05_toy.py"
SHORT = ["steps=60", "data.num_episodes=40", "data.image_size=32", "policy.backbone.image_size=32", "batch_size=16",
         "schedule.warmup_steps=10", "checkpoint.every=0", "log.every=10", "log.trackers=[jsonl]"]


@pytest.mark.slow
def test_the_benchmark_trains_and_evaluates_a_short_run(tmp_path):
    out = tmp_path / "pi05_toy"
    args = [sys.executable, str(SCRIPT), "--out", str(out), "--episodes", "10"]
    for item in SHORT:
        args += ["--set", item]
    proc = subprocess.run(args, check=False, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"success_rate: ([0-9.]+) \(10 episodes, seed 100000\); with the instructions swapped: ([0-9.]+)",
                      proc.stdout)
    assert found, proc.stdout[-2000:]
    assert all(0.0 <= float(rate) <= 1.0 for rate in found.groups())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) >= 5 and losses[-1] < losses[0], losses
    policy = load_policy(out / "pretrained")
    config = json.loads((out / "pretrained" / "config.json").read_text())
    assert Path(config["backbone"]["tokenizer"]) == tmp_path / "pi05_toy_tokenizer"
    ids, mask = policy.backbone.language_inputs(
        {"task": ["reach the red target", "reach the blue target"], "observation.state": torch.zeros(2, 2)},
        torch.device("cpu"))
    words = policy.backbone.tokenizer.tokenizer.convert_ids_to_tokens(ids[0][mask[0]].tolist())
    assert words == ["<bos>", "Task", ":", "reach", "the", "red", "target", ",", "State", ":", "128", "128", ";",
                     "Action", ":"]
    assert not torch.equal(ids[0], ids[1])


def test_training_without_the_tokenizer_names_the_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "pi05_toy", "--set", "steps=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "runs/toy_tokenizer" in err, err
