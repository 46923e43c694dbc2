"""Diffusion policy end to end: the PushT config builds, a tiny policy overfits, saves and reloads, and
trains under FSDP2 + activation checkpointing and under CPU bf16 autocast."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
from vla_backbones.resnet_spatial_softmax import SpatialSoftmaxBackbone
from vla_core import VLAPolicy
from vla_core.testing import random_batch
from vla_heads.unet_diffusion import UNetDiffusionHead
from vla_heads.unet_diffusion.layers import ResidualBlock1d
from vla_test_components import set_unit_stats
from vla_train.parallelize import apply_activation_checkpointing, unit_modules

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


# ----------------------------------------------------------------------------- tiny configs, FSDP2, AC, bf16
STANDARD_FEATURES = {  # the contract suite's features
    "input_features": {
        "observation.images.top": {"type": "VISUAL", "shape": [3, 32, 32]},
        "observation.images.wrist": {"type": "VISUAL", "shape": [3, 32, 32]},
        "observation.state": {"type": "STATE", "shape": [4]},
        "task": {"type": "LANGUAGE", "shape": []},
    },
    "output_features": {"action": {"type": "ACTION", "shape": [3]}},
    "n_obs_steps": 1,
}


def tiny_policy(workdir: Path, backbone: str = "resnet_spatial_softmax", **head) -> VLAPolicy:
    """The tiny_config() components on the standard features, with unit stats."""
    spec = {"type": backbone}
    if backbone == "resnet_spatial_softmax":
        spec |= SpatialSoftmaxBackbone.tiny_config(workdir)
    head_spec = {"type": "unet_diffusion", **UNetDiffusionHead.tiny_config(workdir), **head}
    return set_unit_stats(VLAPolicy({**STANDARD_FEATURES, "backbone": spec, "head": head_spec}))


def standard_batch(policy: VLAPolicy, seed: int = 0) -> dict:
    return random_batch(
        policy.input_features | policy.output_features,
        batch_size=2,
        horizon=policy.head.horizon,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("backbone", ["resnet_spatial_softmax", "test_linear"])
def test_tiny_configs_work_with_the_standard_features(tmp_path, backbone):
    """The head's tiny config pools the context by its mean, so a backbone with a token count other than
    one per camera (test_linear: cameras + state) works too."""
    torch.manual_seed(0)
    policy = tiny_policy(tmp_path, backbone)
    batch = standard_batch(policy)
    tokens = policy.encode(policy.normalizer.normalize_batch(batch)).features.shape[1]
    assert tokens == (2 if backbone == "resnet_spatial_softmax" else 3)
    loss = policy(batch).loss
    loss.backward()
    head_grads = [p.grad for p in policy.head.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in head_grads)
    policy.eval()
    noise = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(1))
    a = policy.predict_action_chunk(batch, noise=noise, generator=torch.Generator().manual_seed(2))
    b = policy.predict_action_chunk(batch, noise=noise, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 8, 3) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def _count_calls(module: torch.nn.Module, counts: dict) -> None:
    original = module.forward

    @functools.wraps(original)
    def counted(*args, **kwargs):
        counts[module] = counts.get(module, 0) + 1
        return original(*args, **kwargs)

    module.forward = counted


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def test_fsdp2_with_activation_checkpointing_matches_the_plain_policy(tmp_path):
    """One training step with every unit checkpointed and fully_shard-ed (then the root) on a 1-rank
    gloo group: each unit's forward runs twice (forward + recompute), loss and gradients equal the plain
    policy's; sampling works on the sharded policy (FiLM table through the blocks' registered method)."""
    torch.manual_seed(0)
    policy = tiny_policy(tmp_path, noise_scheduler_type="DDPM")
    plain = copy.deepcopy(policy)
    batch = standard_batch(policy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (1,))
        units = unit_modules(policy)
        kinds = {type(m).__name__ for m in units}
        assert kinds == {"RgbEncoder", "ResidualBlock1d"} and len(units) == 1 + 8
        counts: dict = {}
        for module in units:
            _count_calls(module, counts)
        assert apply_activation_checkpointing(policy) == len(units)
        for module in units:
            fully_shard(module, mesh=mesh)
        fully_shard(policy, mesh=mesh, reshard_after_forward=False)
        for block in policy.modules():
            if isinstance(block, ResidualBlock1d):
                for name in block.fsdp_forward_methods:
                    register_fsdp_forward_method(block, name)
        register_fsdp_forward_method(policy, "predict_action_chunk")

        torch.manual_seed(1)
        loss = policy(batch).loss
        assert all(counts.get(m) == 1 for m in units)
        loss.backward()
        assert all(counts[m] == 2 for m in units), "a checkpointed unit was not recomputed in backward"
        torch.manual_seed(1)
        want = plain(batch).loss
        want.backward()
        torch.testing.assert_close(loss, want)
        for (name, p), q in zip(policy.named_parameters(), plain.parameters()):
            assert p.grad is not None and torch.isfinite(_full(p.grad)).all(), name
            torch.testing.assert_close(_full(p.grad), q.grad, atol=1e-6, rtol=1e-5, msg=name)
        torch.optim.SGD(policy.parameters(), lr=0.1).step()

        policy.eval()
        plain.eval()
        with torch.no_grad():
            for p, q in zip(policy.parameters(), plain.parameters()):
                q.sub_(0.1 * q.grad)
        noise = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(3))
        got = policy.predict_action_chunk(batch, noise=noise, generator=torch.Generator().manual_seed(4))
        ref = plain.predict_action_chunk(batch, noise=noise, generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        policy.train()  # and training goes on after sampling
        policy(batch).loss.backward()
    finally:
        dist.destroy_process_group()


def test_one_training_step_under_cpu_bf16_autocast(tmp_path):
    torch.manual_seed(0)
    policy = tiny_policy(tmp_path)
    batch = standard_batch(policy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = policy(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    torch.optim.AdamW(policy.parameters(), lr=1e-3).step()
    policy.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunk = policy.predict_action_chunk(batch, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (2, 8, 3) and torch.isfinite(chunk).all()
