"""Whole-policy GR00T N1.5 conversion against LeRobot 0.5.1: LeRobot writes a tiny ``groot`` policy with its
own ``save_pretrained`` (and processors), ``vla convert lerobot`` converts it, and our policy's actions (robot
units, after LeRobot's own unnormalize step) equal LeRobot's from the same noise.

One long-lived peer process (tests/peer_scripts/groot_server_lerobot.py) serves every request of this module,
including the option sweeps in test_groot_sweep_lerobot.py's helpers.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from groot_peer import BACKBONE, EAGLE, HEAD, POLICY, STATS, GrootPeer
from safetensors.torch import load_file
from vla_core import ConfigError, VLAPolicy

TOL = 1e-4


@pytest.fixture(scope="module")
def peer(lerobot_051_python, tmp_path_factory):
    with GrootPeer(lerobot_051_python, tmp_path_factory.mktemp("groot_peer_home")) as server:
        yield server


def policy_case(peer, tmp_path, finetune=True, **changes):
    """LeRobot's groot policy directory for the tiny spec with ``changes`` (keys: eagle, backbone_cfg,
    action_head_cfg, policy, stats; each a dict merged one level deep) and the base model it was built on
    (an Isaac-GR00T checkpoint layout); ``finetune=False`` keeps the base model's weights."""
    req = {"finetune": finetune, "eagle": copy.deepcopy(EAGLE), "backbone_cfg": dict(BACKBONE), "action_head_cfg": copy.deepcopy(HEAD),
           "policy": copy.deepcopy(POLICY), "stats": copy.deepcopy(STATS)}
    for key, value in changes.items():
        req[key].update(value)
    out, base = tmp_path / "lerobot", tmp_path / "base"
    peer.request("policy", out=str(out), base=str(base), **req)
    return out, base


def check_actions(policy: VLAPolicy, out):
    io = load_file(str(out / "io.safetensors"))
    batch = {k: io[k] for k in ("eagle_input_ids", "eagle_attention_mask", "eagle_pixel_values")}
    batch["observation.state"] = io["state"]
    bsz = io["state"].shape[0]  # declared features must be present; pre-tokenized eagle_* inputs take precedence
    batch.update({k: torch.zeros(bsz, 3, 28, 28) for k in policy.backbone.config.image_keys}, task=["pick"] * bsz)
    # predict_action_chunk with the reference's full (B, H, padded A) noise: the padded dims feed the real ones
    batch, _ = policy.eval().prepare(batch)
    with torch.no_grad():
        chunk = policy.sample_chunk(policy.normalizer.normalize_batch(batch), noise=io["noise"], generator=None)
    got = policy.normalizer.unnormalize("action", chunk)
    want = io["actions"]
    assert got.shape == want.shape and want.abs().max() > 0.1
    assert (got - want).abs().max().item() <= TOL


@pytest.mark.peer
def test_lerobot_groot_policy_converts_with_equal_actions(peer, tmp_path):
    """so100 (row 2 of 5 embodiment rows: fewer than 32), two cameras given out of order."""
    out, base = policy_case(peer, tmp_path)
    from vla_train.cli import main

    dst = tmp_path / "ours"
    eagle = peer.home / POLICY["tokenizer_assets_repo"]
    assert main(["convert", "lerobot", str(out), str(dst), "--base-model", str(base), "--eagle-config", str(eagle)]) == 0
    policy = VLAPolicy.from_pretrained(dst)
    head = policy.head.config
    assert head.embodiments["so100"] == 2 and head.default_embodiment == "so100" and head.embodiment_rows == 5
    assert policy.backbone.config.image_keys == ("observation.images.a_wrist", "observation.images.top")  # sorted
    assert not any(p.requires_grad for p in policy.backbone.parameters())  # tune_llm / tune_visual false
    check_actions(policy, out)


@pytest.mark.peer
def test_unknown_tag_selects_row_0_and_frozen_projector(peer, tmp_path, monkeypatch):
    """An embodiment tag LeRobot does not know selects row 0; tune_projector=False freezes the encoders and the
    decoder (not the future tokens or the VL stack); the Eagle config is found where LeRobot reads it."""
    out, base = policy_case(peer, tmp_path, policy={"embodiment_tag": "my_robot", "tune_projector": False})
    from vla_train.convert import convert_lerobot

    monkeypatch.setenv("HF_LEROBOT_HOME", str(peer.home))
    policy = VLAPolicy.from_pretrained(convert_lerobot(out, tmp_path / "ours", base_model=base))
    head = policy.head
    assert head.config.embodiments[head.config.default_embodiment] == 0
    assert not head.action_decoder.layer1.weight.requires_grad and head.future_tokens.weight.requires_grad
    check_actions(policy, out)


@pytest.mark.peer
def test_missing_base_model_or_eagle_config_fails_naming_the_option(peer, tmp_path, monkeypatch):
    out, base = policy_case(peer, tmp_path)
    from vla_train.convert import convert_lerobot

    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "base_model_path": "nvidia/GR00T-N1.5-3B"}))
    with pytest.raises(FileNotFoundError, match="--base-model"):
        convert_lerobot(out, tmp_path / "a")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="--eagle-config"):
        convert_lerobot(out, tmp_path / "b", base_model=base)
    with pytest.raises(ConfigError, match="takes no option"):
        convert_lerobot(out, tmp_path / "c", base_model=base, surprise=1)
    (out / "config.json").write_text(json.dumps({**cfg, "surprise_field": 1}))
    with pytest.raises(ConfigError, match="surprise_field"):
        convert_lerobot(out, tmp_path / "d", base_model=base, eagle_config=peer.home / POLICY["tokenizer_assets_repo"])


@pytest.mark.peer
@pytest.mark.parametrize(("changes", "match"), [
    ({"policy": {"n_action_steps": 2}}, "n_action_steps"),
    ({"stats": {"action": {"min": [-1.0, -2, 0.5, -3], "max": [1.0, 2, 0.5, 3]}}}, "zero range"),
])
def test_reference_behaviours_vla_cannot_reproduce_are_refused(peer, tmp_path, changes, match):
    out, base = policy_case(peer, tmp_path, **changes)
    from vla_train.convert import convert_lerobot

    with pytest.raises(ConfigError, match=match):
        convert_lerobot(out, tmp_path / "ours", base_model=base, eagle_config=peer.home / POLICY["tokenizer_assets_repo"])
    assert not (tmp_path / "ours").exists()


@pytest.mark.peer
def test_isaac_groot_checkpoint_converts_with_equal_actions(peer, tmp_path):
    """The base model LeRobot loads is an Isaac-GR00T checkpoint (GR00TN15.save_pretrained layout); with the
    statistics in experiment_cfg/metadata.json split over two state keys, it converts to the same policy."""
    out, base = policy_case(peer, tmp_path, finetune=False)
    state, action = STATS["observation.state"], STATS["action"]
    meta = {"so100": {"statistics": {
        "state": {"gripper": {k: v[3:] for k, v in state.items()}, "arm": {k: v[:3] for k, v in state.items()}},
        "action": {"arm": action}}}}
    (base / "experiment_cfg").mkdir()
    (base / "experiment_cfg" / "metadata.json").write_text(json.dumps(meta))
    from vla_train.cli import main

    eagle = peer.home / POLICY["tokenizer_assets_repo"] / "config.json"
    argv = ["convert", "groot", str(base), str(tmp_path / "ours"), "--eagle-config", str(eagle), "--embodiment", "so100",
            "--cameras", "a_wrist,top", "--normalization", "min_max", "--state-keys", "arm,gripper"]
    assert main(argv) == 0
    check_actions(VLAPolicy.from_pretrained(tmp_path / "ours"), out)
    from vla_train.convert.groot import convert

    with pytest.raises(ConfigError, match="state_keys"):  # two state keys: their order must be given
        convert(base, tmp_path / "x", eagle_config=eagle, embodiment="so100", cameras=["top"], normalization="min_max")
