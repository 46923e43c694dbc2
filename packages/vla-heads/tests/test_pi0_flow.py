"""The ``pi0_flow`` head: flow conventions, block-causal suffix mask, K/V use, geometry checks, contract."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pi0_fixtures import TINY_HEAD
from vla_core import (
    HEADS,
    BackboneOutput,
    ConfigError,
    ContextSpec,
    KVGeometry,
    build_head,
)
from vla_core.gemma import GemmaDecoderLayer
from vla_core.testing import check_head
from vla_heads.pi0_flow import Pi0FlowHead
from vla_heads.pi0_flow.expert import attention_bias, suffix_allowed
from vla_heads.pi0_flow.flow import euler_sample, interpolate, sample_time, sinusoidal_time_embedding

P = 64  # prefix tokens


def tiny(**overrides) -> Pi0FlowHead:
    torch.manual_seed(0)
    return build_head({**TINY_HEAD, **overrides})


def context(b: int = 2, valid=(P, 30), depth: int = 2, kv_heads: int = 1, head_dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    kv = tuple(
        (torch.randn(b, kv_heads, P, head_dim, generator=g), torch.randn(b, kv_heads, P, head_dim, generator=g))
        for _ in range(depth)
    )
    mask = torch.arange(P)[None] < torch.tensor([valid[i % len(valid)] for i in range(b)])[:, None]
    return BackboneOutput(features=torch.zeros(b, P, 1), attention_mask=mask, past_key_values=kv)


def batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"observation.state": torch.randn(b, 4, generator=g), "action": torch.randn(b, 5, 3, generator=g),
            "action_is_pad": torch.zeros(b, 5, dtype=torch.bool)}


def test_registered_and_contract():
    assert HEADS.get("pi0_flow") is Pi0FlowHead
    head = tiny()
    check_head(head, context(), batch())
    assert head.fsdp_units() == {GemmaDecoderLayer}


def test_default_geometry_is_gemma_300m_and_pi0_flow_settings():
    c = Pi0FlowHead.config_class(action_dim=7, state_dim=8)
    assert (c.width, c.depth, c.mlp_dim, c.num_heads, c.num_kv_heads, c.head_dim) == (1024, 18, 4096, 8, 1, 256)
    assert (c.horizon, c.max_action_dim, c.num_inference_steps) == (50, 32, 10)
    assert (c.time_beta_alpha, c.time_beta_beta, c.time_scale, c.time_offset) == (1.5, 1.0, 0.999, 0.001)
    assert (c.min_period, c.max_period) == (4e-3, 4.0)


def test_flow_direction_is_openpi_t1_noise():
    action, noise = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    x1, u = interpolate(action, noise, torch.ones(2))
    x0, _ = interpolate(action, noise, torch.zeros(2))
    torch.testing.assert_close(x1, noise)
    torch.testing.assert_close(x0, action)
    torch.testing.assert_close(u, noise - action)
    # A perfect velocity field u = noise - action integrates from noise (t = 1) back to the action (t = 0).
    seen = []
    out = euler_sample(lambda x, t: seen.append(t[0].item()) or (noise - action), noise, 10)
    torch.testing.assert_close(out, action, rtol=1e-5, atol=1e-5)
    assert seen == pytest.approx([1.0 - i / 10 for i in range(10)])


def test_time_embedding_periods_and_beta_time_sampling():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = sinusoidal_time_embedding(t, 8, 4e-3, 4.0)
    periods = 4e-3 * (4.0 / 4e-3) ** torch.linspace(0, 1, 4, dtype=torch.float64)
    expected = torch.cat([torch.sin(2 * math.pi * t[:, None].double() / periods), torch.cos(2 * math.pi * t[:, None].double() / periods)], 1)
    torch.testing.assert_close(emb, expected.float())
    torch.manual_seed(0)
    s = sample_time(20000, torch.device("cpu"), alpha=1.5, beta=1.0, scale=0.999, offset=0.001)
    assert s.dtype == torch.float32 and s.min() >= 0.001 and s.max() <= 1.0
    assert s.mean().item() == pytest.approx(0.6 * 0.999 + 0.001, abs=0.01)  # Beta(1.5, 1) has mean 0.6


def _suffix_hidden(head, ctx, b, x_t, time):
    """The expert's final normed suffix states (B, 1 + H, D) for noisy actions x_t."""
    captured = {}
    hook = head.norm.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    try:
        head.velocity(x_t, time, head.fixed_inputs(b, torch.float32), head.prefix_kv(ctx), head.suffix_inputs(ctx))
    finally:
        hook.remove()
    return captured["out"]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_state_token_never_sees_the_actions(seed):
    head, ctx, b = tiny().eval(), context(), batch()
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(2, 5, 6, generator=g), torch.randn(2, 5, 6, generator=g)
    t = torch.rand(2, generator=g)
    with torch.no_grad():
        h1, h2 = _suffix_hidden(head, ctx, b, x1, t), _suffix_hidden(head, ctx, b, x2, t)
    torch.testing.assert_close(h1[:, 0], h2[:, 0], rtol=0, atol=0)
    assert (h1[:, 1:] - h2[:, 1:]).abs().max() > 1e-3


def test_padded_prefix_tokens_are_ignored():
    head, b = tiny().eval(), batch()
    ctx = context(valid=(30, 30))
    kv2 = tuple((k.clone(), v.clone()) for k, v in ctx.past_key_values)
    for k, v in kv2:
        k[:, :, 30:] += 5.0
        v[:, :, 30:] -= 5.0
    noise = torch.randn(2, 5, 3)
    with torch.no_grad():
        a = head.predict_action(ctx, b, noise=noise)
        c = head.predict_action(BackboneOutput(ctx.features, ctx.attention_mask, past_key_values=kv2), b, noise=noise)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_determinism_under_fixed_noise_and_generator():
    head, ctx, b = tiny().eval(), context(), batch()
    noise = torch.randn(2, 5, 3)
    with torch.no_grad():
        a, a2 = head.predict_action(ctx, b, noise=noise), head.predict_action(ctx, b, noise=noise.clone())
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        c, c2 = head.predict_action(ctx, b, generator=g1), head.predict_action(ctx, b, generator=g2)
        d = head.predict_action(ctx, b, noise=torch.randn(2, 5, 3))
    assert torch.equal(a, a2) and torch.equal(c, c2)
    assert not torch.allclose(a, d)
    # Given (B, H, A) noise is zero-padded to max_action_dim.
    full = torch.cat([noise, torch.zeros(2, 5, 3)], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(head.predict_action(ctx, b, noise=full), a)


def test_prefix_kv_are_left_unchanged():
    head, ctx, b = tiny().eval(), context(), batch()
    before = [(k.clone(), v.clone()) for k, v in ctx.past_key_values]
    with torch.no_grad():
        head.predict_action(ctx, b, noise=torch.randn(2, 5, 3))
    for (k, v), (k0, v0) in zip(ctx.past_key_values, before):
        assert torch.equal(k, k0) and torch.equal(v, v0)


def test_attention_bias_is_pi0_block_causal_over_prefix_and_suffix():
    mask = torch.tensor([[True, True, False], [True, True, True]])
    bias = attention_bias(mask, suffix_allowed(2), torch.float32)  # S = 1 + H = 3 queries over P + S = 6 keys
    assert bias.shape == (2, 1, 3, 6)
    allowed = bias[:, 0] == 0
    assert allowed[0, :, :3].tolist() == [[True, True, False]] * 3  # padded prefix tokens are never seen
    assert allowed[1, :, :3].all()
    assert allowed[0, :, 3:].tolist() == [[True, False, False], [True, True, True], [True, True, True]]
    assert torch.isfinite(bias).all()  # a finite mask value (openpi's)


def test_expert_layer_equals_softmax_attention_over_prefix_and_suffix():
    """SDPA with grouped K/V equals the explicit computation: one softmax over [prefix | suffix] keys."""
    head, ctx = tiny(), context()
    layer, (pk, pv) = head.layers[0], ctx.past_key_values[0]
    x = torch.randn(2, 6, 32)
    cos, sin, bias = head.suffix_inputs(ctx)
    with torch.no_grad():
        got = layer(x, cos, sin, bias, past_kv=(pk, pv))[0]
        attn, h = layer.self_attn, layer.input_layernorm(x)

        def rope(t):
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos[:, None] + torch.cat([-t2, t1], dim=-1) * sin[:, None]

        q, k, v = rope(attn.heads(attn.q_proj, h)), rope(attn.heads(attn.k_proj, h)), attn.heads(attn.v_proj, h)
        k, v = torch.cat([pk, k], 2).expand(-1, 8, -1, -1), torch.cat([pv, v], 2).expand(-1, 8, -1, -1)
        probs = ((q @ k.transpose(-1, -2)) * 8**-0.5 + bias).softmax(-1)
        want = x + attn.o_proj((probs @ v).transpose(1, 2).flatten(2))
        want = want + layer.mlp(layer.post_attention_layernorm(want))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_geometry_is_filled_from_the_context_and_contradictions_name_the_field():
    config = Pi0FlowHead.config_class.from_dict({k: v for k, v in TINY_HEAD.items() if k != "type"})
    assert Pi0FlowHead.context_needs(config).kv
    spec = ContextSpec(width=64, num_tokens=None, kv=KVGeometry(num_layers=2, num_kv_heads=1, head_dim=8))
    filled = Pi0FlowHead.configure_for(config, spec)
    assert (filled.prefix_num_layers, filled.prefix_num_kv_heads, filled.prefix_head_dim) == (2, 1, 8)
    with pytest.raises(ConfigError, match=r"head.prefix_head_dim: the backbone gives 16 but the head spec says 8"):
        Pi0FlowHead.configure_for(filled, ContextSpec(64, None, kv=KVGeometry(2, 1, 16)))
    with pytest.raises(ConfigError, match=r"head_dim: the backbone's prefix has 16 head dim"):
        Pi0FlowHead.configure_for(config, ContextSpec(64, None, kv=KVGeometry(2, 1, 16)))
    with pytest.raises(ConfigError, match="gives none"):
        Pi0FlowHead.configure_for(config, ContextSpec(64, None))


def test_loss_uses_real_action_dims_and_optionally_masks_padding():
    head, ctx, b = tiny(), context(), batch()
    noise, time = torch.randn(2, 5, 6), torch.tensor([0.3, 0.8])
    out = head.compute_loss(ctx, b, noise=noise, time=time)
    target = torch.nn.functional.pad(b["action"], (0, 3))
    x_t, u_t = interpolate(target, noise, time)
    with torch.no_grad():
        v_t = head.velocity(x_t, time, head.fixed_inputs(b, torch.float32), head.prefix_kv(ctx), head.suffix_inputs(ctx))
    torch.testing.assert_close(out.loss, (v_t - u_t)[..., :3].square().mean())
    masked_head = tiny(mask_padded_actions=True)
    pad = dict(b, action_is_pad=torch.tensor([[False] * 3 + [True] * 2] * 2))
    masked = masked_head.compute_loss(ctx, pad, noise=noise, time=time).loss
    torch.testing.assert_close(masked, (v_t - u_t)[:, :3, :3].square().mean())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"prefix_num_layers": 3}, r"depth: the backbone's prefix has 3 layers"),
     ({"prefix_num_kv_heads": 2}, r"num_kv_heads: the backbone's prefix has 2 K/V heads"),
     ({"prefix_head_dim": 16}, r"head_dim: the backbone's prefix has 16 head dim"),
     ({"state_dim": None}, "state_dim"), ({"max_action_dim": 2}, "max_action_dim")],
)
def test_config_geometry_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_head({**TINY_HEAD, **overrides})


@pytest.mark.parametrize(("kw", "match"), [({"depth": 3}, "K/V for 3 layers"), ({"head_dim": 4}, "head_dim")])
def test_runtime_geometry_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny().predict_action(context(**kw), batch())


def test_the_head_builds_and_runs_without_transformers():
    """The Gemma layers come from vla_core.gemma: building and sampling never import transformers."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import torch; from vla_core import build_head, BackboneOutput\n"
        "head = build_head({'type': 'pi0_flow', 'action_dim': 3, 'state_dim': 4, 'horizon': 4, 'max_action_dim': 6,"
        " 'max_state_dim': 6, 'width': 32, 'depth': 1, 'mlp_dim': 64, 'num_heads': 8, 'head_dim': 8})\n"
        "kv = ((torch.randn(2, 1, 5, 8), torch.randn(2, 1, 5, 8)),)\n"
        "ctx = BackboneOutput(torch.zeros(2, 5, 64), torch.ones(2, 5, dtype=torch.bool), past_key_values=kv)\n"
        "assert head.predict_action(ctx, {'observation.state': torch.randn(2, 4)}).shape == (2, 4, 3)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
