"""Parity with LeRobot 0.6.1 ACT: LeRobot writes a checkpoint (in its side venv), we convert and compare.

The peer script builds a tiny ACTPolicy with random weights and random normalization stats, saves
it with ``save_pretrained`` plus its processors (stats on disk as LeRobot writes them), a raw batch
and LeRobot's un-normalized ``predict_action_chunk`` output (preprocessor -> policy ->
postprocessor). We convert with ``vla convert lerobot`` 's function and require max |diff| <= 1e-5.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vla_core import VLAPolicy
from vla_train.convert import convert_lerobot
from vla_train.convert.lerobot_act import NAME_MAPPING

pytestmark = pytest.mark.peer

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "lerobot_act_checkpoint.py"


def lerobot_checkpoint(python: Path, out: Path, *flags: str) -> Path:
    proc = subprocess.run([str(python), str(SCRIPT), str(out), *flags], capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, f"peer script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.mark.parametrize(
    "flags",
    [(), ("--cameras", "2", "--env-state"), ("--no-vae", "--pre-norm", "--seed", "3")],
    ids=["1cam", "2cams-env", "novae-prenorm"],
)
def test_converted_act_reproduces_lerobot(lerobot_061_python, tmp_path, flags):
    out = lerobot_checkpoint(lerobot_061_python, tmp_path / "peer", *flags)
    dst = convert_lerobot(out / "policy", tmp_path / "vla")
    policy = VLAPolicy.from_pretrained(dst)
    batch = load_file(str(out / "batch.safetensors"))
    expected = load_file(str(out / "expected.safetensors"))["actions"]
    got = policy.predict_action_chunk(batch)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-5
    # the conversion read the architecture from the checkpoint and the LeRobot config
    lr_config = json.loads((out / "policy" / "config.json").read_text())
    head = json.loads((dst / "config.json").read_text())["head"]
    assert head["horizon"] == lr_config["chunk_size"] and head["dim_model"] == lr_config["dim_model"]
    assert head["use_vae"] == lr_config["use_vae"] and head["pre_norm"] == lr_config["pre_norm"]
    assert head["n_encoder_layers"] == lr_config["n_encoder_layers"]
    # every LeRobot tensor was used: the weights alone (normalizer aside) cover our state dict
    lr_keys = set(load_file(str(out / "policy" / "model.safetensors")))
    ours = {k for k in policy.state_dict() if not k.startswith("normalizer.")}
    assert len(lr_keys) == len(ours)
    assert all(any(k == v or k.startswith(v + ".") for v in NAME_MAPPING.values()) for k in lr_keys)
    assert torch.isfinite(got).all()


def test_cli_converts_a_lerobot_act_directory(lerobot_061_python, tmp_path):
    out = lerobot_checkpoint(lerobot_061_python, tmp_path / "peer")
    proc = subprocess.run(
        [sys.executable, "-m", "vla_train", "convert", "lerobot", str(out / "policy"), str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    policy = VLAPolicy.from_pretrained(tmp_path / "cli")
    expected = load_file(str(out / "expected.safetensors"))["actions"]
    got = policy.predict_action_chunk(load_file(str(out / "batch.safetensors")))
    assert (got - expected).abs().max().item() <= 1e-5
