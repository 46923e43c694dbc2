"""ACT as a VLAPolicy: the ready config, overfitting a batch, action queue / temporal ensembling, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from vla_core import VLAPolicy

ROOT = Path(__file__).resolve().parents[1]
CAM = "observation.images.top"


def tiny_config(**overrides):
    cfg = {
        "input_features": {
            "observation.state": {"type": "STATE", "shape": [4]},
            CAM: {"type": "VISUAL", "shape": [3, 32, 32]},
        },
        "output_features": {"action": {"type": "ACTION", "shape": [3]}},
        "normalization": {"VISUAL": "mean_std"},
        "backbone": {"type": "resnet_act", "dim_model": 32},
        "head": {"type": "act_vae", "horizon": 6, "dim_model": 32, "n_heads": 4, "dim_feedforward": 64,
                 "n_encoder_layers": 2, "n_vae_encoder_layers": 2, "latent_dim": 8},
    }
    cfg.update(overrides)
    return cfg


def with_stats(policy: VLAPolicy) -> VLAPolicy:
    g = torch.Generator().manual_seed(0)
    policy.normalizer.set_stats({
        "observation.state": {"mean": torch.randn(4, generator=g), "std": torch.rand(4, generator=g) + 0.5},
        "action": {"mean": torch.randn(3, generator=g), "std": torch.rand(3, generator=g) + 0.5},
        CAM: {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)},
    })
    return policy


def tiny_batch(bsz=4, horizon=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.state": torch.randn(bsz, 4, generator=g),
        CAM: torch.rand(bsz, 3, 32, 32, generator=g),
        "action": torch.randn(bsz, horizon, 3, generator=g),
        "action_is_pad": torch.zeros(bsz, horizon, dtype=torch.bool),
    }


def test_ready_config_builds_the_aloha_act():
    cfg = yaml.safe_load((ROOT / "configs" / "act.yaml").read_text())
    assert set(cfg) == {"policy"}
    policy = VLAPolicy.from_config(cfg["policy"])
    head, backbone = policy.config.head, policy.config.backbone
    assert backbone["image_keys"] == [CAM] and head["state_dim"] == 14 and head["action_dim"] == 14
    assert head["context_dim"] == 512 and policy.head.horizon == 100 and policy.projector is None
    n_params = sum(p.numel() for p in policy.parameters())
    assert 51_000_000 < n_params < 52_000_000  # ACT with ResNet-18: ~51.6M
    policy.normalizer.set_stats({
        "observation.state": {"mean": torch.zeros(14), "std": torch.ones(14)},
        "action": {"mean": torch.zeros(14), "std": torch.ones(14)},
        CAM: {"mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
    })
    chunk = policy.eval().predict_action_chunk({"observation.state": torch.randn(1, 14), CAM: torch.rand(1, 3, 224, 224)})
    assert chunk.shape == (1, 100, 14) and torch.isfinite(chunk).all()


def test_tiny_act_overfits_a_fixed_batch():
    """Without the VAE (whose sampled latent adds noise to the target) the L1 loss drops > 10x in 60 steps."""
    torch.manual_seed(0)
    head = {**tiny_config()["head"], "dropout": 0.0, "use_vae": False}
    policy = with_stats(VLAPolicy(tiny_config(freeze_backbone=True, head=head)))
    batch = tiny_batch(2)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3)
    policy.train()
    losses = []
    for _ in range(60):
        loss = policy(batch).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] / 10, losses


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    policy = with_stats(VLAPolicy(tiny_config())).eval()
    batch = tiny_batch()
    loaded = VLAPolicy.from_pretrained(policy.save_pretrained(tmp_path / "act"))
    assert not loaded.training
    torch.testing.assert_close(loaded.predict_action_chunk(batch), policy.predict_action_chunk(batch), rtol=0, atol=0)


def test_cameras_of_different_resolutions(tmp_path):
    """A wide top camera and a small wrist camera: the policy passes ``image_shapes`` to the backbone,
    the head is sized for the summed token count, training and inference run, the saved config (and one
    written before ``image_shapes`` existed, with ``image_shape`` only) reloads to the same actions."""
    import json

    wrist = "observation.images.wrist"
    features = {**tiny_config()["input_features"], wrist: {"type": "VISUAL", "shape": [3, 48, 64]}}
    features[CAM] = {"type": "VISUAL", "shape": [3, 64, 96]}
    torch.manual_seed(0)
    policy = VLAPolicy(tiny_config(input_features=features))
    policy.normalizer.set_stats({
        "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)},
        "action": {"mean": torch.zeros(3), "std": torch.ones(3)},
        CAM: {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)},
        wrist: {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)},
    })
    backbone = policy.config.backbone
    assert backbone["image_keys"] == [CAM, wrist]
    assert backbone["image_shapes"] == [[3, 64, 96], [3, 48, 64]] and backbone["image_shape"] == [3, 64, 96]
    assert policy.context.num_tokens == 2 * 3 + 2 * 2
    g = torch.Generator().manual_seed(1)
    batch = {**tiny_batch(2), CAM: torch.rand(2, 3, 64, 96, generator=g), wrist: torch.rand(2, 3, 48, 64, generator=g)}
    loss = policy.train()(batch).loss
    loss.backward()
    assert torch.isfinite(loss) and policy.backbone.proj.weight.grad.abs().sum() > 0
    policy.eval()
    obs = {k: v for k, v in batch.items() if not k.startswith("action")}
    chunk = policy.predict_action_chunk(obs)
    assert chunk.shape == (2, 6, 3) and torch.isfinite(chunk).all()
    # the wrist camera matters: another wrist image, other actions
    other = policy.predict_action_chunk({**obs, wrist: torch.rand(2, 3, 48, 64, generator=g)})
    assert (other - chunk).abs().max() > 1e-4
    saved = policy.save_pretrained(tmp_path / "mixed")
    torch.testing.assert_close(VLAPolicy.from_pretrained(saved).predict_action_chunk(obs), chunk, rtol=0, atol=0)
    # a config saved before image_shapes existed (single-shape cameras, image_shape only) still loads
    torch.manual_seed(0)
    old = with_stats(VLAPolicy(tiny_config()))
    old_dir = old.save_pretrained(tmp_path / "old")
    cfg = json.loads((old_dir / "config.json").read_text())
    del cfg["backbone"]["image_shapes"]
    (old_dir / "config.json").write_text(json.dumps(cfg))
    reloaded = VLAPolicy.from_pretrained(old_dir)
    assert reloaded.config.backbone["image_shapes"] == [[3, 32, 32]]
    obs1 = {k: v for k, v in tiny_batch(2).items() if not k.startswith("action")}
    torch.testing.assert_close(reloaded.predict_action_chunk(obs1), old.eval().predict_action_chunk(obs1))


class _Scripted:
    """Stands in for predict_action_chunk: returns the chunks given, one per call."""

    def __init__(self, chunks):
        self.chunks, self.calls = list(chunks), 0

    def __call__(self, batch, **kw):
        self.calls += 1
        return self.chunks.pop(0)


def test_temporal_ensembling_matches_act_weights(monkeypatch):
    """coeff 0.01: the action for step t averages every chunk that covered t, weight exp(-0.01 i) with
    i = 0 for the OLDEST prediction (ACT's Algorithm 2 and LeRobot's ACTTemporalEnsembler)."""
    torch.manual_seed(0)
    policy = with_stats(VLAPolicy(tiny_config(n_action_steps=1, temporal_ensemble_coeff=0.01))).eval()
    horizon, steps = 6, 9
    chunks = [torch.randn(2, horizon, 3) for _ in range(steps)]
    monkeypatch.setattr(policy, "predict_action_chunk", _Scripted(chunks))
    obs = {k: v for k, v in tiny_batch(2).items() if not k.startswith("action")}
    for t in range(steps):
        got = policy.select_action(obs)
        preds = [chunks[s][:, t - s] for s in range(max(0, t - horizon + 1), t + 1)]  # oldest first
        w = torch.tensor([math.exp(-0.01 * i) for i in range(len(preds))])
        want = sum(wi * p for wi, p in zip(w / w.sum(), preds))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_action_queue_runs_n_action_steps_per_chunk(monkeypatch):
    torch.manual_seed(0)
    policy = with_stats(VLAPolicy(tiny_config(n_action_steps=4))).eval()
    chunks = [torch.randn(1, 6, 3) for _ in range(2)]
    scripted = _Scripted(chunks)
    monkeypatch.setattr(policy, "predict_action_chunk", scripted)
    obs = {k: v[:1] for k, v in tiny_batch(1).items() if not k.startswith("action")}
    expected = [chunks[0][:, i] for i in range(4)] + [chunks[1][:, i] for i in range(2)]
    got = [policy.select_action(obs) for _ in range(6)]
    assert scripted.calls == 2
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_bad_input_raises_clear_errors():
    policy = with_stats(VLAPolicy(tiny_config()))
    batch = tiny_batch()
    with pytest.raises(ValueError, match=f"missing batch key '{CAM}'"):
        policy({k: v for k, v in batch.items() if k != CAM})
    with pytest.raises(ValueError, match=r"observation.state.*\(B, 4\)"):
        policy({**batch, "observation.state": torch.randn(4, 5)})
    with pytest.raises(ValueError, match=r"action.*H<=6"):
        policy({**batch, "action": torch.randn(4, 7, 3), "action_is_pad": torch.zeros(4, 7, dtype=torch.bool)})


# ------------------------------------------------------------------ FSDP2, activation checkpointing, bf16
CONTRACT_FEATURES = {
    "observation.images.top": {"type": "VISUAL", "shape": [3, 32, 32]},
    "observation.images.wrist": {"type": "VISUAL", "shape": [3, 32, 32]},
    "observation.state": {"type": "STATE", "shape": [4]},
    "task": {"type": "LANGUAGE", "shape": []},
}


def contract_policy(workdir: Path) -> VLAPolicy:
    """The tiny ACT of the contract suite: both components' ``tiny_config``, two 32x32 cameras."""
    from vla_backbones.resnet_act import ResNetACTBackbone
    from vla_heads.act_vae import ACTVAEHead

    torch.manual_seed(0)
    policy = VLAPolicy({
        "input_features": CONTRACT_FEATURES,
        "output_features": {"action": {"type": "ACTION", "shape": [3]}},
        "backbone": {"type": "resnet_act", **ResNetACTBackbone.tiny_config(workdir)},
        "head": {"type": "act_vae", **ACTVAEHead.tiny_config(workdir)},
    })
    policy.normalizer.set_stats({
        "observation.state": {"mean": torch.zeros(4), "std": torch.ones(4)},
        "action": {"mean": torch.zeros(3), "std": torch.ones(3)},
    })
    return policy


def contract_batch(policy: VLAPolicy) -> dict:
    from vla_core.testing import random_batch

    return random_batch({**policy.input_features, **policy.output_features}, batch_size=2, horizon=policy.head.horizon)


def count_forward_calls(units: list[torch.nn.Module]) -> list[list[int]]:
    """Wrap each unit's original ``forward`` with a call counter (before checkpointing wraps it)."""
    counts = []
    for unit in units:
        count, original = [0], unit.forward

        def counted(*args, _count=count, _original=original, **kwargs):
            _count[0] += 1
            return _original(*args, **kwargs)

        unit.forward = counted
        counts.append(count)
    return counts


def test_one_training_step_under_fsdp2_and_activation_checkpointing(tmp_path):
    """A 1-rank gloo mesh: every unit (ResNet blocks, encoder / decoder layers) sharded with
    ``fully_shard``, then the root, activation checkpointing applied first as the trainer does. Each
    unit's own forward runs twice (forward, then the recomputation in backward); loss and gradients
    equal the unsharded policy's under the same seed (dropout included), and the step moves the weights."""
    import copy

    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from vla_train.parallelize import apply_activation_checkpointing, apply_fsdp2, build_mesh, unit_modules

    policy = contract_policy(tmp_path)
    batch = contract_batch(policy)
    reference = copy.deepcopy(policy).train()
    torch.manual_seed(1)
    ref_loss = reference(batch).loss
    ref_loss.backward()
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}

    units = unit_modules(policy)
    assert {type(u).__name__ for u in units} == {"BasicBlock", "EncoderLayer", "DecoderLayer"}
    assert len(units) == 8 + 1 + 1 + 1  # resnet18 blocks, encoder, VAE encoder and decoder layers
    counts = count_forward_calls(units)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert apply_activation_checkpointing(policy) == len(units)
        assert apply_fsdp2(policy, build_mesh(torch.device("cpu"), 1)) == len(units)
        assert all(isinstance(p, DTensor) for p in policy.parameters())
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
        before = {n: p.detach().full_tensor().clone() for n, p in policy.named_parameters()}
        policy.train()
        torch.manual_seed(1)
        loss = policy(batch).loss
        assert [c[0] for c in counts] == [1] * len(units)
        loss.backward()
        assert [c[0] for c in counts] == [2] * len(units), "a unit's forward was not recomputed in backward"
        torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-5, atol=1e-6)
        grads = {n: p.grad.full_tensor() for n, p in policy.named_parameters() if p.grad is not None}
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            assert torch.isfinite(grad).all(), name
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        opt.step()
        moved = [n for n, p in policy.named_parameters() if not torch.equal(p.detach().full_tensor(), before[n])]
        assert set(moved) == set(grads)
    finally:
        dist.destroy_process_group()


def test_one_training_step_under_cpu_bf16_autocast(tmp_path):
    """Convolutions, linear layers and attention run in bfloat16; loss and every gradient are finite."""
    policy = contract_policy(tmp_path).train()
    batch = contract_batch(policy)
    seen = []
    for module in (policy.backbone.resnet.layer1[0].conv1, policy.head.encoder.layers[0].linear1):
        module.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = policy(batch).loss
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)
    before = [p.detach().clone() for _, p in trainable]
    opt.step()
    assert all(not torch.equal(p, b) for (_, p), b in zip(trainable, before))
