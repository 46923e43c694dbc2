"""Parity with LeRobot 0.6.1 ACT on every option: LeRobot writes each checkpoint (in its side venv), we
convert and compare.

One peer process (``tests/peer_scripts/lerobot_act_checkpoint.py --serve``, driven by
``tests/support/peer_serve.py``; importing LeRobot's ACT takes tens of seconds) writes every case of the module: the one-at-a-time sweep is queued when the
module starts, so LeRobot writes the next case while we check the current one; the hypothesis
combinations are sent one by one. Each case is a tiny ACTPolicy with random weights and random
normalization stats, saved with ``save_pretrained`` plus its processors, a raw batch and LeRobot's
un-normalized ``predict_action_chunk`` output (and, per case, the training loss from one seed and
``select_action`` over a few steps). We convert with ``vla convert lerobot`` 's function and require
max |diff| <= 1e-5. Configurations LeRobot saves but cannot run, or that we cannot reproduce, must be
refused by name. Every option of LeRobot 0.6.1's ``ACTConfig`` is swept (see :data:`SWEEP`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer_serve import PeerServer as Peer
from safetensors.torch import load_file, save_file
from vla_core import CheckpointError, ConfigError, VLAPolicy
from vla_train.convert import convert_lerobot

pytestmark = pytest.mark.peer

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "lerobot_act_checkpoint.py"
TOL = 1e-5
MEAN_STD = {"VISUAL": "MEAN_STD", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}


def every(mode: str) -> dict[str, str]:
    return {t: mode for t in ("VISUAL", "STATE", "ENV", "ACTION")}


# One option away from the tiny base of the peer script (resnet18, one 3x64x96 camera, state 6, action 4,
# dim_model 64, 4 heads, feed-forward 96, 2 encoder / 1 decoder / 2 VAE layers, latent 8, chunk 10).
# ``refused``: the error our converter must raise (a regex naming the field).
SWEEP: dict[str, dict[str, Any]] = {
    # pretrained_backbone_weights as a trained checkpoint has it (the peer cannot download it): no effect
    "defaults": {"config_json": {"pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"}, "select_steps": 3},
    "vision_backbone=resnet34": {"config": {"vision_backbone": "resnet34"}},
    "vision_backbone=resnet50": {"config": {"vision_backbone": "resnet50"}},
    "vision_backbone=resnet101": {"config": {"vision_backbone": "resnet101"}},
    "vision_backbone=resnet152": {"config": {"vision_backbone": "resnet152"}},
    "replace_final_stride_with_dilation": {"config": {"vision_backbone": "resnet50",
                                                      "replace_final_stride_with_dilation": True}},
    "pre_norm": {"config": {"pre_norm": True}},
    "dim_model=32": {"config": {"dim_model": 32}},
    "n_heads=8": {"config": {"n_heads": 8}},
    "dim_feedforward=40": {"config": {"dim_feedforward": 40}},
    "feedforward_activation=gelu": {"config": {"feedforward_activation": "gelu"}},
    "feedforward_activation=glu": {"config": {"feedforward_activation": "glu"}, "refused": "feedforward_activation"},
    "n_encoder_layers=3": {"config": {"n_encoder_layers": 3}},
    "n_decoder_layers=3": {"config": {"n_decoder_layers": 3}},  # LeRobot runs all 3 (not ACT's first-only)
    "use_vae=false": {"config": {"use_vae": False}},
    "latent_dim=3": {"config": {"latent_dim": 3}},
    "n_vae_encoder_layers=1": {"config": {"n_vae_encoder_layers": 1}},
    "temporal_ensemble_coeff=0.01": {"config": {"temporal_ensemble_coeff": 0.01, "n_action_steps": 1},
                                     "select_steps": 6},
    "temporal_ensemble_coeff=-0.5": {"config": {"temporal_ensemble_coeff": -0.5, "n_action_steps": 1},
                                     "select_steps": 4},
    "n_action_steps=3": {"config": {"n_action_steps": 3}, "select_steps": 5},
    "chunk_size=4": {"config": {"chunk_size": 4, "n_action_steps": 4}},
    "dropout=0.3": {"config": {"dropout": 0.3}},
    "kl_weight=2.5+loss": {"config": {"kl_weight": 2.5, "dropout": 0.0}, "loss": True},
    "use_vae=false+loss": {"config": {"use_vae": False, "dropout": 0.0}, "loss": True},
    "cameras=2": {"cameras": [[3, 64, 96], [3, 64, 96]]},
    "cameras=mixed": {"cameras": [[3, 64, 96], [3, 48, 64]]},
    "cameras=3-mixed-odd": {"cameras": [[3, 48, 64], [3, 50, 70], [3, 48, 64]]},
    "cameras=0+env": {"cameras": [], "env_state": 5, "refused": "no camera"},
    "env_state(default mapping: raw)": {"env_state": 5},
    "env_state=MIN_MAX": {"env_state": 5, "config": {"normalization_mapping": {**MEAN_STD, "ENV": "MIN_MAX"}}},
    "state=absent": {"state": None},
    "state=absent+loss": {"state": None, "config": {"dropout": 0.0}, "loss": True},
    "normalization=MIN_MAX": {"env_state": 3, "config": {"normalization_mapping": every("MIN_MAX")}},
    "normalization=IDENTITY": {"config": {"normalization_mapping": every("IDENTITY")}},
    "normalization=QUANTILES": {"config": {"normalization_mapping": every("QUANTILES")}},
    "normalization=QUANTILE10": {"config": {"normalization_mapping": every("QUANTILE10")}},
    "normalization=mixed": {"config": {"normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "QUANTILES",
                                                                 "ACTION": "MIN_MAX"}}},
}
KEEP = {"defaults"}  # reused by the CLI and refusal tests below


@pytest.fixture(scope="module")
def peer(lerobot_061_python, tmp_path_factory, request):
    peer = Peer(lerobot_061_python, SCRIPT, tmp_path_factory.mktemp("lerobot_act"), cases=SWEEP)
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_option_sweep" and item.path == Path(__file__)]
    for name in dict.fromkeys(["defaults", *selected]):  # queued now: LeRobot writes while we check
        peer.submit(name, SWEEP[name])
    yield peer
    peer.close()


def check_parity(out: Path, case: dict[str, Any], tmp: Path) -> VLAPolicy:
    """Convert ``out/policy`` and compare actions (and loss / select_action where recorded) with LeRobot's."""
    dst = convert_lerobot(out / "policy", tmp / "vla")
    policy = VLAPolicy.from_pretrained(dst)
    batch = load_file(str(out / "batch.safetensors"))
    expected = load_file(str(out / "expected.safetensors"))["actions"]
    got = policy.predict_action_chunk(batch)
    assert got.shape == expected.shape and torch.isfinite(got).all()
    assert (got - expected).abs().max().item() <= TOL, (got - expected).abs().max().item()
    # every LeRobot tensor was used: the weights alone (normalizer aside) cover our state dict
    lr_keys = set(load_file(str(out / "policy" / "model.safetensors")))
    assert len(lr_keys) == len([k for k in policy.state_dict() if not k.startswith("normalizer.")])
    if case.get("loss"):
        train = load_file(str(out / "train_batch.safetensors"))
        ref = load_file(str(out / "loss.safetensors"))
        policy.train()
        torch.manual_seed(case.get("seed", 0))  # the latent's randn_like is the only draw (dropout 0)
        result = policy(train)
        torch.testing.assert_close(result.loss.detach(), ref["loss"], rtol=TOL, atol=TOL)
        torch.testing.assert_close(result.metrics["l1"], ref["l1"], rtol=TOL, atol=TOL)
        torch.testing.assert_close(result.metrics["kl"], ref["kld"], rtol=TOL, atol=TOL)
        policy.eval()
        with torch.no_grad():
            torch.testing.assert_close(policy(train).loss, ref["eval_loss"], rtol=TOL, atol=TOL)
    if case.get("select_steps"):
        record = load_file(str(out / "select.safetensors"))
        policy.reset()
        for t in range(case["select_steps"]):
            obs = {k.removeprefix("obs."): v[t] for k, v in record.items() if k.startswith("obs.")}
            action = policy.select_action(obs)
            assert (action - record["actions"][t]).abs().max().item() <= TOL, f"select_action step {t}"
    return policy


def run_case(peer: Peer, name: str, case: dict[str, Any], tmp: Path) -> None:
    out = peer.result(name)
    try:
        if "refused" in case:
            with pytest.raises(ConfigError, match=case["refused"]):
                convert_lerobot(out / "policy", tmp / "vla")
        else:
            assert peer.replies[name]["forward_error"] is None, peer.replies[name]["forward_error"]
            check_parity(out, case, tmp)
    finally:
        if name not in KEEP:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(tmp / "vla", ignore_errors=True)


@pytest.mark.parametrize("name", list(SWEEP))
def test_option_sweep(peer, name, tmp_path):
    """Each ACTConfig option, one at a time away from the tiny base: LeRobot writes, we convert, equal actions."""
    run_case(peer, name, SWEEP[name], tmp_path)


def test_glu_is_refused_because_lerobot_cannot_run_it(peer):
    """LeRobot builds and saves feedforward_activation='glu', then fails at its first forward."""
    peer.result("feedforward_activation=glu")
    assert "shapes cannot be multiplied" in peer.replies["feedforward_activation=glu"]["forward_error"]


@st.composite
def act_cases(draw) -> dict[str, Any]:
    """A random combination of ACTConfig options and features."""
    backbone = draw(st.sampled_from(["resnet18", "resnet34", "resnet50"]))
    dim = draw(st.sampled_from([32, 48, 64]))
    chunk = draw(st.integers(2, 8))
    coeff = draw(st.none() | st.sampled_from([0.0, 0.01, 0.3, -0.2]))
    loss = draw(st.booleans())
    env = draw(st.none() | st.integers(1, 4))
    types = ["VISUAL", "STATE", "ACTION"] + (["ENV"] if env else [])
    modes = ["MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10", "IDENTITY", None]  # None: left out (raw)
    mapping = {t: m for t in types if (m := draw(st.sampled_from(modes))) is not None}
    config = {
        "vision_backbone": backbone,
        "replace_final_stride_with_dilation": backbone == "resnet50" and draw(st.booleans()),
        "dim_model": dim,
        "n_heads": draw(st.sampled_from([h for h in (1, 2, 4, 8) if dim % h == 0])),
        "dim_feedforward": draw(st.integers(8, 80)),
        "feedforward_activation": draw(st.sampled_from(["relu", "gelu"])),
        "pre_norm": draw(st.booleans()),
        "n_encoder_layers": draw(st.integers(1, 3)),
        "n_decoder_layers": draw(st.integers(1, 3)),
        "use_vae": draw(st.booleans()),
        "latent_dim": draw(st.integers(1, 8)),
        "n_vae_encoder_layers": draw(st.integers(1, 2)),
        "chunk_size": chunk,
        "n_action_steps": 1 if coeff is not None else draw(st.integers(1, chunk)),
        "temporal_ensemble_coeff": coeff,
        "dropout": 0.0 if loss else draw(st.sampled_from([0.0, 0.1, 0.3])),
        "kl_weight": draw(st.sampled_from([0.0, 1.0, 10.0])),
        "normalization_mapping": mapping,
    }
    shapes = [[3, 64, 96], [3, 48, 64], [3, 40, 40], [3, 33, 47]]
    case = {
        "cameras": draw(st.lists(st.sampled_from(shapes), min_size=1, max_size=3)),
        "state": draw(st.none() | st.integers(1, 7)),
        "env_state": env,
        "action": draw(st.integers(1, 6)),
        "seed": draw(st.integers(0, 1000)),
        "batch_size": draw(st.integers(1, 3)),
        "config": config,
        "loss": loss,
        "select_steps": 3 if coeff is not None or config["n_action_steps"] < chunk else 0,
    }
    return case


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=act_cases())
def test_random_option_combinations(peer, case, tmp_path):
    """A few random combinations of every option at once, written by the same peer process."""
    name = "combo-" + hashlib.sha1(json.dumps(case, sort_keys=True).encode()).hexdigest()[:12]
    peer.submit(name, case)
    shutil.rmtree(tmp_path / "vla", ignore_errors=True)  # tmp_path is shared by the examples
    run_case(peer, name, case, tmp_path)


def test_mixed_resolution_cameras_convert_with_their_own_shapes(peer, tmp_path):
    """A 3x64x96 and a 3x48x64 camera: the converted backbone knows both shapes, sizes the context
    for 2x3 + 2x2 tokens, and its actions are LeRobot's (the sweep case checks <= 1e-5 too)."""
    case = {"cameras": [[3, 64, 96], [3, 48, 64]], "seed": 7}
    peer.submit("mixed-explicit", case)
    policy = check_parity(peer.result("mixed-explicit"), case, tmp_path)
    assert policy.config.backbone["image_shapes"] == [[3, 64, 96], [3, 48, 64]]
    assert policy.context.num_tokens == 6 + 4


def test_cli_converts_a_lerobot_act_directory(peer, tmp_path):
    out = peer.result("defaults")
    proc = subprocess.run(
        [sys.executable, "-m", "vla_train", "convert", "lerobot", str(out / "policy"), str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    policy = VLAPolicy.from_pretrained(tmp_path / "cli")
    expected = load_file(str(out / "expected.safetensors"))["actions"]
    got = policy.predict_action_chunk(load_file(str(out / "batch.safetensors")))
    assert (got - expected).abs().max().item() <= TOL


# --------------------------------------------------------------------------------------------- refusals
def edited_copy(peer: Peer, tmp: Path) -> Path:
    src = tmp / "edited"
    shutil.copytree(peer.result("defaults") / "policy", src)
    return src


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"n_decoder_layers_v2": 3}, ConfigError, r"field\(s\) \['n_decoder_layers_v2'\] unknown"),
        ({"use_peft": True}, ConfigError, "use_peft"),
        ({"n_encoder_layers": 3}, CheckpointError, r"n_encoder_layers is 3 but .*model\.encoder\.layers\.\* says 2"),
        ({"n_decoder_layers": 2}, CheckpointError, "n_decoder_layers is 2"),
        ({"dim_feedforward": 95}, CheckpointError, "dim_feedforward is 95"),
        ({"pre_norm": True}, CheckpointError, "pre_norm is True"),
        ({"use_vae": False}, CheckpointError, "use_vae is False"),
        ({"vision_backbone": "resnet34"}, CheckpointError, r"vision_backbone is 'resnet34'"),
        ({"vision_backbone": "wide_resnet50_2"}, ConfigError, "vision_backbone: expected one of"),
        ({"feedforward_activation": "silu"}, ConfigError, "feedforward_activation"),
        ({"n_obs_steps": 2}, ConfigError, "n_obs_steps"),
        ({"dim_model": 62}, CheckpointError, "dim_model is 62"),
        ({"normalization_mapping": {**MEAN_STD, "STATE": "LOG"}}, ConfigError, r"normalization_mapping\['STATE'\]"),
        ({"output_features": {"action.joints": {"type": "ACTION", "shape": [4]}}}, ConfigError, "output_features"),
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


def test_state_feature_under_another_name_is_refused(peer, tmp_path):
    """LeRobot's ACT ignores a STATE feature not named observation.state: refused, not guessed."""
    src = edited_copy(peer, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["input_features"] = {("observation.joints" if k == "observation.state" else k): v
                             for k, v in cfg["input_features"].items()}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"input_features\['observation.joints'\] \(type STATE\)"):
        convert_lerobot(src, tmp_path / "out")


def test_unexpected_and_missing_tensors_are_refused_by_name(peer, tmp_path):
    src = edited_copy(peer, tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({**tensors, "model.is_pad_head.weight": torch.zeros(1, 64)}, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not understand: \['model.is_pad_head.weight'\]"):
        convert_lerobot(src, tmp_path / "out")
    del tensors["model.encoder.layers.0.norm2.bias"]
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"head\.encoder\.layers\.0\.norm2\.bias"):
        convert_lerobot(src, tmp_path / "out")


def test_processor_steps_it_does_not_reproduce_are_refused(peer, tmp_path):
    src = edited_copy(peer, tmp_path)
    pre_path = src / "policy_preprocessor.json"
    original = json.loads(pre_path.read_text())

    def with_step(index: int, step: dict) -> None:
        steps = [dict(s) for s in original["steps"]]
        steps[index] = step
        pre_path.write_text(json.dumps({**original, "steps": steps}))

    normalizer = next(i for i, s in enumerate(original["steps"]) if s["registry_name"] == "normalizer_processor")
    norm_step = original["steps"][normalizer]
    cases = [
        (0, {"registry_name": "rename_observations_processor", "config": {"rename_map": {"a": "b"}}}, "rename_map"),
        (0, {"registry_name": "image_crop_processor", "config": {}}, "'image_crop_processor' is unknown"),
        (2, {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": "bfloat16"}},
         "float_dtype 'bfloat16'"),
        (normalizer, {**norm_step, "config": {**norm_step["config"], "eps": 1e-5}}, "eps 1e-05"),
        (normalizer, {**norm_step, "config": {**norm_step["config"], "norm_map": {**MEAN_STD, "STATE": "MIN_MAX"}}},
         "norm_map .* differs"),
    ]
    for index, step, match in cases:
        with_step(index, step)
        with pytest.raises(ConfigError, match=match):
            convert_lerobot(src, tmp_path / "out")


def test_zero_std_stats_are_refused(peer, tmp_path):
    """LeRobot divides by eps where a std is 0 (and its inverse returns the mean); vla divides by 1."""
    src = edited_copy(peer, tmp_path)
    post = src / json.loads((src / "policy_postprocessor.json").read_text())["steps"][0]["state_file"]
    stats = load_file(str(post))
    stats["action.std"][2] = 0.0
    save_file(stats, str(post))
    # the postprocessor's action stats now differ from the preprocessor's copy: refused as such first
    with pytest.raises(ConfigError, match="statistic 'action.std' differs"):
        convert_lerobot(src, tmp_path / "out")
    for state_file in src.glob("*normalizer_processor.safetensors"):
        both = load_file(str(state_file))
        both["action.std"] = stats["action.std"]
        save_file(both, str(state_file))
    with pytest.raises(ConfigError, match=r"stats of 'action': std is 0 at flat index \[2\]"):
        convert_lerobot(src, tmp_path / "out")
