"""Parity of our ``eagle`` backbone with LeRobot 0.5.1's vendored Eagle 2.5 VL model (GR00T N1.5).

The peer script builds the reference tiny with random weights (SigLIP + Qwen3, both connectors),
truncates its LLM as GR00T's EagleBackbone does and writes the full checkpoint (reference key
names) and its features; we load the directory with ``EagleBackbone.from_pretrained`` and compare.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vla_backbones.eagle import EagleBackbone

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "groot_eagle_lerobot.py"


@pytest.fixture(scope="module")
def reference(lerobot_051_python, tmp_path_factory):
    out = tmp_path_factory.mktemp("groot_eagle")
    proc = subprocess.run([str(lerobot_051_python), str(SCRIPT), str(out)], check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.peer
@pytest.mark.parametrize("variant", ["linear", "pixel_shuffle_mlp"])
def test_eagle_features_match_reference(reference, variant):
    backbone = EagleBackbone.from_pretrained(reference / variant, select_layer=2).eval()
    assert backbone.config.connector == variant
    assert len(backbone.llm.layers) == 2  # the checkpoint holds 3; layer 2 is dropped, not loaded
    io = load_file(str(reference / variant / "io.safetensors"))
    with torch.no_grad():
        out = backbone({"eagle_input_ids": io["input_ids"], "eagle_attention_mask": io["attention_mask"],
                        "eagle_pixel_values": io["pixel_values"]})
    assert out.features.shape == io["features"].shape
    assert torch.equal(out.attention_mask, io["attention_mask"].bool())
    assert io["features"].abs().max() > 0.1
    assert (out.features - io["features"]).abs().max().item() <= 1e-4
