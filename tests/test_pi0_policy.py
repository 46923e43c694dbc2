"""pi0 as a VLAPolicy: paligemma + pi0_flow from configs/pi0_tiny.yaml.

Two-stage training (prefix once, expert on its K/V) equals pi0's joint forward; the block-causal mask
keeps the prefix blind to the suffix; geometry mismatches fail at build; a tiny policy overfits; the tiny
pair (``tiny_config``) trains under activation checkpointing + FSDP2 and bf16 autocast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pi0_fixtures import make_tokenizer
from vla_core import ConfigError, VLAPolicy
from vla_core.testing import (
    check_backbone,
    check_bf16_autocast,
    check_head,
    check_sharded_training,
    policy_batch,
    set_random_stats,
    tiny_policy_config,
)
from vla_test_components import set_unit_stats

ROOT = Path(__file__).resolve().parent.parent
CAMERA = "observation.images.top"


def tiny_config(**head) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "pi0_tiny.yaml").read_text())["policy"]
    cfg["head"].update(head)
    return cfg


def tiny_policy(**head) -> VLAPolicy:
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy(tiny_config(**head)))


def raw_batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 8, 3, 8][:b])
    return {
        CAMERA: torch.rand(b, 3, 32, 32, generator=g),
        "observation.state": torch.randn(b, 4, generator=g),
        "action": torch.randn(b, 8, 3, generator=g),
        "observation.language.tokens": torch.randint(3, 64, (b, 8), generator=g),
        "observation.language.attention_mask": torch.arange(8)[None] < lengths[:, None],
    }


def _rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos[:, None] + torch.cat([-x2, x1], dim=-1) * sin[:, None]


def joint_forward(policy: VLAPolicy, nbatch: dict, x_t: torch.Tensor, time: torch.Tensor):
    """Reference: pi0's joint pass (prefix and suffix in one attention per layer, as in openpi / LeRobot).

    Returns the normed prefix (B, P, Dp) and suffix (B, 1 + H, De) outputs.
    """
    bb, head = policy.backbone, policy.head
    prefix, prefix_mask = bb.embed_prefix(nbatch)
    suffix = torch.cat([head.state_token(nbatch, prefix.dtype), head.action_tokens(x_t, time)], dim=1)
    b, p, s = prefix.shape[0], prefix.shape[1], suffix.shape[1]
    pad = torch.cat([prefix_mask, torch.ones(b, s, dtype=torch.bool)], dim=1)
    blocks = torch.cat([torch.zeros(p), torch.tensor([1.0, 1.0]), torch.zeros(s - 2)]).cumsum(0)
    allowed = (blocks[None, :] <= blocks[:, None])[None] & pad[:, None, :] & pad[:, :, None]
    bias = torch.where(allowed, 0.0, -2.3819763e38)[:, None]
    positions = pad.long().cumsum(1) - 1
    inv = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    angles = torch.cat([positions[..., None] * inv] * 2, dim=-1)
    cos, sin = angles.cos(), angles.sin()
    xs = [prefix, suffix]
    for lp, le in zip(bb.language_model.layers, head.layers):
        hs = [lp.input_layernorm(xs[0]), le.input_layernorm(xs[1])]

        def heads(name, layers=(lp, le), hs=hs):
            return torch.cat([l.self_attn.heads(getattr(l.self_attn, name), h) for l, h in zip(layers, hs)], dim=2)

        q, k, v = _rope(heads("q_proj"), cos, sin), _rope(heads("k_proj"), cos, sin), heads("v_proj")
        k, v = k.repeat_interleave(8, dim=1), v.repeat_interleave(8, dim=1)
        att = ((q @ k.transpose(-1, -2)) * 8**-0.5 + bias).softmax(-1, dtype=torch.float32) @ v
        att = att.transpose(1, 2).reshape(b, p + s, -1)
        outs = []
        for layer, x, a in zip((lp, le), xs, (att[:, :p], att[:, p:])):
            x = x + layer.self_attn.o_proj(a)
            outs.append(x + layer.mlp(layer.post_attention_layernorm(x)))
        xs = outs
    return bb.language_model.norm(xs[0]), head.norm(xs[1])


def test_contract_suite_on_both_components():
    policy = tiny_policy()
    nbatch = policy.normalizer.normalize_batch(raw_batch())
    check_backbone(policy.backbone, nbatch)
    with torch.no_grad():  # check_backbone detaches the features but leaves past_key_values to us
        context = policy.backbone(nbatch)
    check_head(policy.head, context, nbatch)
    assert policy.fsdp_units() == policy.backbone.fsdp_units() | {type(policy.head.layers[0])}


def test_two_stage_training_equals_the_joint_forward():
    policy = tiny_policy()
    nbatch = policy.normalizer.normalize_batch(raw_batch())
    g = torch.Generator().manual_seed(1)
    noise, time = torch.randn(2, 8, 6, generator=g), torch.tensor([0.2, 0.9])
    ours = policy.head.compute_loss(policy.encode(nbatch), nbatch, noise=noise, time=time).loss
    ours.backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    policy.zero_grad(set_to_none=True)

    target = torch.nn.functional.pad(nbatch["action"], (0, 3))
    x_t, u_t = time[:, None, None] * noise + (1 - time[:, None, None]) * target, noise - target
    _, suffix_out = joint_forward(policy, nbatch, x_t, time)
    ref = (policy.head.action_out_proj(suffix_out[:, 1:]) - u_t)[..., :3].square().mean()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    ref_grads = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    # The joint pass also runs the last prefix layer's attention output and MLP, which feed nothing: zero grads.
    assert set(grads) <= set(ref_grads)
    for name, ref_grad in ref_grads.items():
        torch.testing.assert_close(grads.get(name, torch.zeros_like(ref_grad)), ref_grad, rtol=1e-4, atol=1e-6, msg=name)
    assert "backbone.vision_tower.vision_model.embeddings.patch_embedding.weight" in grads


def test_perturbing_suffix_tokens_leaves_prefix_outputs_unchanged():
    policy = tiny_policy().eval()
    nbatch = policy.normalizer.normalize_batch(raw_batch())
    time = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        p1, s1 = joint_forward(policy, nbatch, torch.randn(2, 8, 6), time)
        p2, s2 = joint_forward(policy, nbatch, torch.randn(2, 8, 6) * 3, time)
    valid = policy.backbone.embed_prefix(nbatch)[1]
    assert not valid.all()  # (fully masked padding rows attend uniformly to everything: meaningless, skipped)
    torch.testing.assert_close(p1[valid], p2[valid], rtol=0, atol=0)
    torch.testing.assert_close(s1[:, 0], s2[:, 0], rtol=0, atol=0)  # the state token does not see actions
    assert (s1[:, 1:] - s2[:, 1:]).abs().max() > 1e-3


def test_predict_equals_euler_over_the_joint_forward():
    policy = tiny_policy().eval()
    raw = raw_batch()
    noise = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = policy.predict_action_chunk(raw, noise=noise)
        nbatch = policy.normalizer.normalize_batch(raw)
        x = torch.nn.functional.pad(noise, (0, 3))
        for step in range(4):
            t = torch.full((2,), 1.0 - step / 4)
            _, suffix_out = joint_forward(policy, nbatch, x, t)
            x = x - 0.25 * policy.head.action_out_proj(suffix_out[:, 1:])
    torch.testing.assert_close(ours, policy.normalizer.unnormalize("action", x[..., :3]), rtol=1e-4, atol=1e-5)


def test_geometry_mismatch_fails_at_build_with_a_clear_error():
    cfg = tiny_config(depth=3)
    for key in ("prefix_num_layers", "prefix_num_kv_heads", "prefix_head_dim"):
        cfg["head"].pop(key)
    with pytest.raises(ConfigError, match=r"depth: the backbone's prefix has 2 layers .* the expert has 3"):
        VLAPolicy(cfg)
    with pytest.raises(ConfigError, match=r"head.prefix_num_layers: the backbone gives 2 but the head spec says 3"):
        VLAPolicy(tiny_config(prefix_num_layers=3, depth=3))
    filled = VLAPolicy(dict(tiny_config(), head={k: v for k, v in tiny_config()["head"].items() if not k.startswith("prefix")}))
    assert filled.config.head["prefix_num_layers"] == 2 and filled.config.head["prefix_head_dim"] == 8


def test_save_load_round_trip_and_task_strings(tmp_path):
    cfg = tiny_config()
    cfg["input_features"]["task"] = {"type": "LANGUAGE", "shape": []}
    cfg["backbone"]["tokenizer"] = str(make_tokenizer(tmp_path / "tok"))
    torch.manual_seed(0)
    policy = set_unit_stats(VLAPolicy(cfg)).eval()
    raw = {k: v for k, v in raw_batch().items() if not k.startswith("observation.language")}
    raw["task"] = ["pick up the red cube", "open the top drawer"]
    noise = torch.randn(2, 8, 3)
    before = policy.predict_action_chunk(raw, noise=noise)
    policy.save_pretrained(tmp_path / "p")
    after = VLAPolicy.from_pretrained(tmp_path / "p").eval().predict_action_chunk(raw, noise=noise)
    torch.testing.assert_close(before, after, rtol=0, atol=0)


@pytest.fixture
def one_thread():
    """Tiny matmuls run fastest on one thread (and do not fight other processes for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_policy_overfits_a_fixed_batch(one_thread):
    policy = tiny_policy()
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


@pytest.mark.slow
def test_fsdp2_shards_every_layer_and_matches_the_unsharded_policy():
    """2 gloo ranks, fully_shard on each fsdp_units() layer: the expert reads prefix K/V passed as inputs."""
    script = ROOT / "tests" / "support" / "pi0_fsdp_worker.py"
    proc = subprocess.run([sys.executable, str(script), str(ROOT / "configs" / "pi0_tiny.yaml")],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0 and "fsdp ok" in proc.stdout, proc.stderr[-3000:]


# ----------------------------------------------------------------- the tiny pair under FSDP2 / checkpointing / bf16
def tiny_pair(workdir: Path):
    """``make()`` building equal tiny PaliGemma + pi0 policies (task strings through the tiny tokenizer)."""
    config = tiny_policy_config("paligemma", "pi0_flow", workdir)

    def make() -> VLAPolicy:
        torch.manual_seed(0)
        return set_random_stats(VLAPolicy(config))

    return make, policy_batch(make())


def test_tiny_pair_trains_under_checkpointing_and_fsdp2_and_predicts_sharded(tmp_path):
    """Every SigLIP, Gemma prefix and expert layer is its own unit, recomputed in backward (the expert's
    prefix K/V come in as inputs); the sharded loss, gradients and actions equal the plain policy's."""
    make, batch = tiny_pair(tmp_path)
    policy = make()
    assert {c.__name__ for c in policy.fsdp_units()} == {"SiglipEncoderLayer", "GemmaDecoderLayer"}
    assert policy.config.head["prefix_num_layers"] == 2 and not policy.config.backbone["return_hidden_states"]
    check_sharded_training(make, batch)


def test_tiny_pair_trains_under_bf16_autocast(tmp_path):
    make, batch = tiny_pair(tmp_path)
    check_bf16_autocast(make(), batch)
