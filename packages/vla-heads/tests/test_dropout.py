"""vla_heads.dropout: the cheaper CPU mask keeps 1 - p of the elements, scales them, and backpropagates the same mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_heads.dropout import Dropout, _threshold, drop_mask, dropout, keep_mask


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_keep_rate_matches_p(p):
    torch.manual_seed(0)
    n = 400_000
    kept = keep_mask((n,), p).double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma, (kept, 1 - p)


def test_mask_elements_are_independent_of_their_neighbours():
    """Four int16 lanes come from one 64-bit draw: elements 1, 2 and 3 apart must still be uncorrelated."""
    torch.manual_seed(1)
    m = keep_mask((400_000,), 0.5).double()
    for lag in (1, 2, 3, 4):
        a, b = m[:-lag], m[lag:]
        corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
        assert abs(corr.item()) < 0.01, lag
    for lane in range(4):  # each lane position is itself a fair coin
        assert abs(m[lane::4].mean().item() - 0.5) < 0.01


def test_drop_probability_is_p_rounded_to_16_bits_and_stays_in_range():
    """P(drop) = round(p * 2^16) / 2^16: check the threshold at its edges, where int16 could overflow."""
    torch.manual_seed(2)
    assert keep_mask((50_000,), 1e-9).all()  # rounds to 0: nothing dropped
    dropped = (~keep_mask((400_000,), 1 - 1e-9)).sum().item()  # at most 1 - 2^-16: ~6 of 400k kept
    assert 400_000 - 40 < dropped < 400_000
    lanes = torch.arange(-(2**15), 2**15, dtype=torch.int32)
    for p in (0.1, 0.25, 1 / 3):
        assert (lanes < _threshold(p)).sum().item() == round(p * 2**16)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), p=st.floats(0.01, 0.95), seed=st.integers(0, 999))
def test_output_and_gradient_use_one_mask_and_scale(shape, p, seed):
    torch.manual_seed(seed)
    x = torch.randn(*shape, requires_grad=True)
    torch.manual_seed(seed + 1)
    y = dropout(x, p)
    torch.manual_seed(seed + 1)
    mask = keep_mask(x.shape, p)
    scale = 1.0 / (1.0 - p)
    torch.testing.assert_close(y, torch.where(mask, x * scale, 0.0))
    g = torch.randn(*shape)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(mask, g * scale, 0.0))


def test_identity_when_not_training_or_p_zero_and_module_matches_function():
    x = torch.randn(5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.25)
    assert module.eval()(x) is x
    torch.manual_seed(3)
    a = module.train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(a, dropout(x, 0.25))
    assert torch.equal(Dropout(0.3, inplace=True).eval()(x), x)
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.5)


def test_expected_value_is_preserved_like_f_dropout():
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0)
    ours, stock = dropout(x, 0.3).mean().item(), F.dropout(x, 0.3).mean().item()
    assert abs(ours - 2.0) < 0.02 and abs(stock - 2.0) < 0.02


def test_drop_mask_is_the_complement_of_keep_mask_for_one_seed():
    torch.manual_seed(4)
    keep = keep_mask((7, 33), 0.3)
    torch.manual_seed(4)
    assert torch.equal(drop_mask((7, 33), 0.3), ~keep)
