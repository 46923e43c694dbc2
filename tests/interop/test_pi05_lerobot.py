"""LeRobot 0.6.1 pi05 -> ``vla convert lerobot`` -> same prompt tokens, actions and training loss.

The peer script builds tiny random ``PI05Policy`` s (2 cameras, one needing resize-with-pad, a tiny
tokenizer that knows every state bin, padded action dims) for a sweep of config options (one at a
time and one combination), saves each with LeRobot's own ``save_pretrained`` plus its processors, and
records the tokenized prompt (the discretized state included), ``predict_action_chunk`` (through
the pre/post-processors, fixed noise) and ``forward``'s loss (fixed noise and time). We convert each
directory and compare, starting from raw observations and ``task`` strings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vla_core import ConfigError, VLAPolicy
from vla_train.convert.lerobot import convert_lerobot
from vla_train.convert.lerobot_pi05 import convert

pytestmark = pytest.mark.peer

SCRIPT = Path(__file__).resolve().parent.parent / "peer_scripts" / "lerobot_pi05_checkpoint.py"
CASES = ("default", "periods", "steps_chunk", "norm_modes", "combo")


@pytest.fixture(scope="module")
def lerobot_pi05(tmp_path_factory, lerobot_061_python, peer_env) -> Path:
    out = tmp_path_factory.mktemp("lerobot_pi05")
    peer_env.run_in_peer("lerobot-0.6.1", SCRIPT, str(out), timeout=900)
    assert tuple(json.loads((out / "cases.json").read_text())) == CASES
    return out


@pytest.mark.parametrize("case", CASES)
def test_converted_pi05_matches_lerobot_prompt_actions_and_loss(lerobot_pi05, case, tmp_path):
    src = lerobot_pi05 / case
    convert(src / "policy", tmp_path / "ours", tokenizer=lerobot_pi05 / "tokenizer")
    policy = VLAPolicy.from_pretrained(tmp_path / "ours").eval()
    batch = dict(load_file(str(src / "batch.safetensors")))
    batch["task"] = json.loads((src / "tasks.json").read_text())
    expected = load_file(str(src / "expected.safetensors"))
    obs = {k: v for k, v in batch.items() if k != "action"}

    nbatch = policy.normalizer.normalize_batch(batch)
    ids, mask = policy.backbone.language_inputs(nbatch, torch.device("cpu"))
    assert torch.equal(ids, expected["tokens"]) and torch.equal(mask, expected["token_mask"].bool())

    horizon, action_dim = expected["actions"].shape[1:]
    actions = policy.predict_action_chunk(obs, noise=expected["noise"][..., :action_dim])
    assert actions.shape == expected["actions"].shape == (2, horizon, 3)
    assert (actions - expected["actions"]).abs().max().item() <= 1e-4

    with torch.no_grad():
        out = policy.head.compute_loss(policy.encode(nbatch), nbatch, noise=expected["train_noise"],
                                       time=expected["train_time"])
    assert abs(out.loss.item() - expected["loss"].item()) <= 1e-4 * max(1.0, expected["loss"].item())


def test_converted_config_and_pretokenized_inputs(lerobot_pi05, tmp_path):
    src = lerobot_pi05 / "default"
    convert_lerobot(src / "policy", tmp_path / "ours")  # the `vla convert lerobot` entry point
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    bb, head = config["backbone"], config["head"]
    assert head["type"] == "pi05_flow" and bb["discrete_state_bins"] == 256 and bb["max_token_len"] == 32
    assert (bb["width"], bb["depth"], bb["head_dim"], bb["vocab_size"]) == (64, 2, 8, 320)
    assert (head["width"], head["depth"], head["mlp_dim"], head["max_action_dim"], head["horizon"]) == (32, 2, 48, 8, 8)
    assert config["normalization"] == {"VISUAL": "identity", "STATE": "quantile", "ACTION": "quantile"}
    # Without a tokenizer the converted policy takes LeRobot's pre-tokenized prompt (state included).
    policy = VLAPolicy.from_pretrained(tmp_path / "ours").eval()
    expected = load_file(str(src / "expected.safetensors"))
    obs = {k: v for k, v in load_file(str(src / "batch.safetensors")).items() if k != "action"}
    obs["observation.language.tokens"] = expected["tokens"]
    obs["observation.language.attention_mask"] = expected["token_mask"]
    actions = policy.predict_action_chunk(obs, noise=expected["noise"][..., :3])
    assert (actions - expected["actions"]).abs().max().item() <= 1e-4


def test_converter_refuses_unknown_fields_and_pi0_tensors(lerobot_pi05, tmp_path):
    import shutil

    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(lerobot_pi05 / "default" / "policy", src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "new_option": 1}))
    with pytest.raises(ConfigError, match=r"field\(s\) \['new_option'\] unknown to the pi05 converter"):
        convert(src, tmp_path / "a")
    # pi0's refusals, through the same shared checks
    (src / "config.json").write_text(json.dumps({**config, "rtc_config": {"enabled": True}}))
    with pytest.raises(ConfigError, match="rtc_config: enabled real-time chunking is not converted"):
        convert(src, tmp_path / "a")
    (src / "config.json").write_text(json.dumps({**config, "use_relative_actions": True}))
    with pytest.raises(ConfigError, match="use_relative_actions"):
        convert(src, tmp_path / "a")
    (src / "config.json").write_text(json.dumps(config))
    # pi05's own processor step, and the tokenizer step, must be the ones reproduced
    pre = src / "policy_preprocessor.json"
    original = pre.read_text()
    steps = json.loads(original)
    names = [step["registry_name"] for step in steps["steps"]]
    assert "pi05_prepare_state_tokenizer_processor_step" in names and "tokenizer_processor" in names
    for name, key, value, message in (
        ("pi05_prepare_state_tokenizer_processor_step", "task_key", "prompt", "task_key 'prompt'"),
        ("tokenizer_processor", "max_length", 7, "tokenizer settings"),
    ):
        edited = json.loads(original)
        for step in edited["steps"]:
            if step["registry_name"] == name:
                step.setdefault("config", {})[key] = value
        pre.write_text(json.dumps(edited))
        with pytest.raises(ConfigError, match=message):
            convert(src, tmp_path / "a")
    edited = json.loads(original)
    edited["steps"].insert(0, {"registry_name": "some_new_step", "config": {}})
    pre.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match="'some_new_step' is unknown to the pi05 converter"):
        convert(src, tmp_path / "a")
    pre.write_text(original)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["model.state_proj.weight"] = torch.zeros(32, 8)
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(Exception, match="state_proj"):
        convert(src, tmp_path / "b")
