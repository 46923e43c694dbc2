"""The quick start, shortened: ACT on the toy reach task learns to use the image.

The full command (``vla train configs/quickstart.yaml``, 300 steps) reached 100% closed-loop
success in about 100 s on two dedicated cores; this test runs a short, smaller version and
checks that the loss falls well below its start and that the policy beats an image-blind
baseline (always commanding the mean action of the demonstrations).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from vla_train.config import load_config
from vla_train.data import build_dataset
from vla_train.eval import evaluate
from vla_train.trainer import Trainer

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"
SHORT = ["steps=120", "data.image_size=32", "data.num_episodes=100", "batch_size=16", "schedule.warmup_steps=20",
         "optim.lr=5e-4", "checkpoint.every=0", "log.progress=false", "eval.episodes=0"]


def mean_action_success(data_spec: dict, episodes: int, seed: int) -> float:
    """Closed-loop success of the image-blind policy that always commands the demonstrations' mean action."""
    dataset = build_dataset(data_spec)
    env = dataset.make_env(episodes, seed)
    env.reset()
    mean = torch.as_tensor(dataset.action.mean(0)).expand(episodes, -1)
    success = np.zeros(episodes, dtype=bool)
    for _ in range(env.max_steps):
        _, success, done = env.step(mean)
        if done:
            break
    return float(success.mean())


def test_short_quickstart_learns_from_the_image(tmp_path):
    config = load_config(QUICKSTART, [*SHORT, f"output_dir={tmp_path / 'run'}"])
    trainer = Trainer(config)
    losses = []
    while trainer.step < config.steps:
        losses.append(trainer.train_step()["loss"])
        trainer.step += 1
    trainer.export()
    assert np.mean(losses[-10:]) < 0.1 * np.mean(losses[:5])
    result = evaluate(tmp_path / "run", episodes=40, seed=123)
    baseline = mean_action_success(config.data, 40, 123)
    assert baseline <= 0.15
    assert result["success_rate"] >= baseline + 0.3, (result, baseline)
