"""vla_core.gemma's RMSNorm and MLP equal transformers' Gemma layers (same parameter names, same numbers)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.gemma import modeling_gemma as gemma
from vla_core.gemma import GemmaMLP, RMSNorm


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 1000), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_rmsnorm_and_mlp_equal_transformers_gemma(seed, dtype):
    torch.manual_seed(seed)
    ours, theirs = RMSNorm(16, eps=1e-6), gemma.GemmaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 16).to(dtype)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    mlp = GemmaMLP(16, 24)
    ref = gemma.GemmaMLP(gemma.GemmaConfig(hidden_size=16, intermediate_size=24, hidden_activation="gelu_pytorch_tanh"))
    ref.load_state_dict(mlp.state_dict())
    torch.testing.assert_close(mlp(x.float()), ref(x.float()), rtol=0, atol=0)
