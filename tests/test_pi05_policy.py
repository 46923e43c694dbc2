"""pi0.5 as a VLAPolicy: paligemma (discretized state in the prompt) + pi05_flow, from configs/pi05_tiny.yaml.

The state reaches the model only through the prompt (LeRobot's 256-bin digitization, checked against
numpy); time reaches the expert only through its adaptive norms; a tiny policy overfits; save/load
round-trips. FSDP2 + activation checkpointing, bf16 and compile: the contract suite's
``paligemma+pi05_flow`` pair. Parity with LeRobot: tests/interop/test_pi05_lerobot.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_backbones.paligemma.prompt import discretize_state, pi05_prompts, prompt_words
from vla_backbones.word_tokenizer import save_word_tokenizer
from vla_core import VLAPolicy
from vla_test_components import set_unit_stats

ROOT = Path(__file__).resolve().parent.parent
CAMERA = "observation.images.top"
TASKS = ["pick up the red cube", "open the top drawer"]


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-1.5, 1.5, width=32), min_size=1, max_size=12), bins=st.sampled_from([2, 7, 256]))
def test_discretize_equals_lerobots_numpy_digitize(values, bins):
    state = torch.tensor([values], dtype=torch.float32)
    want = np.digitize(state.numpy(), bins=np.linspace(-1, 1, bins + 1)[:-1]) - 1
    assert discretize_state(state, bins).tolist() == want.tolist()


def test_prompt_text_is_lerobots():
    state = torch.tensor([[-1.2, -1.0, 0.0, 0.999, 1.5]])
    assert pi05_prompts([" pick_up\nthe cube "], state, 256) == ["Task: pick up the cube, State: -1 0 128 255 255;\nAction: "]
    with pytest.raises(ValueError, match="2 task strings for a state batch of 1"):
        pi05_prompts(["a", "b"], state, 256)


def tiny_policy(tmp_path: Path) -> VLAPolicy:
    cfg = yaml.safe_load((ROOT / "configs" / "pi05_tiny.yaml").read_text())["policy"]
    cfg["input_features"]["task"] = {"type": "LANGUAGE", "shape": []}
    vocab = save_word_tokenizer(tmp_path / "tok", [*TASKS, prompt_words()], bos_token="<bos>")
    assert len(vocab) <= cfg["backbone"]["vocab_size"]
    cfg["backbone"]["tokenizer"] = str(tmp_path / "tok")
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy(cfg))


def raw_batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {CAMERA: torch.rand(b, 3, 32, 32, generator=g), "observation.state": torch.randn(b, 4, generator=g) * 0.5,
            "action": torch.randn(b, 8, 3, generator=g), "task": [TASKS[i % 2] for i in range(b)]}


def test_state_reaches_the_model_only_through_the_prompt(tmp_path):
    policy = tiny_policy(tmp_path).eval()
    raw, noise = raw_batch(), torch.randn(2, 8, 3)
    moved = {**raw, "observation.state": raw["observation.state"] + 0.3}
    ids, _ = policy.backbone.language_inputs(policy.normalizer.normalize_batch(raw), torch.device("cpu"))
    moved_ids, _ = policy.backbone.language_inputs(policy.normalizer.normalize_batch(moved), torch.device("cpu"))
    assert not torch.equal(ids, moved_ids) and not ids.eq(2).any()  # no unknown words: every bin is a token
    a, b = policy.predict_action_chunk(raw, noise=noise), policy.predict_action_chunk(moved, noise=noise)
    assert (a - b).abs().max() > 1e-4
    # Pre-tokenized prompts (LeRobot's processor output) already hold the state: the state key is not read.
    pre = dict(raw)  # the pre-tokenized keys win over task
    pre["observation.language.tokens"], pre["observation.language.attention_mask"] = ids, ids > 0
    torch.testing.assert_close(policy.predict_action_chunk(pre, noise=noise), a, rtol=0, atol=0)
    pre["observation.state"] = pre["observation.state"] + 0.3
    torch.testing.assert_close(policy.predict_action_chunk(pre, noise=noise), a, rtol=0, atol=0)


def test_missing_state_names_the_key(tmp_path):
    policy = tiny_policy(tmp_path).eval()
    nbatch = policy.normalizer.normalize_batch(raw_batch())
    nbatch.pop("observation.state")
    with pytest.raises(ValueError, match=r"observation.state.*discrete_state_bins=256"):
        policy.backbone.language_inputs(nbatch, torch.device("cpu"))


def test_time_enters_only_through_the_adaptive_norms(tmp_path):
    policy = tiny_policy(tmp_path).eval()
    head = policy.head
    with torch.no_grad():  # the norms' maps start at zero (LeRobot's init), so time acts only once they are trained
        for name, p in head.named_parameters():
            if name.endswith("dense.weight"):
                p.normal_(std=0.3)
    nbatch = policy.normalizer.normalize_batch(raw_batch())
    with torch.no_grad():
        ctx = policy.encode(nbatch)
        kv, suffix = head.prefix_kv(ctx), head.suffix_inputs(ctx)
        x = torch.randn(2, 8, 6)
        tokens, cond = head.embed_suffix(x, torch.tensor([0.3, 0.3]), None)
        tokens2, cond2 = head.embed_suffix(x, torch.tensor([0.8, 0.8]), None)
        torch.testing.assert_close(tokens, tokens2, rtol=0, atol=0)  # the action tokens do not see time
        assert (cond - cond2).abs().max() > 1e-4
        v1 = head.velocity(x, torch.tensor([0.3, 0.3]), None, kv, suffix)
        v2 = head.velocity(x, torch.tensor([0.8, 0.8]), None, kv, suffix)
    assert v1.shape == (2, 8, 6) and (v1 - v2).abs().max() > 1e-4
    assert set(head.state_dict()) >= {"layers.0.input_layernorm.dense.weight", "norm.dense.bias", "time_mlp_in.weight"}
    assert not any(k.startswith("state_proj") for k in head.state_dict())


def test_save_load_round_trip(tmp_path):
    policy = tiny_policy(tmp_path).eval()
    raw, noise = raw_batch(), torch.randn(2, 8, 3)
    before = policy.predict_action_chunk(raw, noise=noise)
    policy.save_pretrained(tmp_path / "p")
    after = VLAPolicy.from_pretrained(tmp_path / "p").eval().predict_action_chunk(raw, noise=noise)
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_tiny_policy_overfits_a_fixed_batch(tmp_path):
    policy = tiny_policy(tmp_path)
    raw = raw_batch(b=2, seed=3)
    opt = torch.optim.AdamW(policy.parameters(), lr=5e-3, weight_decay=0.0)
    torch.manual_seed(0)

    def chunk_error() -> float:
        policy.eval()
        chunk = policy.predict_action_chunk(raw, noise=torch.zeros(2, 8, 3))
        policy.train()
        norm = policy.normalizer.normalize
        return (norm("action", chunk) - norm("action", raw["action"])).abs().mean().item()

    err_before, losses = chunk_error(), []
    for _ in range(250):
        loss = policy(raw).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.3 * sum(losses[:10]) / 10
    err = chunk_error()
    assert err < 0.3 < err_before, f"mean abs error {err_before:.3f} -> {err:.3f} (normalized units)"
