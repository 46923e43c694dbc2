"""Experiment trackers, offline: TensorBoard event files, wandb in ``WANDB_MODE=offline``, trackio in a local
``TRACKIO_DIR``; every tracker gets the same values as ``metrics.jsonl``; only rank 0 opens them; a missing
library names its extra."""

from __future__ import annotations

import json
import sys

import pytest
from train_helpers import tiny_config, write_config
from vla_core import ConfigError, MissingExtraError
from vla_train import cli
from vla_train.config import LogConfig, TrainConfig
from vla_train.metrics import MetricsLogger
from vla_train.trainer import train


def run(tmp_path, *trackers, **log):
    cfg = tiny_config(tmp_path / "run", steps=4, log={"every": 2, "progress": False, "plot": False,
                                                      "trackers": list(trackers), **log})
    run_dir = train(TrainConfig.from_dict(cfg))
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, jsonl


def test_tracker_names_are_checked_and_tensorboard_shorthand_adds_it():
    with pytest.raises(ConfigError, match=r"log.trackers: expected names among .*received 'wanb'.*Did you mean 'wandb'"):
        LogConfig(trackers=("wanb",))
    assert LogConfig().active_trackers == ("jsonl",)
    assert LogConfig(trackers=("wandb",), tensorboard=True).active_trackers == ("jsonl", "wandb", "tensorboard")


def test_tensorboard_gets_the_jsonl_values(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, jsonl = run(tmp_path, "jsonl", "tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in jsonl]


def test_wandb_offline_run_gets_the_config_and_the_jsonl_values(tmp_path, monkeypatch):
    import wandb
    from wandb.sdk.wandb_run import Run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, inits = [], []
    real_log, real_init = Run.log, wandb.init
    monkeypatch.setattr(Run, "log", lambda self, data, step=None, **kw: (logged.append((step, data)),
                                                                          real_log(self, data, step=step, **kw))[1])
    monkeypatch.setattr(wandb, "init", lambda **kw: (inits.append(kw), real_init(**kw))[1])
    run_dir, jsonl = run(tmp_path, "wandb", project="vla-tests", run_name="tiny")
    assert [(s, d["train/loss"]) for s, d in logged] == [(r["step"], r["loss"]) for r in jsonl]
    (init,) = inits
    assert init["project"] == "vla-tests" and init["name"] == "tiny" and init["dir"] == str(run_dir)
    assert init["config"]["steps"] == 4 and init["config"]["policy"]["head"]["type"] == "test_mlp"
    run_id = (run_dir / "wandb" / "vla_run_id").read_text().strip()
    assert init["id"] == run_id and list((run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_trackio_local_run_gets_the_config_and_the_jsonl_values(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    from trackio.sqlite_storage import SQLiteStorage

    _, jsonl = run(tmp_path, "jsonl", "trackio", project="vla-tests")
    logs = SQLiteStorage.get_logs("vla-tests", "run")
    assert [(r["step"], r["train/loss"]) for r in logs] == [(r["step"], pytest.approx(r["loss"])) for r in jsonl]
    (config,) = SQLiteStorage.get_all_run_configs("vla-tests").values()  # keyed by trackio's run id
    assert config["steps"] == 4 and config["policy"]["head"]["type"] == "test_mlp"


def test_only_rank_0_opens_trackers(tmp_path, monkeypatch):
    from vla_train import trackers

    for name in ("tensorboard", "wandb", "trackio"):
        monkeypatch.setitem(trackers.CLASSES, name, lambda *a, **k: pytest.fail("a tracker opened on rank 1"))
    logger = MetricsLogger(tmp_path, LogConfig(trackers=("wandb", "trackio", "tensorboard")), total_steps=2,
                           start_step=0, enabled=False)
    logger.log(1, {"loss": 1.0, "lr": 0.1}, samples=4)
    logger.close()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_a_missing_tracker_library_names_its_extra(tmp_path, monkeypatch, capsys, name):
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=rf"pip install 'vla-train\[{name}\]'"):
        MetricsLogger(tmp_path, LogConfig(trackers=(name,), progress=False), total_steps=1, start_step=0,
                      enabled=True)
    cfg = tiny_config(tmp_path / "run", log={"trackers": [name], "progress": False})
    assert cli.main(["train", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    assert f"vla-train[{name}]" in capsys.readouterr().err
