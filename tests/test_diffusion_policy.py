"""Diffusion policy end to end: the PushT config builds, a tiny policy overfits, saves and reloads."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from vla_core import VLAPolicy
from vla_core.testing import random_batch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "diffusion_pusht.yaml"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than a contended pool (and makes timings stable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**head):
    return {
        "input_features": {
            "observation.state": {"type": "STATE", "shape": [2]},
            "observation.images.top": {"type": "VISUAL", "shape": [3, 24, 24]},
            "observation.images.wrist": {"type": "VISUAL", "shape": [3, 24, 24]},
        },
        "output_features": {"action": {"type": "ACTION", "shape": [2]}},
        "normalization": {"VISUAL": "mean_std", "STATE": "min_max", "ACTION": "min_max"},
        "n_obs_steps": 2,
        "n_action_steps": 4,
        "action_start": 1,
        "backbone": {"type": "resnet_spatial_softmax", "crop_shape": [20, 20], "num_keypoints": 4},
        "head": {
            "type": "unet_diffusion",
            "horizon": 8,
            "down_dims": [16, 32],
            "n_groups": 4,
            "diffusion_step_embed_dim": 16,
            "num_train_timesteps": 20,
            **head,
        },
    }


def with_stats(policy: VLAPolicy) -> VLAPolicy:
    policy.normalizer.set_stats(
        {
            "observation.state": {"min": -torch.ones(2), "max": torch.ones(2)},
            "observation.images.top": {
                "mean": torch.full((3, 1, 1), 0.5),
                "std": torch.full((3, 1, 1), 0.25),
            },
            "observation.images.wrist": {
                "mean": torch.full((3, 1, 1), 0.5),
                "std": torch.full((3, 1, 1), 0.25),
            },
            "action": {"min": -2 * torch.ones(2), "max": 2 * torch.ones(2)},
        }
    )
    return policy


def test_pusht_config_builds_the_reference_architecture():
    cfg = yaml.safe_load(CONFIG.read_text())
    policy = VLAPolicy.from_config(cfg["policy"])
    head, backbone = policy.head, policy.backbone
    assert head.config.global_cond_dim == 2 * (2 + 64) and head.horizon == 16 and policy.n_action_steps == 8
    assert head.unet.encoder[2].res2.conv2.conv.weight.shape == (2048, 2048, 5)
    assert head.unet.encoder[0].res1.film.weight.shape == (
        1024,
        128 + 132,
    )  # cond_dim 260, as LeRobot's pusht
    assert backbone.output_dim == 64 and backbone.encoders[0].pool.pos_grid.shape == (9, 2)  # 84 crop -> 3x3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert policy.training_defaults["ema"] is True
    n_unet = sum(p.numel() for p in head.parameters())
    assert 250e6 < n_unet < 253e6  # LeRobot's pusht UNet: 251.5M parameters


def test_tiny_policy_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny_config(prediction_type="sample")
    cfg["backbone"] = {**cfg["backbone"], "crop_shape": None}
    cfg["freeze_backbone"] = True  # seconds on CPU: the (random, frozen) ResNet only runs forward
    policy = with_stats(VLAPolicy.from_config(cfg))
    batch = random_batch(
        policy.input_features | policy.output_features, batch_size=2, horizon=8, n_obs_steps=2
    )
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(60):
        loss = policy(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5


def test_save_reload_and_select_action(tmp_path):
    torch.manual_seed(0)
    policy = with_stats(
        VLAPolicy.from_config(tiny_config(noise_scheduler_type="DDIM", num_inference_steps=4))
    ).eval()
    obs = random_batch(policy.input_features, batch_size=2, n_obs_steps=2)
    noise = torch.randn(2, 8, 2)
    chunk = policy.predict_action_chunk(obs, noise=noise)
    assert chunk.shape == (2, 8, 2)
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p")).eval()
    torch.testing.assert_close(loaded.predict_action_chunk(obs, noise=noise), chunk)
    # select_action stacks single observations (the first one repeated) and executes from action_start
    single = {k: v[:, -1] for k, v in obs.items()}
    first = policy.select_action(single)
    repeated = {k: v[:, None].expand(-1, 2, *v.shape[1:]) for k, v in single.items()}
    policy.reset()
    torch.manual_seed(5)
    a = policy.select_action(single)
    torch.manual_seed(5)
    want = policy.predict_action_chunk(repeated)[:, 1]
    torch.testing.assert_close(a, want)
    assert first.shape == (2, 2)
    for _ in range(3):
        policy.select_action(single)
    assert policy.queued_actions == 0


def test_ema_head_of_a_policy_samples():
    torch.manual_seed(0)
    policy = with_stats(
        VLAPolicy.from_config(tiny_config(noise_scheduler_type="DDIM", num_inference_steps=2))
    )
    ema = copy.deepcopy(policy).eval()
    obs = random_batch(policy.input_features, batch_size=1, n_obs_steps=2)
    assert torch.isfinite(ema.predict_action_chunk(obs)).all()


@pytest.mark.parametrize("separate", [False, True])
def test_cameras_share_or_own_an_encoder(separate):
    cfg = tiny_config()
    cfg["backbone"] = {**cfg["backbone"], "separate_encoder_per_camera": separate}
    policy = VLAPolicy.from_config(cfg)
    assert len(policy.backbone.encoders) == (2 if separate else 1)
    assert policy.head.config.global_cond_dim == 2 * (2 + 2 * 8)
