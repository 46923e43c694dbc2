"""GR00T N1.5 as a vla policy: the ready configs, a tiny Eagle + DiT policy learning a fixed batch on CPU, and the
tiny pair (``tiny_config``) under activation checkpointing + FSDP2 and bf16 autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from vla_backbones.eagle.processor import IMAGE_TOKEN, PROMPT_TOKENS
from vla_backbones.word_tokenizer import save_word_tokenizer
from vla_core import HEADS, VLAPolicy
from vla_core.parallel import apply_activation_checkpointing, apply_fsdp2
from vla_core.policy import resolve_config
from vla_core.testing import (
    check_bf16_autocast,
    check_sharded_training,
    policy_batch,
    set_random_stats,
    single_process_group,
    tiny_policy_config,
)
from vla_heads.dit_flow_matching.dit import TransformerBlock

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())["policy"]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    cfg = load("groot_tiny.yaml")
    path = tmp_path_factory.mktemp("tok")
    vocab = save_word_tokenizer(path, ["pick up the cube", "open the drawer"], special_tokens=[*PROMPT_TOKENS, IMAGE_TOKEN])
    cfg["backbone"].update(tokenizer_path=str(path), image_token_id=vocab[IMAGE_TOKEN])
    return cfg


def fixed_batch(bsz: int = 4) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "observation.images.top": torch.rand(bsz, 3, 28, 28, generator=g),
        "observation.state": torch.randn(bsz, 4, generator=g),
        "task": ["pick up the cube", "open the drawer"] * (bsz // 2),
        "action": torch.randn(bsz, 4, 3, generator=g),
        "action_is_pad": torch.zeros(bsz, 4, dtype=torch.bool),
    }


def with_stats(policy: VLAPolicy) -> VLAPolicy:
    policy.normalizer.set_stats({
        "observation.state": {"min": -3 * torch.ones(4), "max": 3 * torch.ones(4)},
        "action": {"min": -torch.ones(3), "max": torch.ones(3)},  # normalized = raw: N(0, 1) targets
    })
    return policy


def test_n15_config_resolves_to_the_released_dimensions():
    cfg = resolve_config(load("groot_n15.yaml"))
    head_cfg = HEADS.config_class("dit_flow_matching").from_dict({k: v for k, v in cfg.head.items() if k != "type"})
    assert (head_cfg.action_dim, head_cfg.state_dim, head_cfg.padded_action_dim, head_cfg.padded_state_dim) == (6, 6, 32, 64)
    assert head_cfg.width == 1536 and head_cfg.embodiment_rows == 32
    assert cfg.backbone["image_keys"] == ["observation.images.front"] and cfg.backbone["select_layer"] == 12
    with torch.device("meta"):  # the full head, without allocating it
        head = HEADS.build({**cfg.head, "context_dim": 2048})
    assert abs(sum(p.numel() for p in head.parameters()) / 1e6 - 1068.8) < 0.1  # as LeRobot 0.5.1's head


def test_tiny_policy_learns_a_fixed_batch(tiny_config):
    """Training lowers the flow-matching loss on a fixed batch (measured in eval mode under a fixed seed,
    so the noise and times are the same before and after)."""
    torch.manual_seed(0)
    policy = with_stats(VLAPolicy.from_config(tiny_config))
    assert policy.head.config.context_dim == 32  # filled from the backbone
    assert not any(p.requires_grad for p in policy.backbone.parameters())  # tiny config: frozen backbone
    batch = fixed_batch()

    def eval_loss() -> float:
        policy.eval()
        torch.manual_seed(123)
        with torch.no_grad():
            return sum(policy(batch).loss.item() for _ in range(4)) / 4

    before = eval_loss()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(120):
        policy.train()
        loss = policy(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.85 * before, (before, after)


def test_tiny_policy_save_load_round_trip(tiny_config, tmp_path):
    torch.manual_seed(0)
    policy = with_stats(VLAPolicy.from_config(tiny_config)).eval()
    batch = fixed_batch(2)
    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    want = policy.predict_action_chunk(batch, noise=noise)
    policy.save_pretrained(tmp_path)
    again = VLAPolicy.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(again.predict_action_chunk(batch, noise=noise), want)
    assert len(again.backbone.llm.layers) == 2


# ----------------------------------------------------------------- the tiny pair under FSDP2 / checkpointing / bf16
def tiny_pair(workdir: Path):
    """``make()`` building equal tiny Eagle + DiT policies (every part trainable), and a batch for them."""
    config = tiny_policy_config("eagle", "dit_flow_matching", workdir)

    def make() -> VLAPolicy:
        torch.manual_seed(0)
        return set_random_stats(VLAPolicy(config))

    return make, policy_batch(make())


def test_tiny_pair_trains_under_checkpointing_and_fsdp2_and_predicts_sharded(tmp_path):
    """Every SigLIP, Qwen3 and DiT / VL block is its own unit, recomputed in backward; the sharded policy's
    loss, gradients and cached inference (the blocks' project_context / modulation) equal the plain one's."""
    make, batch = tiny_pair(tmp_path)
    assert {c.__name__ for c in make().fsdp_units()} == {"SiglipEncoderLayer", "Qwen3DecoderLayer", "TransformerBlock"}
    check_sharded_training(make, batch)


def test_sharded_inference_caches_go_through_the_blocks_registered_methods(tmp_path):
    make, batch = tiny_pair(tmp_path)
    plain, sharded = make().eval(), make().eval()
    calls = []
    for block in [m for m in sharded.modules() if isinstance(m, TransformerBlock)]:
        for name in TransformerBlock.fsdp_forward_methods:
            inner = getattr(block, name)
            setattr(block, name, lambda *a, _inner=inner, _name=name: calls.append(_name) or _inner(*a))
    apply_activation_checkpointing(sharded)
    obs = {k: v for k, v in batch.items() if k not in ("action", "action_is_pad")}
    noise = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1))
    with single_process_group():
        from torch.distributed.device_mesh import init_device_mesh

        apply_fsdp2(sharded, init_device_mesh("cpu", (1,)))
        got = sharded.predict_action_chunk(obs, noise=noise)
    torch.testing.assert_close(got, plain.predict_action_chunk(obs, noise=noise), rtol=1e-5, atol=1e-6)
    # 2 cross-attention blocks project the context once per chunk; 4 blocks modulate all steps at once
    assert sorted(calls) == ["modulation"] * 4 + ["project_context"] * 2


def test_tiny_pair_trains_under_bf16_autocast(tmp_path):
    make, batch = tiny_pair(tmp_path)
    check_bf16_autocast(make(), batch)
