"""The single-process trainer: run directory, export, accumulation, EMA, resume, and its clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import tiny_config
from vla_core import ConfigError, VLAPolicy, load_tensors
from vla_train.checkpoint import Checkpointer
from vla_train.cli import main
from vla_train.config import TrainConfig
from vla_train.trainer import Trainer, TrainingDivergedError, train


def make(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config(tmp_path / name, **overrides))


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def run_steps(trainer: Trainer, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        losses.append(trainer.train_step()["loss"])
        trainer.step += 1
    return losses


def test_run_directory_export_and_last_line(tmp_path, capsys):
    cfg = make(tmp_path, steps=6, checkpoint={"every": 2, "keep_last": 2}, log={"every": 1, "plot": True})
    run_dir = train(cfg)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"run directory: {run_dir}"
    assert any(line.startswith("trained 6 steps") for line in lines)
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["policy"]["input_features"]["observation.images.top"]["shape"] == [3, 16, 16]
    assert resolved["policy"]["head"]["context_dim"] == 32  # derived fields are written out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert all(k in records[0] for k in ("loss", "lr", "grad_norm", "samples_per_s", "mse"))
    assert (run_dir / "loss.png").stat().st_size > 1000
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000004", "step_00000006"]  # keep_last=2
    policy = VLAPolicy.from_pretrained(run_dir / "pretrained")
    exported = load_tensors(run_dir / "pretrained" / "model.safetensors")
    assert torch.isfinite(exported["normalizer.stats.observation__state.mean"]).all()
    batch = {"observation.images.top": torch.rand(2, 3, 16, 16), "observation.state": torch.rand(2, 2)}
    assert policy.predict_action_chunk(batch).shape == (2, 1, 2)
    # vla info and vla eval on the result
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "backbone" in out and "head" in out and "observation.state (mean_std): mean=" in out
    assert main(["eval", str(run_dir), "--episodes", "3", "--save-video"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("success_rate: ") and 0.0 <= float(last.split()[-1]) <= 1.0
    assert json.loads((run_dir / "pretrained" / "eval.json").read_text())["episodes"] == 3
    assert (run_dir / "pretrained" / "eval.gif").is_file() and (run_dir / "pretrained" / "eval.png").is_file()


def test_export_holds_the_trained_weights(tmp_path):
    trainer = Trainer(make(tmp_path, steps=3))
    run_steps(trainer, 3)
    out = trainer.export()
    exported = load_tensors(out / "model.safetensors")
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=0)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    full = Trainer(make(tmp_path, "full", batch_size=8))
    accum = Trainer(make(tmp_path, "accum", batch_size=8, optim={"lr": 1e-3, "grad_accum_steps": 2}))
    assert accum.micro_batch_size == 4
    torch.testing.assert_close(run_steps(full, 4), run_steps(accum, 4), rtol=1e-5, atol=1e-6)
    for name, value in weights(full).items():
        torch.testing.assert_close(weights(accum)[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_its_definition(tmp_path, warmup):
    trainer = Trainer(make(tmp_path, optim={"lr": 1e-2, "ema": True, "ema_decay": 0.9, "ema_warmup": warmup}))
    names = list(trainer.ema.shadow)
    expected = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in names}
    for t in range(4):
        run_steps(trainer, 1)
        d = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
        params = dict(trainer.model.named_parameters())
        expected = {n: d * e + (1 - d) * params[n].detach() for n, e in expected.items()}
    for name in names:
        torch.testing.assert_close(trainer.ema.shadow[name], expected[name], rtol=1e-6, atol=1e-7)
    out = trainer.export()  # the export holds the EMA weights
    torch.testing.assert_close(load_tensors(out / "model.safetensors")[names[0]], trainer.ema.shadow[names[0]])


def test_ema_defaults_to_the_policy_training_defaults(tmp_path, monkeypatch):
    assert Trainer(make(tmp_path, "a")).ema is None
    import vla_test_components

    monkeypatch.setattr(vla_test_components.MLPHead, "training_defaults", {"ema": True})
    assert Trainer(make(tmp_path, "b")).ema is not None


def test_resume_after_an_interruption_is_exact(tmp_path):
    reference = Trainer(make(tmp_path, "ref", steps=6))
    reference.train()
    interrupted = Trainer(make(tmp_path, "cut", steps=6, checkpoint={"every": 3}))
    run_steps(interrupted, 3)
    interrupted.checkpointer.save(3, interrupted.state())
    run_steps(interrupted, 1)  # progress after the checkpoint is lost
    interrupted.close()  # frees the run directory
    resumed = Trainer(make(tmp_path, "cut", steps=6, checkpoint={"every": 3}), resume=True)
    assert resumed.step == 3 and resumed.batches.state_dict() == {"epoch": 0, "taken": 3}
    resumed.train()
    for name, value in weights(reference).items():
        torch.testing.assert_close(weights(resumed)[name], value, rtol=0, atol=0)


def test_crash_during_a_checkpoint_write_keeps_the_previous_latest(tmp_path, monkeypatch):
    cfg = make(tmp_path, steps=6, checkpoint={"every": 2})
    write = Checkpointer._write
    ckpts = tmp_path / "run" / "checkpoints"

    def crash_at_step_4(self, state, path):
        if path.name.endswith("04"):
            (path / "state.safetensors").write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        write(self, state, path)

    monkeypatch.setattr(Checkpointer, "_write", crash_at_step_4)
    with pytest.raises(OSError, match="No space left on device") as err:
        Trainer(cfg).train()
    assert f"cannot write checkpoint {ckpts / 'step_00000004'}" in str(err.value)  # names the path
    assert (ckpts / "latest").read_text().strip() == "step_00000002"
    assert not (ckpts / ".tmp-step_00000004").exists() and not (ckpts / "step_00000004").exists()  # removed
    (ckpts / ".tmp-step_00000004").mkdir()  # what a process killed mid-write leaves behind
    monkeypatch.setattr(Checkpointer, "_write", write)
    resumed = Trainer(cfg, resume=True)
    assert resumed.step == 2
    resumed.train()
    assert (ckpts / "latest").read_text().strip() == "step_00000006"
    assert not (ckpts / ".tmp-step_00000004").exists()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    cfg = make(tmp_path, steps=20, optim={"lr": 1e30, "grad_clip": None}, checkpoint={"every": 1})
    with pytest.raises(TrainingDivergedError) as err:
        Trainer(cfg).train()
    msg = str(err.value)
    step = int(msg.split(" at step ")[1].split(":")[0])
    assert step >= 2 and re.search(r"the (loss|gradient norm) is (nan|inf|-inf) at step", msg)
    assert f"step_{step - 1:08d}" in msg and "--resume" in msg
    resumed = Trainer(cfg, resume=True)  # the last good checkpoint loads
    assert resumed.step == step - 1
    assert all(torch.isfinite(v).all() for v in weights(resumed).values())


def test_feature_mismatch_and_existing_run_are_clear_errors(tmp_path, capsys):
    from train_helpers import write_config

    bad = tiny_config(tmp_path / "bad")
    bad["policy"]["input_features"] = {"observation.images.top": {"type": "VISUAL", "shape": [3, 96, 96]},
                                       "observation.state": {"type": "STATE", "shape": [2]}}
    assert main(["train", str(write_config(tmp_path / "bad.yaml", bad))]) == 2
    err = capsys.readouterr().err
    assert "feature mismatch for 'observation.images.top'" in err and "[3, 96, 96]" in err and "[3, 16, 16]" in err
    cfg = make(tmp_path, steps=2, checkpoint={"every": 1})
    Trainer(cfg).train()
    with pytest.raises(ConfigError, match="already holds checkpoints: pass --resume"):
        Trainer(cfg)


def test_observations_the_policy_does_not_declare_stay_out_of_its_batches(tmp_path):
    # a dataset may hold more cameras and states than the policy reads; the policy refuses undeclared ones
    trainer = Trainer(make(tmp_path, steps=1))
    batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v] for k, v in trainer.dataset[0].items()}
    extra = {**batch, "observation.images.side": batch["observation.images.top"],
             "observation.images.side_is_pad": torch.zeros(1, 1, dtype=torch.bool),
             "observation.state_2": batch["observation.state"]}
    with pytest.raises(ValueError, match="'observation.images.side' is not a declared input feature"):
        trainer.model(extra)
    sent = trainer._to_device(extra)
    assert sent.keys() == batch.keys()
    assert torch.isfinite(trainer.model(sent).loss)
