"""act_vae: contract, shapes with/without VAE, padding ignored, KL, config validation, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import HEADS, BackboneOutput, ConfigError
from vla_core.testing import check_head
from vla_heads.act_vae import ACTVAEConfig, ACTVAEHead
from vla_heads.act_vae.transformer import sine_table_1d

TINY = {"dim_model": 16, "n_heads": 2, "dim_feedforward": 24, "n_encoder_layers": 2, "n_vae_encoder_layers": 2,
        "latent_dim": 4}


def head(**kw) -> ACTVAEHead:
    torch.manual_seed(0)
    spec = {"type": "act_vae", "action_dim": 3, "horizon": 5, "state_dim": 4, **TINY, **kw}
    return HEADS.build(spec)


def inputs(h: ACTVAEHead, bsz=2, tokens=6, seed=0, env=False):
    g = torch.Generator().manual_seed(seed)
    d = h.config.dim_model
    ctx = BackboneOutput(
        features=torch.randn(bsz, tokens, d, generator=g),
        attention_mask=torch.ones(bsz, tokens, dtype=torch.bool),
        pos_embed=torch.randn(1, tokens, d, generator=g),
    )
    batch = {
        "observation.state": torch.randn(bsz, h.config.state_dim or 1, generator=g),
        "action": torch.randn(bsz, h.horizon, h.action_dim, generator=g),
        "action_is_pad": torch.zeros(bsz, h.horizon, dtype=torch.bool),
    }
    if env:
        batch["observation.environment_state"] = torch.randn(bsz, h.config.env_state_dim, generator=g)
    return ctx, batch


@pytest.mark.parametrize("kw", [{}, {"use_vae": False}, {"pre_norm": True}, {"env_state_dim": 2},
                                {"state_dim": None}, {"n_decoder_layers": 2, "activation": "gelu"}])
def test_contract(kw):
    h = head(**kw)
    ctx, batch = inputs(h, env="env_state_dim" in kw)
    check_head(h, ctx, batch)
    h.eval()
    with torch.no_grad():
        assert h.predict_action(ctx, batch).shape == (2, 5, 3)


def test_defaults_are_act():
    c = ACTVAEConfig(action_dim=14)
    assert (c.horizon, c.dim_model, c.n_heads, c.dim_feedforward, c.n_encoder_layers, c.n_decoder_layers) == (
        100, 512, 8, 3200, 4, 1)
    assert (c.n_vae_encoder_layers, c.latent_dim, c.dropout, c.kl_weight, c.pre_norm, c.activation, c.use_vae) == (
        4, 32, 0.1, 10.0, False, "relu", True)


def test_kl_is_zero_without_vae_and_positive_with_it():
    h = head(use_vae=False)
    ctx, batch = inputs(h)
    out = h(ctx, batch)
    assert out.metrics["kl"].item() == 0.0
    torch.testing.assert_close(out.loss, out.metrics["l1"])
    assert not hasattr(h, "vae_encoder")
    hv = head(kl_weight=3.0)
    out = hv(*inputs(hv))
    assert out.metrics["kl"].item() > 0
    torch.testing.assert_close(out.loss, out.metrics["l1"] + 3.0 * out.metrics["kl"])


@pytest.mark.parametrize("use_vae", [True, False])
def test_padded_steps_do_not_change_the_loss(use_vae):
    h = head(use_vae=use_vae, dropout=0.0)
    ctx, batch = inputs(h)
    batch["action_is_pad"][0, 3:] = True
    batch["action_is_pad"][1, 1:] = True
    torch.manual_seed(1)
    ref = h(ctx, batch)
    perturbed = dict(batch, action=batch["action"].clone())
    perturbed["action"][batch["action_is_pad"]] += 100.0
    torch.manual_seed(1)
    out = h(ctx, perturbed)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    # while a valid step does change it
    perturbed["action"][0, 0] += 1.0
    torch.manual_seed(1)
    assert not torch.allclose(h(ctx, perturbed).loss, ref.loss)


def test_l1_averages_over_valid_steps_only():
    h = head(use_vae=False, dropout=0.0).eval()
    ctx, batch = inputs(h)
    batch["action_is_pad"][:, 2:] = True
    with torch.no_grad():
        pred = h.predict_action(ctx, batch)
        out = h(ctx, batch)
    expected = (pred - batch["action"])[:, :2].abs().mean()
    torch.testing.assert_close(out.metrics["l1"], expected)


def test_short_chunk_is_padded_and_long_chunk_rejected():
    h = head(use_vae=True, dropout=0.0)
    ctx, batch = inputs(h)
    batch["action_is_pad"][:, 3:] = True
    torch.manual_seed(2)
    ref = h(ctx, batch).loss
    short = {**batch, "action": batch["action"][:, :3], "action_is_pad": batch["action_is_pad"][:, :3]}
    torch.manual_seed(2)
    torch.testing.assert_close(h(ctx, short).loss, ref)
    long = {**batch, "action": torch.randn(2, 6, 3), "action_is_pad": torch.zeros(2, 6, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"H<=5"):
        h(ctx, long)


def test_bad_inputs_raise_clear_errors():
    h = head()
    ctx, batch = inputs(h)
    with pytest.raises(ValueError, match=r"observation.state.*expected shape \(B, 4\)"):
        h(ctx, {**batch, "observation.state": torch.randn(2, 7)})
    with pytest.raises(ValueError, match="missing batch key 'observation.state'"):
        h.predict_action(ctx, {k: v for k, v in batch.items() if k != "observation.state"})
    with pytest.raises(ValueError, match="missing batch key 'action'"):
        h(ctx, {"observation.state": batch["observation.state"]})
    bad_ctx = BackboneOutput(features=torch.randn(2, 6, 8), attention_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="dim_model 16"):
        h.predict_action(bad_ctx, batch)


@pytest.mark.parametrize(
    "kw, field",
    [({"n_heads": 3}, "n_heads"), ({"activation": "glu"}, "activation"), ({"context_dim": 8}, "context_dim"),
     ({"n_obs_steps": 2}, "n_obs_steps"), ({"horizon": 0}, "horizon"), ({"dropout": 1.0}, "dropout"),
     ({"kl_weight": -1.0}, "kl_weight"), ({"n_vae_encoder_layers": 0}, "n_vae_encoder_layers")],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ConfigError, match=field):
        ACTVAEConfig.from_dict({"action_dim": 3, **TINY, **kw})


def test_inference_is_deterministic_and_ignores_noise():
    h = head().eval()
    ctx, batch = inputs(h)
    with torch.no_grad():
        a = h.predict_action(ctx, batch, noise=torch.randn(2, 5, 3))
        b = h.predict_action(ctx, batch)
    torch.testing.assert_close(a, b)


def test_masked_context_tokens_are_ignored():
    h = head().eval()
    ctx, batch = inputs(h)
    mask = ctx.attention_mask.clone()
    mask[:, -2:] = False
    masked = BackboneOutput(features=ctx.features, attention_mask=mask, pos_embed=ctx.pos_embed)
    changed = ctx.features.clone()
    changed[:, -2:] += 50.0
    masked2 = BackboneOutput(features=changed, attention_mask=mask, pos_embed=ctx.pos_embed)
    with torch.no_grad():
        torch.testing.assert_close(h.predict_action(masked, batch), h.predict_action(masked2, batch))


@pytest.mark.parametrize("training", [False, True])
def test_first_layer_shortcut_equals_full_attention(training):
    """Decoder layer 0 sees constant (zero) queries: its shortcut equals real attention over them,
    in training too, where attention dropout (same seed, same masks) makes the weights matter."""
    h = head(n_decoder_layers=2, dropout=0.3).train(training)
    layer = h.decoder.layers[0]
    with torch.no_grad():  # non-zero biases, so the value rows (the biases' projection) are not zero
        layer.self_attn.in_proj_bias.normal_()
        layer.self_attn.out_proj.bias.normal_()
    x = torch.zeros(3, 5, 16)
    pos = h.query_pos_embed.weight[None]
    torch.manual_seed(7)
    fast = layer._self_attention(x, pos, constant=True)
    torch.manual_seed(7)
    full = layer.self_attn(x + pos, x + pos, x)
    assert full.abs().max() > 0.1
    torch.testing.assert_close(fast, full.expand_as(fast), rtol=1e-5, atol=1e-6)
    if training:  # and the gradients reach the same parameters with the same values
        params = [layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias, layer.self_attn.out_proj.weight]
        g_fast = torch.autograd.grad(fast.square().sum(), params)
        g_full = torch.autograd.grad(full.square().sum(), params)
        for a, b in zip(g_fast, g_full, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_attention_equals_sdpa_when_nothing_is_dropped(monkeypatch):
    """The CPU training path (explicit softmax + vla_heads.dropout) is SDPA's math, masks included."""
    from vla_heads import dropout as dropout_module

    h = head(dropout=0.2)
    attn = h.encoder.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    q, kv = torch.randn(2, 4, 16, generator=g), torch.randn(2, 6, 16, generator=g)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    monkeypatch.setattr(dropout_module, "keep_mask", lambda shape, p, device="cpu": torch.ones(shape, dtype=torch.bool))
    kept_all = attn.train()(q, kv, kv, mask)
    reference = attn.eval()(q, kv, kv, mask)  # SDPA, no dropout
    # every weight kept and scaled by 1 / (1 - p): the value mix is scaled before the output projection
    bias = attn.out_proj.bias
    torch.testing.assert_close(kept_all - bias, (reference - bias) / 0.8, rtol=1e-5, atol=1e-5)


def test_vae_pos_table_is_the_act_sinusoid():
    table = sine_table_1d(7, 8)
    for pos in range(7):
        for j in range(8):
            angle = pos / 10000 ** (2 * (j // 2) / 8)
            want = torch.sin(torch.tensor(angle)) if j % 2 == 0 else torch.cos(torch.tensor(angle))
            assert abs(table[pos, j].item() - want.item()) < 1e-6


@settings(max_examples=10, deadline=None)
@given(
    action_dim=st.integers(1, 6), state_dim=st.one_of(st.none(), st.integers(1, 5)), horizon=st.integers(1, 8),
    tokens=st.integers(1, 7), bsz=st.integers(1, 3), use_vae=st.booleans(), heads=st.sampled_from([1, 2, 4]),
)
def test_shapes_over_dims(action_dim, state_dim, horizon, tokens, bsz, use_vae, heads):
    h = head(action_dim=action_dim, state_dim=state_dim, horizon=horizon, use_vae=use_vae, n_heads=heads)
    ctx, batch = inputs(h, bsz=bsz, tokens=tokens)
    out = h(ctx, batch)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    h.eval()
    with torch.no_grad():
        assert h.predict_action(ctx, batch).shape == (bsz, horizon, action_dim)


@pytest.mark.parametrize("kw", [{}, {"n_vae_encoder_layers": 1}, {"state_dim": None}])
def test_factored_first_vae_layer_equals_projecting_the_tokens(kw, monkeypatch):
    """The first VAE layer's q/k/v from (W Wa) a: same posterior and same gradients as projecting
    the action tokens, under the same dropout masks."""
    h = head(**kw).train()
    ctx, batch = inputs(h, bsz=3)
    batch["action_is_pad"][1, 2:] = True
    assert h._first_vae_projections(torch.zeros(3, 1 + bool(h.config.state_dim), 16), batch["action"]) is not None

    def posterior_and_grads():
        h.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        out = h(ctx, batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in h.named_parameters() if p.grad is not None}
        return out.loss.detach(), grads

    loss, grads = posterior_and_grads()
    monkeypatch.setattr(ACTVAEHead, "_first_vae_projections", lambda self, fixed, action: None)
    ref_loss, ref_grads = posterior_and_grads()
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name in grads:  # float rounding differs (different sums), relative to each gradient's scale
        scale = ref_grads[name].abs().max().item()
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=name)


def test_factored_projections_are_skipped_where_they_do_not_apply():
    h = head(pre_norm=True)
    assert h._first_vae_projections(torch.zeros(2, 2, 16), torch.zeros(2, 5, 3)) is None
    with pytest.raises(ValueError, match="post-norm"):
        h.vae_encoder.layers[0](torch.zeros(2, 7, 16), None, projected=(torch.zeros(2, 7, 16),) * 3)


@settings(max_examples=15, deadline=None)
@given(bsz=st.integers(1, 3), length=st.integers(1, 9), heads=st.sampled_from([1, 2, 4]), train=st.booleans(),
       seed=st.integers(0, 1000))
def test_one_query_attention_equals_projecting_keys_and_values(bsz, length, heads, train, seed):
    """attend_one_query (the CLS readout of the VAE's last layer) against project + attend on the
    first row: same output and gradients, with the same attention-dropout mask and a key mask."""
    from vla_heads.act_vae.transformer import Attention

    torch.manual_seed(seed)
    attn = Attention(8, heads, 0.3).train(train)
    with torch.no_grad():
        attn.in_proj_bias.normal_()
    key = torch.randn(bsz, length, 8, requires_grad=True)
    value = torch.randn(bsz, length, 8, requires_grad=True)
    mask = torch.rand(bsz, length) > 0.3
    mask[:, 0] = True

    def run(fn):
        attn.zero_grad(set_to_none=True)
        key.grad = value.grad = None
        torch.manual_seed(seed + 1)
        out = fn()
        out.backward(torch.ones_like(out))
        return [out.detach(), key.grad, value.grad] + [p.grad for p in attn.parameters()]

    got = run(lambda: attn.attend_one_query(key[:, :1], key, value, mask))
    ref = run(lambda: attn.attend(*attn.project(key[:, :1], key, value), mask))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cls_readout_is_the_first_row_of_the_full_layer(pre_norm):
    from vla_heads.act_vae.transformer import EncoderLayer

    torch.manual_seed(0)
    layer = EncoderLayer(16, 4, 24, 0.1, "relu", pre_norm).eval()
    x, pos = torch.randn(3, 7, 16), torch.randn(1, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    torch.testing.assert_close(layer(x, pos, mask, first_only=True), layer(x, pos, mask)[:, :1])
