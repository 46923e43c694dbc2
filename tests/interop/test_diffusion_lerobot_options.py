"""Parity with LeRobot 0.6.1's DiffusionPolicy on every option: LeRobot writes each checkpoint (in its
side venv), we convert and compare.

One peer process (``tests/peer_scripts/lerobot_diffusion_checkpoint.py --serve``, driven by
``tests/support/peer_serve.py``) writes every case of the module: the one-at-a-time sweep is queued
when the module starts, so LeRobot writes the next case while we check the current one; the
hypothesis combinations are sent one by one. Each case is a tiny DiffusionPolicy with random weights
and random normalization stats, saved with ``save_pretrained`` plus its processors, a raw batch, the
initial noise and LeRobot's un-normalized ``predict_action_chunk`` (DDPM's per-step noise from the
global RNG, seeded alike on both sides), and per case the training loss from one seed. We convert
with ``vla convert lerobot`` 's function and require max |diff| <= 1e-5 (actions, relative
beyond magnitude 1) and 1e-5 (loss). Configurations LeRobot saves but cannot run, or that we cannot reproduce, must be refused by
name. Every architecture option of LeRobot 0.6.1's ``DiffusionConfig`` is swept (:data:`SWEEP`).
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
from safetensors.torch import load_file, save_file
from vla_core import CheckpointError, ConfigError, VLAPolicy
from vla_train.convert import convert_lerobot

pytestmark = [pytest.mark.peer, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "lerobot_diffusion_checkpoint.py"
TOL = 1e-5
DEFAULT_MAPPING = {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"}


def every(mode: str) -> dict[str, str]:
    return {t: mode for t in ("VISUAL", "STATE", "ENV", "ACTION")}


# One option away from the tiny base of the peer script (resnet18 with BatchNorm, one encoder per camera,
# one 3x40x48 camera, state 3, action 2, n_obs_steps 2, horizon 8, 4 action steps, down_dims (16, 32),
# kernel 5, 8 groups, step embedding 16, 10 DDPM steps, squaredcos_cap_v2, epsilon, clipped at 1).
# ``refused``: the error our converter must raise (a regex naming the field). ``loss``: also the loss.
SWEEP: dict[str, dict[str, Any]] = {
    # pretrained_backbone_weights as a trained checkpoint has it (the peer cannot download it): no effect
    "defaults": {"config_json": {"pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"}, "loss": True},
    "n_obs_steps=1": {"config": {"n_obs_steps": 1}},
    "n_obs_steps=3": {"config": {"n_obs_steps": 3}},
    "horizon=16+n_action_steps=15": {"config": {"horizon": 16, "n_action_steps": 15}},  # horizon - n_obs + 1
    "vision_backbone=resnet34": {"config": {"vision_backbone": "resnet34"}},
    "vision_backbone=resnet50": {"config": {"vision_backbone": "resnet50"}},
    "resize_shape": {"config": {"resize_shape": [32, 36]}},
    # (LeRobot's shape probe runs BatchNorm in training mode: layer4 must give more than 1x1)
    "resize_shape+crop_ratio=0.8": {"config": {"resize_shape": [48, 56], "crop_ratio": 0.8}},
    # quirk 3: with resize_shape and crop_ratio 1 LeRobot recomputes crop_shape as None on load
    "resize_shape+stale crop_shape": {"config": {"resize_shape": [32, 36]}, "config_json": {"crop_shape": [20, 20]}},
    "crop_ratio without resize (ignored)": {"config": {"crop_ratio": 0.5}},
    "crop_shape": {"config": {"crop_shape": [32, 40]}},
    "crop_is_random=false+loss": {"config": {"crop_shape": [32, 40], "crop_is_random": False}, "loss": True},
    "use_group_norm": {"config": {"use_group_norm": True}, "loss": True},
    "spatial_softmax_num_keypoints=4": {"config": {"spatial_softmax_num_keypoints": 4}},
    "use_separate_rgb_encoder_per_camera=false": {"config": {"use_separate_rgb_encoder_per_camera": False},
                                                  "cameras": [[3, 40, 48], [3, 40, 48]], "loss": True},
    "cameras=2": {"cameras": [[3, 40, 48], [3, 40, 48]]},
    "cameras=0+env": {"cameras": [], "env_state": 4, "refused": "no camera"},
    "down_dims=3 levels": {"config": {"down_dims": [16, 32, 64]}},
    "down_dims=1 level": {"config": {"down_dims": [24]}},
    "kernel_size=3": {"config": {"kernel_size": 3}},
    "kernel_size=4": {"config": {"kernel_size": 4}, "refused": "kernel_size"},
    "n_groups=4": {"config": {"n_groups": 4}},  # quirk 1: the final block keeps 8 groups
    "n_groups=2+loss": {"config": {"n_groups": 2}, "loss": True},
    "diffusion_step_embed_dim=8": {"config": {"diffusion_step_embed_dim": 8}},
    "diffusion_step_embed_dim=7": {"config": {"diffusion_step_embed_dim": 7}, "refused": "diffusion_step_embed_dim"},
    "use_film_scale_modulation=false": {"config": {"use_film_scale_modulation": False}},
    "compile_model": {"config": {"compile_model": True}},
    "gradient_checkpointing+loss": {"config": {"gradient_checkpointing": True}, "loss": True},
    "ignored presets": {"config": {"drop_n_last_frames": 3, "optimizer_lr": 1e-3, "optimizer_betas": [0.9, 0.9],
                                   "scheduler_name": "constant", "compile_mode": "default"}},
    "noise_scheduler_type=DDIM": {"config": {"noise_scheduler_type": "DDIM", "num_inference_steps": 4}},
    "num_inference_steps=5": {"config": {"num_inference_steps": 5}},
    "num_train_timesteps=20": {"config": {"num_train_timesteps": 20}},
    "beta_schedule=linear+betas": {"config": {"beta_schedule": "linear", "beta_start": 0.001, "beta_end": 0.05}},
    "beta_schedule=scaled_linear": {"config": {"beta_schedule": "scaled_linear"}},
    "beta_schedule=sigmoid": {"config": {"beta_schedule": "sigmoid"}},
    "prediction_type=sample+loss": {"config": {"prediction_type": "sample"}, "loss": True},
    "clip_sample=false": {"config": {"clip_sample": False}},
    "clip_sample_range=0.5": {"config": {"clip_sample_range": 0.5}},
    "do_mask_loss_for_padding+loss": {"config": {"do_mask_loss_for_padding": True}, "loss": True},
    "env_state(default mapping: raw)": {"env_state": 4},
    "normalization=MIN_MAX": {"env_state": 3, "config": {"normalization_mapping": every("MIN_MAX")}},
    "normalization=IDENTITY": {"config": {"normalization_mapping": every("IDENTITY")}},
    "normalization=QUANTILES": {"config": {"normalization_mapping": every("QUANTILES")}},
    "normalization=QUANTILE10": {"config": {"normalization_mapping": every("QUANTILE10")}},
    "normalization=mixed": {"env_state": 2, "config": {"normalization_mapping": {
        "VISUAL": "IDENTITY", "STATE": "QUANTILES", "ENV": "MEAN_STD", "ACTION": "QUANTILE10"}}},
}
KEEP = {"defaults", "n_groups=4", "use_group_norm"}  # reused by the tests below the sweep


@pytest.fixture(scope="module")
def peer(lerobot_061_python, tmp_path_factory, request):
    server = PeerServer(lerobot_061_python, SCRIPT, tmp_path_factory.mktemp("lerobot_diffusion"), cases=SWEEP)
    selected = [item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_option_sweep" and item.path == Path(__file__)]
    for name in dict.fromkeys(["defaults", *selected]):  # queued now: LeRobot writes while we check
        server.submit(name, SWEEP[name])
    yield server
    server.close()


def observations(policy: VLAPolicy, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LeRobot's observations (B, n_obs_steps, ...); with one step ours take (B, ...)."""
    if policy.config.n_obs_steps > 1:
        return batch
    return {k: v.squeeze(1) if k.startswith("observation.") else v for k, v in batch.items()}


def predict(policy: VLAPolicy, out: Path) -> torch.Tensor:
    """The converted policy's chunk for the case's batch and noise, in LeRobot's executed window."""
    batch = observations(policy, load_file(str(out / "batch.safetensors")))
    noise = batch.pop("noise")
    torch.manual_seed(1234)  # DDPM's per-step noise, drawn from the global RNG as LeRobot does
    chunk = policy.predict_action_chunk(batch, noise=noise, generator=torch.default_generator)
    start = policy.config.action_start
    return chunk[:, start : start + policy.n_action_steps]


def check_parity(out: Path, case: dict[str, Any], tmp: Path) -> VLAPolicy:
    """Convert ``out/policy`` and compare actions (and the loss where recorded) with LeRobot's."""
    policy = VLAPolicy.from_pretrained(convert_lerobot(out / "policy", tmp / "vla")).eval()
    expected = load_file(str(out / "expected.safetensors"))["actions"]
    got = predict(policy, out)
    assert got.shape == expected.shape and torch.isfinite(got).all()
    # float32 rounding grows with the magnitude (unclipped samples reach ~1e3 in robot units)
    tol = TOL * max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= tol, (got - expected).abs().max().item()
    # every LeRobot tensor was used: the weights alone (normalizer aside) cover our state dict
    lr_keys = set(load_file(str(out / "policy" / "model.safetensors")))
    assert len(lr_keys) == len([k for k in policy.state_dict() if not k.startswith("normalizer.")])
    if case.get("loss"):
        train = observations(policy, load_file(str(out / "train_batch.safetensors")))
        ref = load_file(str(out / "loss.safetensors"))
        seed = case.get("seed", 0)
        policy.train()
        torch.manual_seed(seed)  # the noise, then the timesteps: LeRobot's draws, in its order
        torch.testing.assert_close(policy(train).loss.detach(), ref["loss"], rtol=TOL, atol=TOL)
        policy.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            torch.testing.assert_close(policy(train).loss, ref["eval_loss"], rtol=TOL, atol=TOL)
    return policy


def run_case(peer: PeerServer, name: str, case: dict[str, Any], tmp: Path) -> None:
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
    """Each DiffusionConfig option, one at a time away from the tiny base: LeRobot writes, we convert,
    equal actions (and losses)."""
    run_case(peer, name, SWEEP[name], tmp_path)


@pytest.mark.parametrize("name, error", [("kernel_size=4", "size of tensor"),
                                         ("diffusion_step_embed_dim=7", "shapes cannot be multiplied")])
def test_refused_options_are_ones_lerobot_cannot_run(peer, name, error):
    """LeRobot builds and saves these, then fails at its own first forward."""
    assert error in peer.reply(name)["forward_error"]


def test_final_block_groups_quirk_is_what_makes_n_groups_convert(peer, tmp_path):
    """LeRobot's final UNet block has 8 GroupNorm groups whatever n_groups: with ``final_n_groups``
    reset to ``n_groups`` the converted policy's actions are off by far more than the tolerance."""
    out = peer.result("n_groups=4")
    dst = convert_lerobot(out / "policy", tmp_path / "vla")
    config = json.loads((dst / "config.json").read_text())
    assert (config["head"]["n_groups"], config["head"]["final_n_groups"]) == (4, 8)
    config["head"]["final_n_groups"] = None
    (dst / "config.json").write_text(json.dumps(config))
    wrong = VLAPolicy.from_pretrained(dst).eval()
    expected = load_file(str(out / "expected.safetensors"))["actions"]
    assert (predict(wrong, out) - expected).abs().max().item() > 1e-3


@st.composite
def diffusion_cases(draw) -> dict[str, Any]:
    """A random combination of DiffusionConfig options and features."""
    n_obs = draw(st.integers(1, 3))
    levels = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 4, 8]))
    down_dims = [draw(st.sampled_from([8, 16, 24])) * (2**i) for i in range(levels)]
    horizon = (2**levels) * draw(st.integers(2, 3))  # >= n_obs_steps
    scheduler = draw(st.sampled_from(["DDPM", "DDIM"]))
    schedules = ["linear", "scaled_linear", "squaredcos_cap_v2"] + (["sigmoid"] if scheduler == "DDPM" else [])
    # LeRobot's shape probe runs BatchNorm in training mode: layer4 must give more than 1x1
    resize = draw(st.none() | st.sampled_from([[48, 56], [44, 52]]))
    cameras = draw(st.integers(1, 2))
    env = draw(st.none() | st.integers(1, 3))
    types = ["VISUAL", "STATE", "ACTION"] + (["ENV"] if env else [])
    modes = ["MEAN_STD", "MIN_MAX", "QUANTILES", "QUANTILE10", "IDENTITY", None]  # None: left out (raw)
    crop_random = draw(st.booleans())
    loss = draw(st.booleans())
    config = {
        "n_obs_steps": n_obs,
        "horizon": horizon,
        "n_action_steps": draw(st.integers(1, horizon - n_obs + 1)),
        "vision_backbone": draw(st.sampled_from(["resnet18", "resnet34"])),
        "resize_shape": resize,
        "crop_ratio": draw(st.sampled_from([1.0, 0.75])),
        "crop_shape": None if resize else draw(st.none() | st.just([32, 40])),
        # a random crop draws from the RNG before the loss's noise (one window per batch in LeRobot)
        "crop_is_random": crop_random and not loss,
        "use_group_norm": draw(st.booleans()),
        "spatial_softmax_num_keypoints": draw(st.integers(1, 8)),
        "use_separate_rgb_encoder_per_camera": draw(st.booleans()),
        "down_dims": down_dims,
        "kernel_size": draw(st.sampled_from([1, 3, 5])),
        "n_groups": groups,
        "diffusion_step_embed_dim": draw(st.sampled_from([4, 8, 16])),
        "use_film_scale_modulation": draw(st.booleans()),
        "noise_scheduler_type": scheduler,
        "num_train_timesteps": draw(st.integers(4, 12)),
        "beta_schedule": draw(st.sampled_from(schedules)),
        "prediction_type": draw(st.sampled_from(["epsilon", "sample"])),
        "clip_sample": draw(st.booleans()),
        "clip_sample_range": draw(st.sampled_from([0.5, 1.0, 3.0])),
        "do_mask_loss_for_padding": draw(st.booleans()),
        "normalization_mapping": {t: m for t in types if (m := draw(st.sampled_from(modes))) is not None},
    }
    config["num_inference_steps"] = draw(st.none() | st.integers(1, config["num_train_timesteps"]))
    return {
        "cameras": [[3, 40, 48]] * cameras,
        "state": draw(st.integers(1, 5)),
        "env_state": env,
        "action": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 1000)),
        "batch_size": draw(st.integers(1, 3)),
        "config": config,
        "loss": loss,
    }


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=diffusion_cases())
def test_random_option_combinations(peer, case, tmp_path):
    """A few random combinations of every option at once, written by the same peer process."""
    name = "combo-" + hashlib.sha1(json.dumps(case, sort_keys=True).encode()).hexdigest()[:12]
    peer.submit(name, case)
    shutil.rmtree(tmp_path / "vla", ignore_errors=True)  # tmp_path is shared by the examples
    run_case(peer, name, case, tmp_path)


# --------------------------------------------------------------------------------------------- refusals
def edited_copy(peer: PeerServer, tmp: Path, case: str = "defaults") -> Path:
    src = tmp / "edited"
    shutil.copytree(peer.result(case) / "policy", src)
    return src


def edit_json(path: Path, **changes: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    "changes, error, match",
    [
        ({"n_groups_v2": 4}, ConfigError, r"field\(s\) \['n_groups_v2'\] unknown to the diffusion converter"),
        ({"use_peft": True}, ConfigError, "use_peft"),
        ({"down_dims": [16, 64]}, CheckpointError, r"down_dims is \[16, 64\] but .* says \[16, 32\]"),
        ({"kernel_size": 3}, CheckpointError, "kernel_size is 3"),
        ({"diffusion_step_embed_dim": 32}, CheckpointError, "diffusion_step_embed_dim is 32"),
        ({"use_film_scale_modulation": False}, CheckpointError, "use_film_scale_modulation is False"),
        ({"spatial_softmax_num_keypoints": 4}, CheckpointError, "spatial_softmax_num_keypoints is 4"),
        ({"vision_backbone": "resnet34"}, CheckpointError, "vision_backbone is 'resnet34'"),
        ({"use_group_norm": True}, CheckpointError, "use_group_norm is True"),
        ({"use_separate_rgb_encoder_per_camera": False}, CheckpointError, "use_separate_rgb_encoder_per_camera"),
        ({"compile_model": True}, CheckpointError, r"compile_model is True .*_orig_mod"),
        ({"crop_ratio": 1.5}, ConfigError, "crop_ratio"),
        ({"normalization_mapping": {**DEFAULT_MAPPING, "STATE": "LOG"}}, ConfigError,
         r"normalization_mapping\['STATE'\]"),
        ({"output_features": {"action.joints": {"type": "ACTION", "shape": [2]}}}, ConfigError, "output_features"),
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


def test_group_norm_with_pretrained_weights_is_refused_as_lerobot_refuses_it(peer, tmp_path):
    src = edited_copy(peer, tmp_path, "use_group_norm")
    edit_json(src / "config.json", pretrained_backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="use_group_norm with pretrained_backbone_weights"):
        convert_lerobot(src, tmp_path / "out")


def test_state_feature_under_another_name_is_refused(peer, tmp_path):
    """LeRobot's diffusion policy reads the state from observation.state only: refused, not guessed."""
    src = edited_copy(peer, tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["input_features"] = {("observation.joints" if k == "observation.state" else k): v
                             for k, v in cfg["input_features"].items()}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"input_features\['observation.joints'\] \(type STATE\)"):
        convert_lerobot(src, tmp_path / "out")


def test_unexpected_tensors_and_processor_steps_are_refused_by_name(peer, tmp_path):
    src = edited_copy(peer, tmp_path)
    tensors = load_file(str(src / "model.safetensors"))
    save_file({**tensors, "diffusion.unet.extra_head.weight": torch.zeros(2, 2)}, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"does not understand: \['diffusion.unet.extra_head.weight'\]"):
        convert_lerobot(src, tmp_path / "out")
    save_file(tensors, str(src / "model.safetensors"))
    pre = src / "policy_preprocessor.json"
    steps = json.loads(pre.read_text())
    steps["steps"].insert(0, {"registry_name": "image_crop_processor", "config": {}})
    pre.write_text(json.dumps(steps))
    with pytest.raises(ConfigError, match="'image_crop_processor' is unknown to the diffusion converter"):
        convert_lerobot(src, tmp_path / "out")
