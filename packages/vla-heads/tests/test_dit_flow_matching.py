"""dit_flow_matching: shapes, embodiment selection, caching, time sampling, masked loss, contract suite."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import BackboneOutput, ConfigError, build_head
from vla_core.features import PolicyFeature
from vla_core.testing import check_head, random_batch
from vla_heads.dit_flow_matching import DiTFlowMatchingConfig, DiTFlowMatchingHead
from vla_heads.dit_flow_matching.embodiment import CategorySpecificLinear, EmbodimentSelect
from vla_heads.dit_flow_matching.flow import inference_buckets, interpolate, sample_time, time_buckets

CTX = 24


def tiny(**overrides) -> DiTFlowMatchingHead:
    fields = {
        "context_dim": CTX, "state_dim": 5, "action_dim": 3, "horizon": 4, "max_state_dim": 8, "max_action_dim": 6,
        "embodiments": {"arm": 0, "humanoid": 2}, "num_embodiments": None, "default_embodiment": "arm",
        "hidden_dim": 16, "num_future_tokens": 2, "num_layers": 4, "num_heads": 2, "head_dim": 8,
        "vl_self_attention_layers": 2, "vl_num_heads": 4, "max_seq_len": 8, **overrides,
    }
    torch.manual_seed(0)
    return DiTFlowMatchingHead(DiTFlowMatchingConfig(**fields))


def context(bsz: int, tokens: int = 6, seed: int = 0) -> BackboneOutput:
    g = torch.Generator().manual_seed(seed)
    return BackboneOutput(
        features=torch.randn(bsz, tokens, CTX, generator=g), attention_mask=torch.ones(bsz, tokens, dtype=torch.bool)
    )


def batch(bsz: int, seed: int = 0, **extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {
        "observation.state": torch.randn(bsz, 5, generator=g),
        "action": torch.randn(bsz, 4, 3, generator=g),
        "action_is_pad": torch.zeros(bsz, 4, dtype=torch.bool),
    }
    out.update(extra)
    return out


def test_registered_and_built_from_spec():
    head = build_head({"type": "dit_flow_matching", "context_dim": CTX, "action_dim": 2, "state_dim": 3,
                       "num_layers": 2, "num_heads": 2, "head_dim": 4, "vl_self_attention_layers": 1,
                       "vl_num_heads": 2, "hidden_dim": 8})
    assert isinstance(head, DiTFlowMatchingHead)
    assert head.horizon == 16 and head.action_dim == 2
    # N1.5 defaults: 32 embodiment rows, padded dims 64 / 32
    assert head.action_encoder.w1.weight.shape == (32, 32, 8)
    assert head.state_encoder.layer1.weight.shape == (32, 64, 8)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="action_dim"):
        DiTFlowMatchingConfig(context_dim=8, action_dim=40, max_action_dim=32)
    with pytest.raises(ConfigError, match="default_embodiment"):
        DiTFlowMatchingConfig(context_dim=8, action_dim=2, default_embodiment="nope")
    with pytest.raises(ConfigError, match="embodiments"):
        DiTFlowMatchingConfig(context_dim=8, action_dim=2, embodiments={"a": 40}, default_embodiment="a")
    with pytest.raises(ConfigError, match="vl_num_heads"):
        DiTFlowMatchingConfig(context_dim=30, action_dim=2, vl_num_heads=4)


def test_contract_suite():
    head = tiny()
    features = {"observation.state": PolicyFeature("STATE", (5,)), "action": PolicyFeature("ACTION", (3,))}
    b = random_batch(features, batch_size=2, horizon=4)
    check_head(head, context(2), b)


@settings(max_examples=8, deadline=None)
@given(bsz=st.integers(1, 3), tokens=st.integers(1, 9), ids=st.lists(st.sampled_from([0, 2]), min_size=3, max_size=3))
def test_shapes_and_embodiment_selection(bsz, tokens, ids):
    head = tiny().eval()
    emb = torch.tensor(ids[:bsz])
    ctx, b = context(bsz, tokens), batch(bsz, embodiment_id=emb)
    noise = torch.randn(bsz, 4, 3, generator=torch.Generator().manual_seed(1))
    out = head.predict_action(ctx, b, noise=noise)
    assert out.shape == (bsz, 4, 3)
    # each sample equals running it alone with its own embodiment (rows are selected per sample)
    for i in range(bsz):
        one = {k: v[i : i + 1] for k, v in b.items()}
        ctx_i = BackboneOutput(features=ctx.features[i : i + 1], attention_mask=ctx.attention_mask[i : i + 1])
        torch.testing.assert_close(head.predict_action(ctx_i, one, noise=noise[i : i + 1]), out[i : i + 1],
                                   atol=1e-5, rtol=1e-4)


def test_embodiment_rows_matter_and_default_is_used():
    head = tiny().eval()
    ctx, noise = context(2), torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    arm = head.predict_action(ctx, batch(2, embodiment_id=torch.tensor([0, 0])), noise=noise)
    hum = head.predict_action(ctx, batch(2, embodiment_id=torch.tensor([2, 2])), noise=noise)
    default = head.predict_action(ctx, batch(2), noise=noise)
    torch.testing.assert_close(default, arm)
    assert (arm - hum).abs().max() > 1e-3


def test_single_and_gathered_category_linear_agree():
    lin = CategorySpecificLinear(3, 4, 5)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(2, 7, 4)
    ids = torch.tensor([1, 1])
    fast = lin(x, EmbodimentSelect.of(ids))
    slow = lin(x, EmbodimentSelect(ids, None))
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(fast[0], x[0] @ lin.weight[1] + lin.bias[1])


@pytest.mark.parametrize("mixed", [False, True])
def test_cached_and_uncached_inference_are_equal(mixed):
    head = tiny(mask_context=True).eval()
    ctx = context(2, tokens=5)
    ctx.attention_mask[0, :2] = False
    emb = torch.tensor([0, 2]) if mixed else torch.tensor([2, 2])
    noise = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(2))
    a = head.predict_action(ctx, batch(2, embodiment_id=emb), noise=noise, use_cache=True)
    b = head.predict_action(ctx, batch(2, embodiment_id=emb), noise=noise, use_cache=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_mask_context_ignores_padded_tokens():
    head = tiny(mask_context=True).eval()
    ctx = context(1, tokens=5)
    ctx.attention_mask[0, :2] = False
    other = BackboneOutput(features=ctx.features.clone(), attention_mask=ctx.attention_mask)
    other.features[0, :2] = 100.0  # garbage in the padded positions
    noise = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(head.predict_action(ctx, batch(1), noise=noise),
                               head.predict_action(other, batch(1), noise=noise))
    # N1.5 default: no masking, so padded tokens do change the result
    plain = tiny().eval()
    assert (plain.predict_action(ctx, batch(1), noise=noise) - plain.predict_action(other, batch(1), noise=noise)
            ).abs().max() > 1e-4


def test_noise_for_real_dims_only_is_reproducible():
    head = tiny().eval()
    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(2))
    a = head.predict_action(context(2), batch(2), noise=noise)
    b = head.predict_action(context(2), batch(2), noise=noise)
    torch.testing.assert_close(a, b)


def test_time_sampling_matches_beta_1_5_1():
    torch.manual_seed(0)
    n = 200_000
    t = sample_time(n, alpha=1.5, beta=1.0, s=0.999)
    u = (0.999 - t * 0.999)  # back to the Beta variable
    # Beta(1.5, 1): mean 0.6, variance 1.5 / (2.5^2 * 3.5) = 0.0686, CDF u^1.5
    assert abs(u.mean().item() - 0.6) < 0.005
    assert abs(u.var().item() - 1.5 / (2.5**2 * 3.5)) < 0.002
    for q in (0.1, 0.5, 0.9):
        assert abs((u <= q).float().mean().item() - q**1.5) < 0.005
    assert t.min() >= 1 - 1 / 0.999 - 1e-6 and t.max() <= 1.0
    # GR00T leans toward t = 0 (noise): P(t < 0.5) = 1 - 0.5^1.5 ~ 0.646 (approximately, s ~ 1)
    assert abs((t < 0.5).float().mean().item() - (1 - 0.5005**1.5)) < 0.01


def test_time_convention_and_buckets():
    noise, action = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    x0, v = interpolate(noise, action, torch.tensor([0.0]))
    x1, _ = interpolate(noise, action, torch.tensor([1.0]))
    assert torch.equal(x0, noise) and torch.equal(x1, action) and torch.equal(v, action - noise)
    assert inference_buckets(4, 1000) == [0, 250, 500, 750]
    assert time_buckets(torch.tensor([-0.0005, 0.4379, 0.999]), 1000).tolist() == [0, 437, 999]


def test_masked_loss_ignores_padded_dims_and_steps():
    head = tiny(dropout=0.0)
    ctx, b = context(2), batch(2)
    b["action_is_pad"][1, 2:] = True
    torch.manual_seed(3)
    base = head(ctx, b).loss
    changed = dict(b)
    changed["action"] = b["action"].clone()
    changed["action"][1, 2:] += 50.0  # padded steps: ignored
    torch.manual_seed(3)
    assert torch.allclose(head(ctx, changed).loss, base)
    changed["action"][0, 0, 0] += 1.0  # a real entry: counts
    torch.manual_seed(3)
    assert not torch.allclose(head(ctx, changed).loss, base)


def test_loss_is_mean_over_real_entries():
    """With an identity-like check: loss equals the mean squared velocity error over unmasked entries."""
    head = tiny(dropout=0.0)
    ctx, b = context(2), batch(2)
    b["action_is_pad"][0, 3] = True
    torch.manual_seed(4)
    loss = head(ctx, b).loss
    torch.manual_seed(4)
    act = torch.nn.functional.pad(b["action"], (0, 3))
    noise = torch.randn(act.shape)
    t = sample_time(2, alpha=1.5, beta=1.0, s=0.999)
    x_t, target = interpolate(noise, act, t)
    pred = head.predict_velocity(ctx, b, x_t, time_buckets(t, 1000))
    err = (pred - target)[..., :3].square()
    keep = ~b["action_is_pad"]
    assert math.isclose(loss.item(), err[keep].mean().item(), rel_tol=1e-5)
