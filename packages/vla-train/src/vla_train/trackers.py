"""Experiment trackers: ``log: {trackers: [jsonl, tensorboard, wandb, trackio]}``, each through its own API.

``jsonl`` is ``metrics.jsonl`` in the run directory, always written (the summary, the loss plot and
``--resume`` read it). The others are optional extras: ``tensorboard`` (``vla-train[tensorboard]``,
``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard``), ``wandb`` (``vla-train[wandb]``,
``wandb.init(project=log.project, name=run name, dir=RUN_DIR, config=the training config)``; set
``WANDB_MODE=offline`` to log without an account) and ``trackio`` (``vla-train[trackio]``, local by default,
``TRACKIO_DIR`` chooses where). A resumed run continues the same wandb run (its id is kept in
``RUN_DIR/wandb/vla_run_id``) and the same trackio run (``resume="allow"``). Only rank 0 opens trackers.
Metrics go under ``train/`` (``train/loss``, ``train/lr``, ...) at the optimizer step.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_core.errors import require

TRACKERS = ("jsonl", "tensorboard", "wandb", "trackio")


class TensorBoardTracker:
    def __init__(self, run_dir: Path, project: str, name: str, config: Mapping[str, Any]) -> None:
        tensorboard = require("torch.utils.tensorboard", "'vla-train[tensorboard]'")
        self.writer = tensorboard.SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, project: str, name: str, config: Mapping[str, Any]) -> None:
        wandb = require("wandb", "'vla-train[wandb]'")
        id_file = run_dir / "wandb" / "vla_run_id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)  # wandb ids: [a-z0-9]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", dir=str(run_dir),
                              config=dict(config))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, run_dir: Path, project: str, name: str, config: Mapping[str, Any]) -> None:
        self.trackio = require("trackio", "'vla-train[trackio]'")
        self.run = self.trackio.init(project=project, name=name, config=dict(config), resume="allow",
                                     auto_log_cpu=False, auto_log_gpu=False, embed=False)

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def open_trackers(names: tuple[str, ...], run_dir: Path, *, project: str, name: str | None,
                  config: Mapping[str, Any]) -> list:
    """Open the trackers in ``names`` besides ``jsonl`` (which the metrics logger writes itself)."""
    name = name or run_dir.resolve().name
    opened = []
    try:
        for tracker in dict.fromkeys(names):
            if tracker != "jsonl":
                opened.append(CLASSES[tracker](run_dir, project, name, config))
    except BaseException:
        for tracker in opened:
            tracker.close()
        raise
    return opened
