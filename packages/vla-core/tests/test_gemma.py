"""vla_core.gemma: LeRobot's adaptive RMSNorm formula; the decoder layer's past K/V and gates behave as
documented (equality with transformers' Gemma layers: vla-backbones' test_gemma_reference.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from vla_core.gemma import AdaptiveRMSNorm, GemmaDecoderLayer, additive_bias, init_linear, rope_cos_sin


def test_adaptive_rmsnorm_scale_shift_gate():
    torch.manual_seed(0)
    norm = AdaptiveRMSNorm(8, cond_dim=4)
    assert norm.dense.weight.abs().sum() == 0  # zero-initialized map (LeRobot's init)
    with torch.no_grad():
        norm.dense.weight.normal_()
    x, cond = torch.randn(2, 3, 8), torch.randn(2, 4)
    out, gate = norm(x, cond)
    scale, shift, want_gate = norm.dense(cond)[:, None].chunk(3, dim=-1)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(out, normed * (1 + scale) + shift)
    torch.testing.assert_close(gate, want_gate.expand_as(gate))
    with pytest.raises(ValueError, match="condition of width 4"):
        norm(x, torch.randn(2, 5))


def test_adaptive_layer_with_zero_modulation_and_unit_gate_equals_the_plain_layer():
    """scale = shift = 0 and gate = 1 reduce pi0.5's layer to the plain Gemma layer with zero norm weights."""
    torch.manual_seed(0)
    kw = {"width": 16, "mlp_dim": 32, "num_heads": 4, "num_kv_heads": 1, "head_dim": 4, "eps": 1e-6}
    plain, ada = GemmaDecoderLayer(**kw), GemmaDecoderLayer(**kw, cond_dim=6)
    ada.load_state_dict({k: v for k, v in plain.state_dict().items() if "layernorm" not in k}, strict=False)
    with torch.no_grad():
        for norm in (ada.input_layernorm, ada.post_attention_layernorm):
            norm.dense.weight.zero_()
            norm.dense.bias.zero_()
            norm.dense.bias[32:] = 1.0  # gate
    x = torch.randn(2, 3, 16)
    cos, sin = rope_cos_sin(torch.arange(3)[None].expand(2, 3) + 5, 4, 10000.0, torch.float32)
    past = (torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4))
    bias = additive_bias(torch.ones(2, 1, 3, 8, dtype=torch.bool), torch.float32)
    want = plain(x, cos, sin, bias, past_kv=past)[0]
    torch.testing.assert_close(ada(x, cos, sin, bias, past_kv=past, cond=torch.randn(2, 6))[0], want)
    with pytest.raises(ValueError, match="needs cond"):
        ada(x, cos, sin, bias, past_kv=past)
    # Masked-out past keys do not matter.
    masked = additive_bias(torch.cat([torch.zeros(2, 1, 3, 2, dtype=torch.bool), torch.ones(2, 1, 3, 6, dtype=torch.bool)], -1),
                           torch.float32)
    other = (torch.cat([past[0][:, :, :2] + 3, past[0][:, :, 2:]], 2), torch.cat([past[1][:, :, :2] - 3, past[1][:, :, 2:]], 2))
    torch.testing.assert_close(plain(x, cos, sin, masked, past_kv=past)[0], plain(x, cos, sin, masked, past_kv=other)[0])


@settings(max_examples=20, deadline=None)
@given(fan_in=st.sampled_from([16, 64, 256, 2048, 16384]), bias=st.booleans())
def test_init_linear_is_gemmas_std_at_full_width_and_wider_for_narrow_layers(fan_in, bias):
    torch.manual_seed(0)
    linear = nn.Linear(fan_in, 512, bias=bias)
    init_linear(linear)
    want = max(0.02, fan_in**-0.5)
    assert linear.weight.std().item() == pytest.approx(want, rel=0.05)
    assert abs(linear.weight.mean().item()) < 0.1 * want
    if bias:
        assert torch.count_nonzero(linear.bias) == 0
