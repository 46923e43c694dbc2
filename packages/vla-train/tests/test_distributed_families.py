"""Every shipped policy family trains under ``torchrun --nproc-per-node 2`` with FSDP2 and activation
checkpointing on the toy task (with language), and exports a policy; for ACT the 2-rank losses equal
the 1-process losses on the same global batch.

The components come at their contract-suite sizes (``tiny_config``); the language backbones get a
local tiny tokenizer from their tiny config: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_helpers import run_probe, run_vla, write_config
from vla_core import load_policy
from vla_core.testing import tiny_spec

pytestmark = pytest.mark.slow

FAMILIES = {  # the shipped configs' backbone + head pairs
    "act": ("resnet_act", "act_vae"),
    "diffusion": ("resnet_spatial_softmax", "unet_diffusion"),
    "resnet_dit": ("resnet_act", "dit_flow_matching"),
    "groot": ("eagle", "dit_flow_matching"),
    "pi0": ("paligemma", "pi0_flow"),
    "pi05": ("paligemma", "pi05_flow"),
}


def family_config(tmp_path, backbone: str, head: str, **overrides) -> dict:
    cfg = {
        "policy": {"backbone": tiny_spec("backbone", backbone, tmp_path), "head": tiny_spec("head", head, tmp_path)},
        "data": {"type": "toy_reach", "num_episodes": 6, "episode_length": 12, "image_size": 32, "num_targets": 2,
                 "stats_frames": 72},
        "optim": {"lr": 1e-3},
        "parallel": {"activation_checkpointing": True},
        "checkpoint": {"every": 0},
        "log": {"every": 1, "progress": False, "plot": False},
        "steps": 3,
        "batch_size": 4,
        "output_dir": str(tmp_path / "run"),
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_ranks_train_and_export(family, tmp_path):
    backbone, head = FAMILIES[family]
    path = write_config(tmp_path / "config.yaml", family_config(tmp_path, backbone, head))
    proc = run_vla(["train", str(path)], nproc=2)
    out = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, out[-4000:]
    assert "fsdp on" in out and out.strip().splitlines()[-1] == f"run directory: {tmp_path / 'run'}"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    policy = load_policy(tmp_path / "run" / "pretrained")
    assert policy.config.backbone["type"] == backbone and policy.config.head["type"] == head


def test_act_two_rank_losses_equal_one_process(tmp_path):
    """Deterministic ACT (no VAE sampling, no dropout, frozen BatchNorm): a global batch split over two
    ranks gives the losses of one process on the whole batch."""
    backbone, head = FAMILIES["act"]
    cfg = family_config(tmp_path, backbone, head, steps=4, data={"num_targets": 1})
    cfg["policy"]["backbone"]["frozen_bn"] = True
    cfg["policy"]["head"].update(use_vae=False, dropout=0.0, horizon=1)
    path = write_config(tmp_path / "config.yaml", cfg)
    (single,) = run_probe(path, tmp_path / "one.json", 1, f"output_dir={tmp_path / 'one'}", "parallel.fsdp=false")
    ranks = run_probe(path, tmp_path / "two.json", 2, f"output_dir={tmp_path / 'two'}")
    assert len(set(single["losses"])) == 4  # the weights change
    for r in ranks:
        assert max(abs(a - b) for a, b in zip(r["losses"], single["losses"])) <= 1e-5, (r["losses"], single["losses"])


QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"
SHORT = ["--set", "steps=4", "--set", "eval.episodes=2", "--set", "checkpoint.every=2",
         "--set", "data.num_episodes=8", "--set", "log.progress=false"]


@pytest.mark.parametrize("launch", ["torchrun-2", "fsdp-1"])
def test_readme_quickstart_commands_train_under_fsdp(launch, tmp_path):
    """The README's `torchrun --nproc-per-node 2 -m vla_train train configs/quickstart.yaml` and
    `vla train configs/quickstart.yaml --set parallel.fsdp=true` (shortened) train, checkpoint, export
    and evaluate."""
    extra = ["--set", "parallel.fsdp=true"] if launch == "fsdp-1" else []
    proc = run_vla(["train", str(QUICKSTART), "--set", f"output_dir={tmp_path / 'run'}", *SHORT, *extra],
                   nproc=2 if launch == "torchrun-2" else 0)
    out = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, out[-4000:]
    assert "fsdp on" in out and "success_rate: " in out
    assert (tmp_path / "run" / "pretrained" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
