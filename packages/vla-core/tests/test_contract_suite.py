"""The contract suite itself: it passes a well-behaved pair and fails on each kind of break it exists to catch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import vla_test_components as tc
from vla_core import BACKBONES, HEADS, BackboneOutput, VLAPolicy
from vla_core.testing import (
    check_inference,
    check_policy_contract,
    check_sharded_training,
    policy_batch,
    set_random_stats,
)


def make(backbone: str = "test_linear", head: str = "test_mlp"):
    def build() -> VLAPolicy:
        torch.manual_seed(0)
        return VLAPolicy(tc.policy_config(backbone={"type": backbone, "dim": 8}, head={"type": head, "horizon": 4}))

    return build


@pytest.fixture
def registered():
    """Register test-only component classes for one test: ``registered(kind, name, cls)``."""
    added = []

    def add(registry, name, cls):
        registry.register(name)(cls)
        added.append((registry, name))
        return cls

    yield add
    for registry, name in added:
        registry.unregister(name)


def test_a_well_behaved_pair_passes_every_check(tmp_path):
    check_policy_contract(make(), tmp_path)


class ReadsUnitWeights(tc.LinearBackbone):
    """Breaks the rule: the parent reads a unit's weight outside the unit's forward (as the old
    resnet_act folded BatchNorm into its blocks' convolutions)."""

    def forward(self, batch):
        out = super().forward(batch)
        return type(out)(features=out.features + 0 * self.block.lin.weight.sum(), attention_mask=out.attention_mask)


class BypassesUnitCall(tc.LinearBackbone):
    """Breaks the rule: the unit's forward is called directly, so FSDP's and checkpointing's hooks never
    run (as the old resnet_act's run_block)."""

    def forward(self, batch):
        pooled = [F.adaptive_avg_pool2d(batch[k], self.config.pool).flatten(1) for k in self.config.image_keys]
        x = self.block.forward(torch.stack([self.image_proj(p) for p in pooled], dim=1))
        return BackboneOutput(features=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.bool))


@pytest.mark.parametrize("cls,message", [(ReadsUnitWeights, "DTensor"), (BypassesUnitCall, "DTensor|never called as modules")])
def test_sharded_training_catches_parameters_used_outside_their_unit(cls, message, registered):
    registered(BACKBONES, "broken_backbone", cls)
    build = make("broken_backbone")

    def make_with_stats():
        return set_random_stats(build())

    batch = policy_batch(make_with_stats())
    with pytest.raises((AssertionError, RuntimeError), match=message):
        check_sharded_training(make_with_stats, batch)


class NoisyHead(tc.MLPHead):
    """Breaks determinism: draws from the global RNG instead of the given noise / generator."""

    def predict_action(self, context, batch, *, noise=None, generator=None):
        return super().predict_action(context, batch) + torch.randn(1)


def test_inference_check_catches_an_irreproducible_head(registered):
    registered(HEADS, "noisy_head", NoisyHead)
    policy = set_random_stats(make(head="noisy_head")())
    with pytest.raises(AssertionError, match="not reproducible"):
        check_inference(policy, policy_batch(policy))
