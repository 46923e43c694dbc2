"""LeRobot 0.6.1 pi0 -> ``vla convert lerobot`` -> same actions and training loss.

The peer script builds a tiny random ``PI0Policy`` (2 cameras, one needing resize-with-pad, a tiny
tokenizer, padded state/action dims), saves it with LeRobot's own ``save_pretrained`` plus its
processors, and records ``predict_action_chunk`` (through the pre/post-processors, fixed noise) and
``forward``'s loss (fixed noise and time). We convert the directory and compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vla_core import VLAPolicy
from vla_train.convert.lerobot import convert_lerobot
from vla_train.convert.lerobot_pi0 import convert

pytestmark = pytest.mark.peer

SCRIPT = Path(__file__).resolve().parent.parent / "peer_scripts" / "lerobot_pi0_checkpoint.py"


@pytest.fixture(scope="module")
def lerobot_pi0(tmp_path_factory, lerobot_061_python, peer_env) -> Path:
    out = tmp_path_factory.mktemp("lerobot_pi0")
    peer_env.run_in_peer("lerobot-0.6.1", SCRIPT, str(out), timeout=900)
    return out


def test_converted_pi0_matches_lerobot_actions_and_loss(lerobot_pi0, tmp_path):
    src = lerobot_pi0
    convert(src / "policy", tmp_path / "ours", tokenizer=src / "tokenizer")
    policy = VLAPolicy.from_pretrained(tmp_path / "ours").eval()
    batch = dict(load_file(str(src / "batch.safetensors")))
    batch["task"] = json.loads((src / "tasks.json").read_text())
    expected = load_file(str(src / "expected.safetensors"))
    obs = {k: v for k, v in batch.items() if k != "action"}

    actions = policy.predict_action_chunk(obs, noise=expected["noise"][..., :3])
    assert actions.shape == expected["actions"].shape == (2, 8, 3)
    assert (actions - expected["actions"]).abs().max().item() <= 1e-4

    nbatch = policy.normalizer.normalize_batch(batch)
    with torch.no_grad():
        out = policy.head.compute_loss(policy.encode(nbatch), nbatch, noise=expected["train_noise"],
                                       time=expected["train_time"])
    assert abs(out.loss.item() - expected["loss"].item()) <= 1e-4 * max(1.0, expected["loss"].item())


def test_converted_config_reads_geometry_from_tensor_shapes(lerobot_pi0, tmp_path):
    convert_lerobot(lerobot_pi0 / "policy", tmp_path / "ours")  # the `vla convert lerobot` entry point
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    bb, head = config["backbone"], config["head"]
    assert (bb["width"], bb["depth"], bb["mlp_dim"], bb["head_dim"], bb["vocab_size"]) == (64, 2, 128, 8, 64)
    assert (bb["vision_width"], bb["vision_depth"], bb["vision_mlp_dim"], bb["image_size"]) == (32, 2, 40, 28)
    assert (head["width"], head["depth"], head["mlp_dim"], head["max_action_dim"], head["horizon"]) == (32, 2, 48, 8, 8)
    assert bb["image_keys"] == ["observation.images.top", "observation.images.wrist"] and bb["tokenizer"] is None
    assert config["normalization"] == {"VISUAL": "identity", "STATE": "mean_std", "ACTION": "mean_std"}
    # Without a tokenizer the converted policy takes LeRobot's pre-tokenized language keys.
    policy = VLAPolicy.from_pretrained(tmp_path / "ours").eval()
    obs = {k: v for k, v in load_file(str(lerobot_pi0 / "batch.safetensors")).items() if k != "action"}
    obs["observation.language.tokens"] = torch.tensor([[1, 3, 4, 0, 0, 0, 0, 0]] * 2)
    obs["observation.language.attention_mask"] = obs["observation.language.tokens"] > 0
    assert policy.predict_action_chunk(obs).shape == (2, 8, 3)
