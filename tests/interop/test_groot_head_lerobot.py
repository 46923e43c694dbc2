"""Parity of our dit_flow_matching head with LeRobot 0.5.1's GR00T N1.5 FlowmatchingActionHead.

The peer script builds the reference tiny with random weights in the LeRobot 0.5.1 venv and writes
its state dict and reference outputs; we load the weights through the name mapping and compare
velocity predictions, Euler-integrated actions and the training loss (fp32, max abs diff <= 1e-4).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vla_core import BackboneOutput, load_tensors
from vla_heads.dit_flow_matching import DiTFlowMatchingHead
from vla_heads.dit_flow_matching.convert import head_config_from_groot, load_groot_head

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "groot_head_lerobot.py"
TOL = 1e-4


@pytest.fixture(scope="module")
def reference(lerobot_051_python, tmp_path_factory):
    out = tmp_path_factory.mktemp("groot_head")
    proc = subprocess.run([str(lerobot_051_python), str(SCRIPT), str(out)], check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ours(reference):
    cfg = head_config_from_groot(json.loads((reference / "config.json").read_text()), action_dim=4,
                                 embodiments={"new_embodiment": 4, "other": 1})
    assert cfg["num_embodiments"] == 5 and cfg["default_embodiment"] == "new_embodiment"
    head = DiTFlowMatchingHead.config_class.from_dict({**cfg, "state_dim": 5})
    head = DiTFlowMatchingHead(head)
    report = load_groot_head(head, load_tensors(reference / "model.safetensors"))
    assert report.ok, str(report)
    return head.eval()


@pytest.fixture(scope="module")
def io(reference):
    return load_file(str(reference / "io.safetensors"))


def _inputs(io, tag):
    context = BackboneOutput(features=io["features"], attention_mask=io["attention_mask"])
    batch = {"observation.state": io["state"], "embodiment_id": io[f"emb_{tag}"], "action": io["action"]}
    return context, batch


@pytest.mark.peer
@pytest.mark.parametrize("tag", ["mixed", "single"])
def test_velocity_matches(ours, io, tag):
    context, batch = _inputs(io, tag)
    with torch.no_grad():
        v = ours.predict_velocity(context, batch, io["x_t"], io["t_disc"])
    ref = io[f"velocity_{tag}"]
    assert ref.abs().max() > 1e-2  # a real signal, not all zeros
    assert (v - ref).abs().max().item() <= TOL


@pytest.mark.peer
@pytest.mark.parametrize("tag", ["mixed", "single"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_actions_match(ours, io, tag, use_cache):
    context, batch = _inputs(io, tag)
    actions = ours.predict_action(context, batch, noise=io[f"noise_{tag}"], use_cache=use_cache)
    ref = io[f"actions_{tag}"][..., :4]
    assert actions.shape == ref.shape
    assert (actions - ref).abs().max().item() <= TOL


@pytest.mark.peer
@pytest.mark.parametrize("tag", ["mixed", "single"])
def test_training_loss_matches_under_same_seed(ours, io, tag):
    """Same RNG order as the reference (noise, then Beta time), so the same seed gives the same loss."""
    context, batch = _inputs(io, tag)
    torch.manual_seed(7)
    with torch.no_grad():
        loss = ours(context, batch).loss
    assert abs(loss.item() - io[f"loss_{tag}"].item()) <= TOL
