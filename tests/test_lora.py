"""LoRA fine-tuning through peft (``vla_train.adapters``, the training config's ``peft:`` section).

Targets resolve from the components' ``lora_targets`` or glob patterns; only adapters (and unfrozen
parameters) train and are checkpointed, the base weights stay bit-identical; adapters round-trip onto
the base policy, the merged policy acts as the adapted one; a resumed run ends where an uninterrupted
one does; 2 FSDP2 ranks (gloo, torchrun) train pi0 and GR00T tiny pairs with LoRA and lower the loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from torch.utils.data import default_collate
from vla_core import CheckpointError, ConfigError, VLAPolicy, load_policy
from vla_core.testing import policy_batch, set_random_stats, tiny_policy_config
from vla_train.adapters import (
    PeftConfig,
    apply_peft,
    default_targets,
    load_adapters,
    merge_adapters,
    save_adapters,
    target_names,
)
from vla_train.config import TrainConfig
from vla_train.data import build_dataset, policy_delta_indices
from vla_train.trainer import Trainer

PI0, GROOT = ("paligemma", "pi0_flow"), ("eagle", "dit_flow_matching")


def tiny_policy(tmp_path, pair=PI0) -> VLAPolicy:
    torch.manual_seed(0)
    return set_random_stats(VLAPolicy(tiny_policy_config(*pair, tmp_path)))


DATA = {"type": "toy_reach", "num_episodes": 1, "episode_length": 8, "image_size": 32, "num_targets": 2,
        "stats_frames": 8}


def toy_features() -> dict:
    features = {k: v.to_dict() for k, v in build_dataset(DATA).features.items()}
    return {"input_features": {k: v for k, v in features.items() if k != "action"},
            "output_features": {"action": features["action"]}}


def toy_batch(policy: VLAPolicy, size: int = 8) -> dict:
    """``size`` samples of the toy task, collated as the trainer does."""
    dataset = build_dataset(DATA)
    dataset.set_delta_indices(policy_delta_indices(dataset.features, 1, policy.horizon))
    batch = default_collate([dataset[i] for i in range(size)])
    return {k: v for k, v in batch.items() if k in policy.input_features or k.startswith("action")}


def run_config(tmp_path, pair=PI0, **overrides) -> dict:
    """A LoRA run of a tiny pair on the toy task (one short episode, with language), from a saved base."""
    base = tmp_path / "base"
    if not base.exists():
        torch.manual_seed(0)
        config = tiny_policy_config(*pair, tmp_path, features=toy_features())
        set_random_stats(VLAPolicy(config)).save_pretrained(base)
    cfg = {
        "policy": load_policy(base).config.to_dict(),
        "data": dict(DATA),
        "optim": {"lr": 1e-2, "grad_clip": None},
        "schedule": {"name": "constant"},
        "checkpoint": {"every": 0},
        "log": {"every": 1, "progress": False, "plot": False},
        "peft": {"r": 4, "alpha": 8, "base": str(base)},
        "steps": 4,
        "batch_size": 4,
        "output_dir": str(tmp_path / "run"),
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return cfg


def make_trainer(cfg: dict, **kwargs) -> Trainer:
    return Trainer(TrainConfig.from_dict(cfg), **kwargs)


# ----------------------------------------------------------------------------- targets
def test_default_targets_are_the_components_attention_and_mlp_projections(tmp_path):
    pi0 = tiny_policy(tmp_path)
    assert default_targets(pi0) == [
        "backbone.language_model.layers.*.self_attn.*_proj", "backbone.language_model.layers.*.mlp.*_proj",
        "head.layers.*.self_attn.*_proj", "head.layers.*.mlp.*_proj",
    ]
    names = target_names(pi0)
    depth = pi0.config.backbone["depth"] + pi0.config.head["depth"]
    assert len(names) == 7 * depth  # q, k, v, o, gate, up, down per layer
    assert "head.layers.1.mlp.down_proj" in names and not any("vision" in n for n in names)
    groot = target_names(tiny_policy(tmp_path, GROOT))
    assert "head.dit.blocks.0.attn1.to_q" in groot and "head.dit.blocks.3.ff.net.2" in groot
    assert any(n.startswith("backbone.llm.layers.0.self_attn.") for n in groot)



def test_pi05_expert_declares_the_same_targets_as_pi0(tmp_path):
    """pi0.5's expert (adaptive norms, no state token) adapts its attention and MLP projections, not the norms' maps."""
    pi05 = tiny_policy(tmp_path, ("paligemma", "pi05_flow"))
    assert default_targets(pi05) == default_targets(tiny_policy(tmp_path))
    names = target_names(pi05)
    depth = pi05.config.backbone["depth"] + pi05.config.head["depth"]
    assert len(names) == 7 * depth and not any(".dense" in n for n in names)
    adapted = apply_peft(pi05, PeftConfig(r=2))
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert "head.layers.1.mlp.down_proj.lora_B.default.weight" in trainable

def test_patterns_match_module_or_weight_names_and_a_miss_is_named(tmp_path):
    policy = tiny_policy(tmp_path)
    assert target_names(policy, ["head.layers.0.self_attn.q_proj.weight", "head.action_out_proj"]) == [
        "head.layers.0.self_attn.q_proj", "head.action_out_proj"]
    with pytest.raises(ConfigError, match=r"peft.target_modules: pattern 'head.nothing\*' matches no"):
        target_names(policy, ["head.nothing*"])
    with pytest.raises(ConfigError, match=r"peft.unfreeze: pattern 'nope' matches no parameter"):
        apply_peft(policy, PeftConfig(unfreeze=("nope",)))
    with pytest.raises(ConfigError, match=r"peft.dropout: expected a value in \[0, 1\), received 1.5"):
        PeftConfig(dropout=1.5)


def test_only_adapters_and_unfrozen_parameters_train(tmp_path):
    policy = apply_peft(tiny_policy(tmp_path), PeftConfig(r=2, unfreeze=("head.action_out_proj.*",)))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n} | {"head.action_out_proj.weight",
                                                                   "head.action_out_proj.bias"}
    lora = [n for n in trainable if ".lora_" in n]
    assert len(lora) == 2 * len(target_names(tiny_policy(tmp_path)))
    a = policy.get_parameter("head.layers.0.self_attn.q_proj.lora_A.default.weight")
    assert a.shape[0] == 2  # (r, in)


# ----------------------------------------------------------------------------- round trips
def test_adapters_round_trip_and_merge_equals_unmerged(tmp_path):
    policy = apply_peft(tiny_policy(tmp_path), PeftConfig(r=4, alpha=8, unfreeze=("head.state_proj.*",)))
    with torch.no_grad():  # lora_B starts at zero: give the adapters an effect
        for name, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    policy.eval()
    batch = policy_batch(policy)
    noise = torch.randn(2, policy.horizon, policy.action_dim, generator=torch.Generator().manual_seed(3))
    adapted = policy.predict_action_chunk(batch, noise=noise)
    assert not torch.allclose(adapted, tiny_policy(tmp_path).eval().predict_action_chunk(batch, noise=noise))

    save_adapters(policy, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "head.state_proj.weight" in keys and "head.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert not any("base_layer" in k for k in keys) and any(k.startswith("normalizer.") for k in keys)

    loaded = load_adapters(tiny_policy(tmp_path), tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded.predict_action_chunk(batch, noise=noise), adapted, rtol=0, atol=0)
    merged = merge_adapters(loaded)
    assert not any("lora_" in n or "base_layer" in n for n in merged.state_dict())
    torch.testing.assert_close(merged.predict_action_chunk(batch, noise=noise), adapted, rtol=0, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = VLAPolicy.from_pretrained(tmp_path / "merged").predict_action_chunk(batch, noise=noise)
    torch.testing.assert_close(again, adapted, rtol=0, atol=1e-5)


def test_adapters_for_another_architecture_are_refused(tmp_path):
    policy = apply_peft(tiny_policy(tmp_path), PeftConfig(target_modules=("head.layers.*.self_attn.q_proj",)))
    save_adapters(policy, tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="does not fit the policy"):
        load_adapters(tiny_policy(tmp_path / "g", GROOT), tmp_path / "adapter")


# ----------------------------------------------------------------------------- the trainer
def test_lora_run_freezes_the_base_checkpoints_only_trainables_and_exports(tmp_path, capsys):
    cfg = run_config(tmp_path, checkpoint={"every": 2}, peft={"unfreeze": ["head.action_out_proj.*"]})
    trainer = make_trainer(cfg)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    before = {n: trainer.model.get_parameter(n).detach().clone() for n in trainable}
    trainer.train()
    trainer.close()
    out = capsys.readouterr().out
    assert "trainable parameters: " in out and "(LoRA)" in out
    for name, value in frozen.items():  # bit-identical base weights
        assert torch.equal(trainer.model.get_parameter(name), value), name
    assert any(not torch.equal(trainer.model.get_parameter(n), before[n]) for n in trainable if "lora_B" in n)

    run = tmp_path / "run"
    with safe_open(str(run / "checkpoints" / "step_00000004" / "state.safetensors"), "pt") as f:
        names = list(f.keys())
    params = {k.removeprefix("model/model/") for k in names if k.startswith("model/model/")}
    assert {p for p in params if not p.startswith("normalizer.")} == trainable

    batch = policy_batch(trainer.policy)
    noise = torch.randn(2, trainer.policy.horizon, trainer.policy.action_dim)
    trainer.policy.eval()
    expected = trainer.policy.predict_action_chunk(batch, noise=noise)
    merged = load_policy(run / "pretrained")
    torch.testing.assert_close(merged.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=1e-5)
    onto_base = load_adapters(load_policy(tmp_path / "base"), run / "adapter").eval()
    torch.testing.assert_close(onto_base.predict_action_chunk(batch, noise=noise), expected, rtol=0, atol=0)

    from vla_train.cli import main

    assert main(["export", str(run), str(tmp_path / "exported"), "--merge"]) == 0
    torch.testing.assert_close(load_policy(tmp_path / "exported").predict_action_chunk(batch, noise=noise),
                               expected, rtol=0, atol=1e-5)
    assert main(["export", str(run / "adapter"), str(tmp_path / "adapters")]) == 0
    assert sorted(os.listdir(tmp_path / "adapters")) == ["adapter_config.json", "adapter_model.safetensors"]


def test_resumed_lora_run_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = make_trainer(run_config(tmp_path, checkpoint={"every": 2}))
    whole.train()
    whole.close()
    cfg = run_config(tmp_path, checkpoint={"every": 2}, output_dir=str(tmp_path / "cut"))
    first = make_trainer(cfg)
    first.train()
    first.close()
    ckpt = tmp_path / "cut" / "checkpoints"
    (ckpt / "latest").write_text("step_00000002\n")  # as if killed after step 2
    resumed = make_trainer(cfg, resume=True)
    assert resumed.step == 2
    resumed.train()
    resumed.close()
    ours = dict(resumed.model.named_parameters())
    for name, p in whole.model.named_parameters():
        assert torch.equal(ours[name], p), name


def test_a_lora_run_without_a_base_names_it_at_export(tmp_path):
    cfg = run_config(tmp_path)
    cfg["peft"] = {"r": 2}
    trainer = make_trainer(cfg)
    trainer.train()
    trainer.close()
    from vla_train.adapters import export

    with pytest.raises(ConfigError, match="pass --base DIR"):
        export(tmp_path / "run", tmp_path / "out")


def test_bf16_weights_with_fp32_adapters_train(tmp_path):
    trainer = make_trainer(run_config(tmp_path, parallel={"weight_dtype": "bfloat16"}, steps=2))
    dtypes = {("lora_" in n, p.dtype) for n, p in trainer.model.named_parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert trainer.policy.compute_dtype == torch.bfloat16
    trainer.train()
    trainer.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all(torch.isfinite(torch.tensor(json.loads(line)["loss"])) for line in lines)


# ----------------------------------------------------------------------------- 2 ranks, FSDP2
def eval_loss(policy: VLAPolicy, batch: dict) -> float:
    """The mean loss over 4 draws of noise and time under a fixed seed (the same draws for every policy)."""
    policy.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        return sum(policy(batch).loss.item() for _ in range(4)) / 4


# GR00T's tiny DiT learns slowly (its own fixed-batch test needs 120 full fine-tuning steps for -15%): its
# run also trains the new embodiment's encoders and decoder, as a GR00T fine-tune for a new robot does.
TWO_RANK_RUNS = {
    "pi0": (PI0, {"r": 4, "alpha": 8}, 0.9),
    "groot": (GROOT, {"r": 8, "alpha": 32, "unfreeze": ["head.action_decoder.*", "head.action_encoder.*",
                                                         "head.state_encoder.*"]}, 0.985),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TWO_RANK_RUNS))
def test_two_fsdp2_ranks_train_lora_and_lower_the_loss(name, tmp_path):
    pair, peft, factor = TWO_RANK_RUNS[name]
    cfg = run_config(tmp_path, pair, steps=40, batch_size=8, parallel={"activation_checkpointing": True},
                     peft={**peft, "merge_on_export": True})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "vla_train", "train", str(path)], env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fsdp on" in proc.stdout and "trainable parameters: " in proc.stdout
    run = tmp_path / "run"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == cfg["steps"] and all(torch.isfinite(torch.tensor(losses)))
    merged = load_policy(run / "pretrained")
    base = load_policy(tmp_path / "base")
    base.normalizer.load_state_dict(merged.normalizer.state_dict())  # the run's stats, the base's weights
    batch = toy_batch(merged)
    before, after = eval_loss(base, batch), eval_loss(merged, batch)
    assert after < factor * before, (before, after, losses)


