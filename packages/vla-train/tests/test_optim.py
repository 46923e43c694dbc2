"""Optimizer param groups, per-component learning rates, the LR schedule and activation checkpointing."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from vla_core import ConfigError
from vla_train.config import OptimConfig, ScheduleConfig, TrainConfig
from vla_train.optim import build_optimizer, lr_factor, param_groups
from vla_train.parallelize import unit_modules
from vla_train.trainer import Trainer
from train_helpers import tiny_config


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_no_decay_on_norms_biases_embeddings_and_lr_scales():
    model = Toy()
    groups = param_groups(model, OptimConfig(lr=1e-3, weight_decay=0.1, lr_scales={"backbone": 0.1}))
    by_name = {n: g for g in groups for n in g["names"]}
    assert set(by_name) == {"backbone.0.weight", "backbone.1.weight", "backbone.1.bias", "backbone.2.weight",
                            "backbone.2.bias", "head.weight", "head.bias"}  # frozen params are left out
    assert by_name["backbone.1.weight"]["weight_decay"] == 0.1 and by_name["head.weight"]["weight_decay"] == 0.1
    for name in ("backbone.0.weight", "backbone.1.bias", "backbone.2.weight", "head.bias"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["backbone.1.weight"]["lr"] == pytest.approx(1e-4) and by_name["head.weight"]["lr"] == 1e-3
    groups = param_groups(model, OptimConfig(lr_scales={"backbone.1": 2.0, "backbone": 0.5}))  # longest prefix wins
    lr = {n: g["lr"] for g in groups for n in g["names"]}
    assert lr["backbone.1.weight"] == pytest.approx(2e-4) and lr["backbone.1.bias"] == pytest.approx(2e-4)
    assert lr["backbone.2.weight"] == pytest.approx(5e-5) and lr["head.weight"] == pytest.approx(1e-4)
    optimizer = build_optimizer(model, OptimConfig(lr_scales={"backbone.1": 2.0, "backbone": 0.5}))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 7
    with pytest.raises(ConfigError, match="'vision' is the prefix of no parameter"):
        param_groups(model, OptimConfig(lr_scales={"vision": 0.1}))


def test_cpu_optimizer_is_fused_and_steps_like_the_reference_adamw():
    torch.manual_seed(0)
    model, reference = Toy(), Toy()
    reference.load_state_dict(model.state_dict())
    config = OptimConfig(lr=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(model, config)
    assert optimizer.defaults["fused"] is True
    groups = param_groups(reference, config)
    for group in groups:
        group.pop("names")
    plain = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, foreach=False)
    for _ in range(3):
        for net, opt in ((model, optimizer), (reference, plain)):
            opt.zero_grad()
            net.head(net.backbone(torch.arange(5))).square().sum().backward()
            opt.step()
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


@given(st.integers(0, 200), st.integers(0, 50), st.floats(0, 1))
def test_schedule_warms_up_then_decays(step, warmup, min_ratio):
    total = 200
    cfg = ScheduleConfig(name="cosine", warmup_steps=warmup, min_lr_ratio=min_ratio)
    f = lr_factor(step, total_steps=total, config=cfg)
    if step < warmup:
        assert f == pytest.approx((step + 1) / warmup)
    else:
        progress = (step - warmup) / max(1, total - warmup)
        assert f == pytest.approx(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1, progress))))
        assert min_ratio - 1e-9 <= f <= 1 + 1e-9
    assert lr_factor(step, total_steps=total, config=ScheduleConfig(name="constant", warmup_steps=warmup)) == (
        pytest.approx((step + 1) / warmup) if step < warmup else 1.0)


def test_activation_checkpointing_keeps_names_and_results(tmp_path):
    plain = Trainer(TrainConfig.from_dict(tiny_config(tmp_path / "a")))
    ac = Trainer(TrainConfig.from_dict(tiny_config(tmp_path / "b", parallel={"activation_checkpointing": True})))
    assert len(unit_modules(ac.model)) == 1 and isinstance(ac.model.backbone.block.forward, functools.partial)
    assert [n for n, _ in plain.model.named_parameters()] == [n for n, _ in ac.model.named_parameters()]
    for _ in range(3):
        a, b = plain.train_step(), ac.train_step()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    for (name, p), q in zip(plain.model.named_parameters(), ac.model.parameters()):
        torch.testing.assert_close(p, q, msg=name)
