"""Training checkpoints without pickle, the old format only on trust, ``latest`` kept inside the run,
the run-directory lock and metrics that hold every step once."""

from __future__ import annotations

import json
import os
import pickle
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from train_helpers import kill_tree, run_vla, tiny_config, write_config
from vla_core import CheckpointError
from vla_train.checkpoint import Checkpointer, ModelAndOptimizer, RNGState
from vla_train.cli import main
from vla_train.config import TrainConfig
from vla_train.metrics import truncate_metrics
from vla_train.runlock import RunDirectoryInUseError
from vla_train.trainer import Trainer, train


def make(tmp_path: Path, name: str = "run", **overrides) -> TrainConfig:
    return TrainConfig.from_dict(tiny_config(tmp_path / name, **overrides))


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def run_steps(trainer: Trainer, n: int) -> None:
    for _ in range(n):
        trainer.train_step()
        trainer.step += 1


class WritesMarker:
    """Unpickling this opens (creates) the marker file: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_is_safetensors_and_json_only(tmp_path):
    cfg = make(tmp_path, steps=4, checkpoint={"every": 2}, optim={"lr": 1e-3, "ema": True})
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000004"
    assert sorted(p.name for p in ckpt.iterdir()) == ["checkpoint.json", "rank_00000.json", "state.json",
                                                      "state.safetensors"]
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    assert manifest["world_size"] == 1 and manifest["files"]["state.safetensors"] > 0
    state = json.loads((ckpt / "state.json").read_text())
    assert state["trainer"] == {"step": 4, "world_size": 1, "data": {"epoch": 0, "taken": 4}}
    assert state["scheduler"]["last_epoch"] == 4
    tensors = load_file(ckpt / "state.safetensors")
    assert state["model"]["model"]["head.net.0.weight"] == {"$tensor": "model/model/head.net.0.weight"}
    assert "model/optim/state/head.net.0.weight/exp_avg" in tensors and "ema/shadow/head.net.0.weight" in tensors
    rng = json.loads((ckpt / "rank_00000.json").read_text())["rng"]["cpu"]
    assert set(rng) == {"$safetensors_b64"}
    for path in ckpt.iterdir():  # no pickle anywhere (protocol 2+ pickles start with 0x80)
        assert not path.read_bytes().startswith(b"\x80"), path


def test_hostile_old_format_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tiny_config(tmp_path / "run", checkpoint={"every": 1})
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    ckpt.mkdir(parents=True)
    (ckpt / ".metadata").write_bytes(pickle.dumps(WritesMarker(marker)))
    (ckpt.parent / "latest").write_text("step_00000002\n")
    config = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"{ckpt} is an old-format checkpoint" in err and "pickle" in err
    assert "vla train CONFIG --resume --trust-checkpoint" in err
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="can run code when loaded"):
        Trainer(TrainConfig.from_dict(cfg), resume=True)
    assert not marker.exists()
    assert main(["train", str(config), "--trust-checkpoint"]) == 2  # the flag alone resumes nothing
    assert "only applies with --resume" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_old_format_checkpoint_loads_when_trusted(tmp_path):
    cfg = make(tmp_path, steps=6, checkpoint={"every": 3})
    old = Trainer(cfg)
    run_steps(old, 3)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003"
    # what vla-train 0.1.0 wrote: torch.distributed.checkpoint with a pickled .metadata
    dcp.save({"model": ModelAndOptimizer(old.model, old.optimizer), "scheduler": old.scheduler,
              "trainer": old.state()["trainer"], "rng_rank0": RNGState()}, checkpoint_id=str(ckpt))
    (ckpt.parent / "latest").write_text("step_00000003\n")
    expected = weights(old)
    old.close()
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        Trainer(cfg, resume=True)
    trusted = Trainer(cfg, resume=True, trust_checkpoint=True)
    assert trusted.step == 3 and trusted.batches.state_dict() == {"epoch": 0, "taken": 3}
    for name, value in expected.items():
        assert torch.equal(weights(trusted)[name], value), name
    trusted.train()  # and goes on in the new format
    assert (ckpt.parent / "step_00000006" / "checkpoint.json").is_file()


@pytest.mark.parametrize("pointer", ["/etc", "../x", "step_00000002/../../x", "", "step_2", ".tmp-step_00000004"])
def test_latest_must_name_a_checkpoint_of_the_run(tmp_path, pointer):
    cfg = make(tmp_path, steps=2, checkpoint={"every": 2})
    train(cfg)
    (tmp_path / "run" / "checkpoints" / "latest").write_text(pointer + "\n")
    with pytest.raises(CheckpointError, match=f"names {pointer!r}, which is not a checkpoint of"):
        Trainer(cfg, resume=True)


def test_latest_must_not_lead_outside_through_a_link(tmp_path):
    cfg = make(tmp_path, steps=2, checkpoint={"every": 2})
    train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    (tmp_path / "elsewhere").mkdir()
    (ckpts / "step_00000009").symlink_to(tmp_path / "elsewhere")
    (ckpts / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match=f"resolves to {tmp_path / 'elsewhere'}, outside {ckpts}"):
        Trainer(cfg, resume=True)


def test_damaged_checkpoints_name_the_file(tmp_path):
    cfg = make(tmp_path, steps=2, checkpoint={"every": 2})
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    data = (ckpt / "state.safetensors").read_bytes()
    (ckpt / "state.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{ckpt / 'state.safetensors'} has .* bytes.*truncated"):
        Trainer(cfg, resume=True)
    (ckpt / "state.safetensors").write_bytes(data)
    (ckpt / "rank_00000.json").unlink()
    with pytest.raises(CheckpointError, match=f"{ckpt / 'rank_00000.json'} is missing"):
        Trainer(cfg, resume=True)
    manifest = json.loads((ckpt / "checkpoint.json").read_text())
    (ckpt / "checkpoint.json").write_text(json.dumps({**manifest, "world_size": 2}))
    with pytest.raises(CheckpointError, match="written by 2 process.*same number.*this run has 1"):
        Trainer(cfg, resume=True)


def test_a_second_trainer_on_the_same_output_dir_fails_at_once(tmp_path):
    cfg = make(tmp_path, steps=2, checkpoint={"every": 2})
    first = Trainer(cfg)
    start = time.perf_counter()
    with pytest.raises(RunDirectoryInUseError) as err:
        Trainer(cfg)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert f"output_dir {tmp_path / 'run'} is in use by another trainer" in msg
    assert f"pid {os.getpid()} on host {socket.gethostname()}, started 20" in msg
    first.train()  # the lock goes with the end of training
    second = Trainer(make(tmp_path, steps=4, checkpoint={"every": 2}), resume=True)
    assert second.step == 2
    second.close()


@pytest.mark.slow
def test_a_second_trainer_process_is_refused_and_a_killed_one_frees_the_run(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", steps=200))
    proc = run_vla(["train", str(config)], env={"VLA_TEST_STEP_SLEEP": "0.2"})
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "metrics.jsonl").is_file():
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.1)
        assert main(["train", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by another trainer (pid {proc.pid} on host {socket.gethostname()}" in err
    finally:
        kill_tree(proc)
    Trainer(TrainConfig.from_dict(tiny_config(tmp_path / "run", steps=200))).close()  # the OS freed the lock


def test_metrics_are_cut_back_to_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4, 5)) + '{"step": 6, "lo')
    truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    truncate_metrics(path, 0)
    assert path.read_text() == ""


def test_resume_logs_each_step_once(tmp_path):
    cfg = make(tmp_path, steps=6, checkpoint={"every": 3})
    first = Trainer(cfg)
    first.train()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    # as if killed at step 5 after checkpoint 3: steps 4 and 5 are logged, the checkpoint is at 3
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000003\n")
    Trainer(cfg, resume=True).train()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_checkpointer_refuses_non_json_state(tmp_path):
    from vla_train.distributed import World

    class Odd:
        def state_dict(self):
            return {1: object()}

    checkpointer = Checkpointer(tmp_path, every=1, keep_last=1, world=World(0, 1, torch.device("cpu")))
    with pytest.raises(CheckpointError, match="cannot store the key 1"):
        checkpointer.save(1, {"odd": Odd()})
