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


def test_eval_mode_loss_uses_the_zero_latent_and_no_kl():
    """As LeRobot's ACT.forward: the VAE encoder runs only in training; a validation loss (eval mode)
    is the L1 of what the policy predicts, without the KL term."""
    h = head(kl_weight=3.0).eval()
    ctx, batch = inputs(h)
    with torch.no_grad():
        out = h(ctx, batch)
        pred = h.predict_action(ctx, batch)
    assert out.metrics["kl"].item() == 0.0
    torch.testing.assert_close(out.loss, (pred - batch["action"]).abs().mean())
    h.train()
    assert h(ctx, batch).metrics["kl"].item() > 0


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


def _same_dropout_masks(ours: torch.nn.Module, ref: torch.nn.Module, after_attention: tuple[str, ...]) -> None:
    """Zero the dropouts applied right after torch's ``nn.MultiheadAttention``: it returns its output
    in (L, B, D) memory order and a dropout mask is drawn in memory order, so the same random
    numbers would land on other elements. Attention (SDPA) and feed-forward dropout still apply."""
    for name in after_attention:
        getattr(ours, name).p = getattr(ref, name).p = 0.0


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_encoder_layer_is_torchs_transformer_encoder_layer(pre_norm, training):
    """Without positions an EncoderLayer is ``nn.TransformerEncoderLayer`` (same parameter names):
    same output and gradients in eval and, in training, the same dropout masks from the same seed
    (SDPA's ``dropout_p`` and ``nn.Dropout``, drawn in the same order from torch's generator)."""
    from vla_heads.act_vae.transformer import EncoderLayer

    torch.manual_seed(0)
    ours = EncoderLayer(16, 4, 24, 0.3, "relu", pre_norm).train(training)
    ref = torch.nn.TransformerEncoderLayer(16, 4, 24, 0.3, batch_first=True, norm_first=pre_norm).train(training)
    ref.load_state_dict(ours.state_dict())
    _same_dropout_masks(ours, ref, ("dropout1",))
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    torch.manual_seed(5)
    got = ours(x, None, mask)
    torch.manual_seed(5)
    want = ref(x, src_key_padding_mask=~mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if training:
        assert not torch.allclose(got, ours.eval()(x, None, mask))  # dropout did act
    g_ours = torch.autograd.grad(got.square().sum(), list(ours.parameters()))
    g_ref = torch.autograd.grad(want.square().sum(), list(ref.parameters()))
    for name, a, b in zip([n for n, _ in ours.named_parameters()], g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_decoder_layer_is_torchs_transformer_decoder_layer(pre_norm):
    """With zero query positions and no memory positions a DecoderLayer is ``nn.TransformerDecoderLayer``,
    attention and feed-forward dropout masks included."""
    from vla_heads.act_vae.transformer import DecoderLayer

    torch.manual_seed(0)
    ours = DecoderLayer(16, 4, 24, 0.3, "relu", pre_norm).train()
    ref = torch.nn.TransformerDecoderLayer(16, 4, 24, 0.3, batch_first=True, norm_first=pre_norm).train()
    ref.load_state_dict(ours.state_dict())
    _same_dropout_masks(ours, ref, ("dropout1", "dropout2"))
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 3:] = False
    torch.manual_seed(3)
    got = ours(x, memory, torch.zeros(1, 5, 16), None, mask)
    torch.manual_seed(3)
    want = ref(x, memory, memory_key_padding_mask=~mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, ours.eval()(x, memory, torch.zeros(1, 5, 16), None, mask))


def test_attention_is_torchs_multihead_attention_with_positions():
    """Queries and keys carry positions, values not (DETR): ``nn.MultiheadAttention(q, k, v)`` with
    the same packed weights; fewer query rows than keys give those rows of the full output."""
    from vla_heads.act_vae.transformer import Attention

    torch.manual_seed(0)
    attn = Attention(16, 4, 0.0)
    with torch.no_grad():
        attn.in_proj_bias.normal_()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    ref.load_state_dict(attn.state_dict())
    x, pos = torch.randn(2, 7, 16), torch.randn(1, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    qk = x + pos
    full = attn(qk, qk, x, mask)
    want = ref(qk, qk, x, key_padding_mask=~mask, need_weights=False)[0]
    torch.testing.assert_close(full, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn(qk[:, :2], qk, x, mask), full[:, :2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cls_readout_has_the_full_encoders_gradients(pre_norm):
    """The VAE encoder's CLS readout (last layer on the first row only) against the full encoder's
    first row: same output and same gradients for the input and every parameter."""
    from vla_heads.act_vae.transformer import Encoder

    torch.manual_seed(0)
    enc = Encoder(2, 16, 4, 24, 0.1, "relu", pre_norm).eval()
    x = torch.randn(3, 7, 16, requires_grad=True)
    pos = torch.randn(1, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 3:] = False
    params = [x, *enc.parameters()]
    got = enc(x, pos, mask, first_only=True)
    want = enc(x, pos, mask)[:, :1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(got.square().sum(), params),
                    torch.autograd.grad(want.square().sum(), params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_only_torch_dropout_modules():
    """Every dropout is ``nn.Dropout``; a seeded training forward repeats, another seed differs."""
    h = head(dropout=0.2)
    kinds = {type(m) for m in h.modules() if "dropout" in type(m).__name__.lower()}
    assert kinds == {torch.nn.Dropout}
    ctx, batch = inputs(h)
    runs = []
    for seed in (4, 4, 5):
        torch.manual_seed(seed)
        runs.append(h(ctx, batch).loss)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_tiny_config_builds_fast():
    import time
    from pathlib import Path

    fields = ACTVAEHead.tiny_config(Path("."))
    assert "type" not in fields and not {"action_dim", "state_dim", "context_dim"} & set(fields)
    t0 = time.perf_counter()
    h = HEADS.build({"type": "act_vae", "action_dim": 3, "state_dim": 4, "context_dim": 32, **fields})
    assert time.perf_counter() - t0 < 1.0
    ctx, batch = inputs(h)
    check_head(h, ctx, batch)


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


@pytest.mark.parametrize("pre_norm", [False, True])
def test_cls_readout_is_the_first_row_of_the_full_layer(pre_norm):
    from vla_heads.act_vae.transformer import EncoderLayer

    torch.manual_seed(0)
    layer = EncoderLayer(16, 4, 24, 0.1, "relu", pre_norm).eval()
    x, pos = torch.randn(3, 7, 16), torch.randn(1, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    torch.testing.assert_close(layer(x, pos, mask, first_only=True), layer(x, pos, mask)[:, :1])
