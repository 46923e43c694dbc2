"""Parity with LeRobot 0.6.1's pi0 on every option: LeRobot writes each checkpoint (in its side venv),
we convert and compare.

One peer process (``tests/peer_scripts/lerobot_pi0_checkpoint.py --serve``, driven by
``tests/support/peer_serve.py``) writes every case: a tiny random ``PI0Policy`` (LeRobot's Gemma
variant table patched to tiny sizes, a tiny word-level tokenizer) saved with ``save_pretrained`` plus
its processors, a raw batch with task strings, LeRobot's un-normalized ``predict_action_chunk`` from
fixed noise and its training loss from fixed noise and time. We convert with the ``vla convert
lerobot`` function and require max |diff| <= 1e-4 (actions, relative beyond magnitude 1) and 1e-4
relative (loss). Options we cannot reproduce must be refused by name. Every option of LeRobot 0.6.1's
``PI0Config`` is swept (:data:`SWEEP`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer_serve import PeerServer
from safetensors.torch import load_file
from vla_core import CheckpointError, ConfigError, VLAPolicy
from vla_train.convert import convert_lerobot
from vla_train.convert.lerobot_pi0 import convert

pytestmark = [pytest.mark.peer, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "lerobot_pi0_checkpoint.py"
TOL = 1e-4


def every(mode: str) -> dict[str, str]:
    return {t: mode for t in ("VISUAL", "STATE", "ACTION")}


GEOMETRY = {"num_kv_heads": 2, "head_dim": 16}
# One option away from the tiny base of the peer script (VLM width 64 / expert width 32, depth 2, 8 heads of
# dim 8, 1 K/V head; SigLIP width 32, 2 layers, 28 px, patch 14; cameras top 3x30x40 + wrist 3x28x28, state 5,
# action 3, max dims 8, chunk 8, 10 steps, 8 tokens). ``refused``: the error our converter must raise;
# ``config_out``: fields of the converted config (``section.field``) and their expected values.
SWEEP: dict[str, dict[str, Any]] = {
    "defaults": {},
    "paligemma_variant=gemma_300m": {"config": {"paligemma_variant": "gemma_300m"},
                                     "config_out": {"backbone.width": 32}},
    "action_expert_variant=gemma_2b": {"config": {"action_expert_variant": "gemma_2b"},
                                       "config_out": {"head.width": 64}},
    "variant geometry (2 K/V heads of dim 16)": {"variants": {"gemma_2b": GEOMETRY, "gemma_300m": GEOMETRY}},
    "variant depth 3": {"variants": {"gemma_2b": {"depth": 3}, "gemma_300m": {"depth": 3}}},
    "chunk_size=5": {"config": {"chunk_size": 5, "n_action_steps": 3}},
    "max_state_dim/max_action_dim": {"config": {"max_state_dim": 6, "max_action_dim": 4}},
    "state=8/action=8 (no padding)": {"state": 8, "action": 8},
    "num_inference_steps=3": {"config": {"num_inference_steps": 3}},
    "min_period/max_period": {"config": {"min_period": 0.01, "max_period": 2.0}},
    "time_sampling_*": {"config": {"time_sampling_beta_alpha": 2.0, "time_sampling_beta_beta": 1.5,
                                   "time_sampling_scale": 0.9, "time_sampling_offset": 0.05},
                        "config_out": {"head.time_beta_alpha": 2.0, "head.time_beta_beta": 1.5,
                                       "head.time_scale": 0.9, "head.time_offset": 0.05}},
    "image_resolution=42": {"config": {"image_resolution": [42, 42]}, "config_out": {"backbone.image_size": 42}},
    "tokenizer_max_length=12": {"config": {"tokenizer_max_length": 12}},
    "cameras=1": {"cameras": {"top": [3, 30, 40]}},
    "cameras=3": {"cameras": {"top": [3, 30, 40], "wrist": [3, 28, 28], "side": [3, 20, 36]}},
    "normalization=MIN_MAX": {"config": {"normalization_mapping": every("MIN_MAX")}},
    "normalization=QUANTILES": {"config": {"normalization_mapping": every("QUANTILES")}},
    "normalization=QUANTILE10": {"config": {"normalization_mapping": every("QUANTILE10")}},
    "normalization=IDENTITY": {"config": {"normalization_mapping": every("IDENTITY")}},
    "normalization=STATE omitted": {"config": {"normalization_mapping": {"ACTION": "MEAN_STD"}},
                                    "config_out": {"normalization.STATE": "identity"}},
    "dtype=bfloat16": {"config": {"dtype": "bfloat16"}},
    "freeze_vision_encoder": {"config": {"freeze_vision_encoder": True}, "config_out": {"backbone.freeze_vision": True}},
    "train_expert_only": {"config": {"train_expert_only": True}, "config_out": {"freeze_backbone": True}},
    "gradient_checkpointing+compile_model": {"config": {"gradient_checkpointing": True},
                                             "config_json": {"compile_model": True, "compile_mode": "default"}},
    "n_obs_steps=2 (no effect)": {"config": {"n_obs_steps": 2}, "config_out": {"n_obs_steps": 1}},
    "rtc_config disabled": {"config": {"rtc_config": {"enabled": False}}},
    "rtc_config enabled": {"config": {"rtc_config": {"enabled": True}}, "refused": "rtc_config"},
    "empty_cameras=1": {"config": {"empty_cameras": 1}, "refused": "empty_cameras"},
    "use_relative_actions": {"config": {"use_relative_actions": True}, "refused": "use_relative_actions"},
    "ignored presets": {"config": {"optimizer_lr": 1e-3, "optimizer_grad_clip_norm": 5.0,
                                   "scheduler_decay_steps": 10, "relative_exclude_joints": []}},
}
KEEP = {"defaults"}


@pytest.fixture(scope="module")
def peer(lerobot_061_python, tmp_path_factory, request):
    server = PeerServer(lerobot_061_python, SCRIPT, tmp_path_factory.mktemp("lerobot_pi0"), cases=SWEEP,
                        omit=("refused", "config_out"))
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_option_sweep" and item.path == Path(__file__)]
    for name in dict.fromkeys(["defaults", *selected]):  # queued now: LeRobot writes while we check
        server.submit(name, SWEEP[name])
    yield server
    server.close()


def outputs(policy: VLAPolicy, out: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The converted policy's un-normalized chunk and its loss for the case's batch, noise and time."""
    batch = dict(load_file(str(out / "batch.safetensors")))
    batch["task"] = json.loads((out / "tasks.json").read_text())
    expected = load_file(str(out / "expected.safetensors"))
    obs = {k: v for k, v in batch.items() if k != "action"}
    actions = policy.predict_action_chunk(obs, noise=expected["noise"][..., : batch["action"].shape[-1]])
    nbatch = policy.normalizer.normalize_batch(batch)
    with torch.no_grad():
        loss = policy.head.compute_loss(policy.encode(nbatch), nbatch, noise=expected["train_noise"],
                                        time=expected["train_time"]).loss
    return actions, loss, expected


def close(got: torch.Tensor, want: torch.Tensor, tol: float) -> float:
    err = (got - want).abs().max().item()
    assert got.shape == want.shape and err <= tol * max(1.0, want.abs().max().item()), err
    return err


def check_parity(peer: PeerServer, out: Path, case: dict[str, Any], tmp: Path) -> VLAPolicy:
    dst = convert(out / "policy", tmp / "vla", tokenizer=peer.root / "tokenizer")
    policy = VLAPolicy.from_pretrained(dst).eval()
    actions, loss, expected = outputs(policy, out)
    if "actions_fp32" in expected:  # bfloat16: exact against LeRobot's float32 run of the same weights
        close(actions, expected["actions_fp32"], TOL)
        close(loss.reshape(1), expected["loss_fp32"], TOL)
        close(actions, expected["actions"], 0.1)  # LeRobot's own bfloat16 run: bfloat16 precision only
    else:
        close(actions, expected["actions"], TOL)
        close(loss.reshape(1), expected["loss"], TOL)
    config = json.loads((dst / "config.json").read_text())
    for path, value in case.get("config_out", {}).items():
        section, _, field = path.rpartition(".")
        assert (config[section] if section else config)[field] == value, path
    return policy


def run_case(peer: PeerServer, name: str, case: dict[str, Any], tmp: Path) -> None:
    out = peer.result(name)
    try:
        if "refused" in case:
            with pytest.raises(ConfigError, match=case["refused"]):
                convert_lerobot(out / "policy", tmp / "vla")
        else:
            assert peer.replies[name]["forward_error"] is None, peer.replies[name]["forward_error"]
            if case.get("config", {}).get("dtype") == "bfloat16":
                with pytest.warns(UserWarning, match="bfloat16"):
                    check_parity(peer, out, case, tmp)
            else:
                check_parity(peer, out, case, tmp)
    finally:
        if name not in KEEP:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(tmp / "vla", ignore_errors=True)


@pytest.mark.parametrize("name", list(SWEEP))
def test_option_sweep(peer, name, tmp_path):
    """Each PI0Config option, one at a time away from the tiny base: LeRobot writes, we convert, equal
    actions and loss."""
    run_case(peer, name, SWEEP[name], tmp_path)


@st.composite
def pi0_cases(draw) -> dict[str, Any]:
    """A random combination of PI0Config options, features and Gemma geometry."""
    chunk = draw(st.integers(2, 9))
    kv, head_dim = draw(st.sampled_from([(1, 8), (2, 8), (1, 4)]))
    variants = {v: {"num_kv_heads": kv, "head_dim": head_dim, "depth": depth,
                    "mlp_dim": draw(st.sampled_from([16, 40]))}
                for v, depth in zip(("gemma_2b", "gemma_300m"), [draw(st.integers(1, 3))] * 2)}
    state, action = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    modes = ["MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10", "IDENTITY", None]  # None: left out (raw)
    config = {
        "paligemma_variant": draw(st.sampled_from(["gemma_2b", "gemma_300m"])),
        "action_expert_variant": draw(st.sampled_from(["gemma_2b", "gemma_300m"])),
        "chunk_size": chunk,
        "n_action_steps": draw(st.integers(1, chunk)),
        "max_state_dim": draw(st.integers(state, 8)),
        "max_action_dim": draw(st.integers(action, 8)),
        "num_inference_steps": draw(st.integers(1, 6)),
        "min_period": draw(st.sampled_from([4e-3, 0.02])),
        "max_period": draw(st.sampled_from([4.0, 1.5])),
        "image_resolution": [draw(st.sampled_from([14, 28, 42]))] * 2,
        "tokenizer_max_length": draw(st.integers(6, 12)),
        "normalization_mapping": {t: m for t in ("VISUAL", "STATE", "ACTION")
                                  if (m := draw(st.sampled_from(modes))) is not None},
    }
    shapes = [[3, 28, 28], [3, 30, 40], [3, 20, 36], [3, 14, 14]]
    cameras = draw(st.lists(st.sampled_from(shapes), min_size=1, max_size=3))
    return {"config": config, "variants": variants, "state": state, "action": action,
            "cameras": {f"cam{i}": s for i, s in enumerate(cameras)},
            "seed": draw(st.integers(0, 1000)), "batch_size": draw(st.integers(1, 3))}


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=pi0_cases())
def test_random_option_combinations(peer, case, tmp_path):
    """A few random combinations of every option at once, written by the same peer process."""
    name = "combo-" + hashlib.sha1(json.dumps(case, sort_keys=True).encode()).hexdigest()[:12]
    peer.submit(name, case)
    shutil.rmtree(tmp_path / "vla", ignore_errors=True)  # tmp_path is shared by the examples
    run_case(peer, name, case, tmp_path)


# --------------------------------------------------------------------------------------------- refusals
def edited_copy(peer: PeerServer, tmp: Path) -> Path:
    src = tmp / "edited"
    shutil.copytree(peer.result("defaults") / "policy", src)
    return src


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"use_adarms": True}, ConfigError, r"field\(s\) \['use_adarms'\] unknown to the pi0 converter"),
        ({"use_peft": True}, ConfigError, "use_peft"),
        ({"max_state_dim": 6}, CheckpointError, "max_state_dim is 6"),
        ({"max_action_dim": 6}, CheckpointError, "max_action_dim is 6"),
        ({"image_resolution": [28, 42]}, ConfigError, "square"),
        ({"dtype": "float16"}, ConfigError, "dtype"),
        ({"normalization_mapping": {"STATE": "LOG"}}, ConfigError, r"normalization_mapping\['STATE'\]"),
        ({"output_features": {"action.joints": {"type": "ACTION", "shape": [3]}}}, ConfigError, "output_features"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_config_fields_it_does_not_understand_or_that_contradict_the_tensors_are_refused(
    peer, tmp_path, changes, error, match
):
    src = edited_copy(peer, tmp_path)
    edit_json(src / "config.json", **changes)
    with pytest.raises(error, match=match):
        convert_lerobot(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changes, match", [({"max_length": 16}, "tokenizer settings"),
                                            ({"padding_side": "left"}, "tokenizer settings")])
def test_tokenizer_settings_it_does_not_reproduce_are_refused(peer, tmp_path, changes, match):
    src = edited_copy(peer, tmp_path)
    pre = src / "policy_preprocessor.json"
    data = json.loads(pre.read_text())
    for step in data["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"].update(changes)
    pre.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=match):
        convert_lerobot(src, tmp_path / "out")


def test_state_feature_under_another_name_is_refused(peer, tmp_path):
    src = edited_copy(peer, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["input_features"] = {("observation.joints" if k == "observation.state" else k): v
                             for k, v in cfg["input_features"].items()}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"input_features\['observation.joints'\] \(type STATE\)"):
        convert_lerobot(src, tmp_path / "out")
