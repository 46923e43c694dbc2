"""vla_heads.fused_feed_forward: same output, gradients and dropout mask as the eager feed-forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from vla_heads import fused_feed_forward as fused_ff
from vla_heads.act_vae.transformer import DecoderLayer, EncoderLayer
from vla_heads.dropout import dropout


def eager(x, linear1, linear2, p):
    return linear2(dropout(F.relu(linear1(x)), p))


def grads_of(fn, x, modules, seed, grad_out_seed=7):
    """(output, [d x, d params...]) of fn(x) under a fixed dropout seed and a random output gradient."""
    for m in modules:
        m.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(x.requires_grad)
    torch.manual_seed(seed)
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed))
    out.backward(g)
    return out.detach(), [x.grad] + [p.grad for m in modules for p in m.parameters()]


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=3), dim=st.integers(1, 12), hidden=st.integers(1, 40),
       p=st.floats(0.05, 0.9), seed=st.integers(0, 10_000))
def test_equals_eager_feed_forward_with_the_same_mask(lead, dim, hidden, p, seed):
    torch.manual_seed(seed)
    l1, l2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
    x = torch.randn(*lead, dim, requires_grad=True)
    assert fused_ff.applies(x, l1, l2, p)
    ref, ref_grads = grads_of(lambda t: eager(t, l1, l2, p), x, [l1, l2], seed)
    got, got_grads = grads_of(lambda t: fused_ff.relu_dropout_feed_forward(t, l1, l2, p), x, [l1, l2], seed)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for name, g, g_ref in zip(["x", "w1", "b1", "w2", "b2"], got_grads, ref_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5, msg=name)


def test_only_requested_gradients_are_computed_and_strided_input_works():
    torch.manual_seed(0)
    l1, l2 = nn.Linear(8, 32), nn.Linear(32, 8)
    l1.requires_grad_(False)
    x = torch.randn(4, 6, 8)[:, :1]  # (4, 1, 8) view with row stride 48: no input gradient wanted
    torch.manual_seed(1)
    out = fused_ff.relu_dropout_feed_forward(x, l1, l2, 0.25)
    out.sum().backward()
    assert out.shape == (4, 1, 8)
    assert l1.weight.grad is None and l1.bias.grad is None
    torch.manual_seed(1)
    ref = eager(x, l1, l2, 0.25)
    torch.testing.assert_close(out, ref)
    w2 = l2.weight.grad.clone()
    l2.zero_grad()
    ref.sum().backward()
    torch.testing.assert_close(w2, l2.weight.grad)


def test_saves_one_hidden_tensor_for_backward():
    """The memory claim: autograd keeps the masked hidden activation, not ReLU output + mask + product."""
    l1, l2 = nn.Linear(16, 64), nn.Linear(64, 16)
    x = torch.randn(10, 16, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused_ff.relu_dropout_feed_forward(x, l1, l2, 0.1)
    assert sorted(sizes) == sorted([10 * 16, 64 * 16, 16 * 64, 10 * 64])  # rows, w1, w2, hidden


def test_applies_only_where_it_is_exact_and_cheaper():
    l1, l2 = nn.Linear(4, 8), nn.Linear(8, 4)
    x = torch.randn(3, 4)
    assert fused_ff.applies(x, l1, l2, 0.1)
    assert not fused_ff.applies(x, l1, l2, 0.0)
    assert not fused_ff.applies(x, l1, l2, 1.0)
    assert not fused_ff.applies(x.double(), l1.double(), l2.double(), 0.1)
    with torch.no_grad():
        assert not fused_ff.applies(x, l1, l2, 0.1)

    class LoRALinear(nn.Linear):
        pass

    assert not fused_ff.applies(x, LoRALinear(4, 8), l2, 0.1)
    assert not fused_ff.applies(x, l1, nn.Linear(8, 4, bias=False), 0.1)
    handle = l2.register_forward_hook(lambda *a: None)
    assert not fused_ff.applies(x, l1, l2, 0.1)
    handle.remove()


def test_bfloat16_close_to_float32():
    torch.manual_seed(0)
    l1, l2 = nn.Linear(16, 48), nn.Linear(48, 16)
    x = torch.randn(5, 16)
    torch.manual_seed(3)
    ref = fused_ff.relu_dropout_feed_forward(x.requires_grad_(), l1, l2, 0.2)
    torch.manual_seed(3)
    got = fused_ff.relu_dropout_feed_forward(x.bfloat16(), l1.bfloat16(), l2.bfloat16(), 0.2)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("layer_cls", [EncoderLayer, DecoderLayer])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_act_layers_train_the_same_with_and_without_the_fused_path(layer_cls, pre_norm, monkeypatch):
    torch.manual_seed(0)
    layer = layer_cls(16, 2, 40, 0.1, "relu", pre_norm).train()
    x, pos = torch.randn(3, 7, 16), torch.randn(1, 7, 16)
    if layer_cls is EncoderLayer:
        def run(t):
            return layer(t, pos)
    else:
        memory = torch.randn(3, 5, 16)

        def run(t):
            return layer(t, memory, pos, None)

    x.requires_grad_()
    calls = []
    real = fused_ff.relu_dropout_feed_forward
    monkeypatch.setattr(fused_ff, "relu_dropout_feed_forward", lambda *a: calls.append(1) or real(*a))
    got, got_grads = grads_of(run, x, [layer], seed=5)
    assert calls, "the fused path was not taken"
    monkeypatch.setattr(fused_ff, "applies", lambda *a: False)
    ref, ref_grads = grads_of(run, x, [layer], seed=5)
    torch.testing.assert_close(got, ref)
    for g, g_ref in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, g_ref)
