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
