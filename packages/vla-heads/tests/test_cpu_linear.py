"""cpu_linear: the oneDNN inference path equals F.linear (+ ReLU); autograd and wrapped modules fall back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from vla_heads.cpu_linear import ONEDNN, apply_linear, linear, uses_onednn

pytestmark = pytest.mark.skipif(not ONEDNN, reason="this PyTorch build has no oneDNN")


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=3), k=st.integers(1, 70), n=st.integers(1, 70),
       bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_f_linear(lead, k, n, bias, relu, seed):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(*lead, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    ref = F.linear(x, w, b)
    ref = F.relu(ref) if relu else ref
    with torch.no_grad():
        assert uses_onednn(x, w)
        got = linear(x, w, b, relu=relu)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * (k**0.5))


def test_non_contiguous_input_and_autograd_fallback():
    x = torch.randn(6, 4, 16).transpose(0, 1)  # (4, 6, 16), not contiguous
    w, b = torch.randn(8, 16, requires_grad=True), torch.randn(8)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert not uses_onednn(x, w)  # grad mode: plain F.linear, differentiable
    linear(x, w, b, relu=True).sum().backward()
    expected = ((F.linear(x, w, b) > 0).float()[..., None] * x[..., None, :]).sum((0, 1))
    torch.testing.assert_close(w.grad, expected)


def test_apply_linear_calls_wrapped_or_hooked_modules():
    class Scaled(nn.Linear):  # a replacement module (e.g. LoRA) must not be bypassed
        def forward(self, x):
            return 2 * super().forward(x)

    x = torch.randn(3, 5)
    plain, scaled = nn.Linear(5, 4), Scaled(5, 4)
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(apply_linear(plain, x, relu=True), F.relu(plain(x)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(apply_linear(scaled, x), 2 * plain(x))
        seen = []
        plain.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        apply_linear(plain, x)
    assert seen == [torch.Size([3, 4])]
