"""``vla info CONFIG --memory`` (vla_train.memory): the estimate equals the tensors a training step makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vla_core import build_policy
from vla_core.testing import policy_batch
from vla_test_components import policy_config, set_unit_stats
from vla_train.adapters import PeftConfig, apply_peft
from vla_train.cli import main
from vla_train.config import OptimConfig
from vla_train.memory import _shard, estimate
from vla_train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[3]
LORA = PeftConfig(r=2, target_modules=("backbone.image_proj", "backbone.block.lin", "head.net.*"))


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_estimate_equals_the_tensors_after_one_adamw_step(lora, weight_dtype):
    spec = policy_config()
    (row, *_) = estimate(spec, lora=LORA if lora else None, weight_dtype=weight_dtype)[-1:]
    torch.manual_seed(0)
    policy = set_unit_stats(build_policy(spec))
    if weight_dtype != "float32":
        policy.set_dtype(weight_dtype)
    if lora:
        apply_peft(policy, LORA)
    optimizer = build_optimizer(policy, OptimConfig())  # the trainer's AdamW
    policy.train()
    policy(policy_batch(policy)).loss.backward()
    optimizer.step()
    params = list(policy.parameters())
    assert row.parameters == sum(p.numel() for p in params)
    assert row.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert row.weights == nbytes(params)
    assert row.grads == nbytes(p.grad for p in params if p.grad is not None)
    assert row.optimizer == nbytes(t for state in optimizer.state.values() for t in state.values())
    assert (row.trainable < row.parameters / 2) == lora
    if lora:  # adapters stay float32 on a bf16 base
        assert {p.dtype for p in params if p.requires_grad} == {torch.float32}


def test_fsdp2_rows_shard_dim_0_with_padding():
    assert _shard(10 * 3, torch.Size([10, 3]), 4) == 3 * 3  # ceil(10 / 4) rows of 3
    assert _shard(7, torch.Size([7]), 1) == 7
    full, sharded = estimate(policy_config(), ranks=2)
    assert sharded.weights < full.weights and sharded.gathered > 0 and full.gathered == 0


def test_vla_info_memory_prints_the_table(capsys):
    assert main(["info", str(ROOT / "configs" / "pi0_tiny.yaml"), "--memory", "--ranks", "2", "--lora"]) == 0
    out = capsys.readouterr().out
    for label in ("full fine-tuning", "full fine-tuning, FSDP2 x2 (per rank)", "LoRA r=8", "LoRA r=8, FSDP2 x2"):
        assert label in out
    assert "parameters: " in out and "total GiB" in out


def test_vla_info_memory_needs_the_features(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("policy: {backbone: {type: test_linear}, head: {type: test_mlp}}\n")
    assert main(["info", str(tmp_path / "c.yaml"), "--memory"]) == 2
    assert "policy.input_features is missing" in capsys.readouterr().err
