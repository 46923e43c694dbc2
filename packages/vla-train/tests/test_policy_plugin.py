"""A third-party policy class, advertised by entry point (``vla.policies``), trains with ``vla train``
unchanged, exports, reloads through ``load_policy`` and is evaluated by ``vla eval``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from train_helpers import tiny_config, write_config

PLUGIN = '''
"""A policy with its own forward: an MLP from the state straight to the chunk (no backbone, no head)."""
from dataclasses import dataclass
import torch
from torch import nn
from vla_core import ACTION, OBS_STATE, BasePolicyConfig, HeadOutput, Policy


@dataclass(frozen=True, kw_only=True)
class StateMLPConfig(BasePolicyConfig):
    horizon: int = 2
    hidden_dim: int = 16


class StateMLPPolicy(Policy):
    config_class = StateMLPConfig

    def __init__(self, config):
        super().__init__(config)
        self.horizon = self.config.horizon
        state_dim = self.input_features[OBS_STATE].shape[0]
        self.net = nn.Sequential(nn.Linear(state_dim, self.config.hidden_dim), nn.ReLU(),
                                 nn.Linear(self.config.hidden_dim, self.horizon * self.action_dim))

    def _chunk(self, nbatch):
        return self.net(nbatch[OBS_STATE]).view(-1, self.horizon, self.action_dim)

    def compute_loss(self, nbatch):
        loss = (self._chunk(nbatch) - nbatch[ACTION]).square().mean()
        return HeadOutput(loss=loss, metrics={"mse": loss.detach()})

    def sample_chunk(self, nbatch, *, noise, generator):
        return self._chunk(nbatch)
'''


def _install(site, name="vla_policy_plugin"):
    (site / f"{name}.py").write_text(PLUGIN)
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[vla.policies]\nstate_mlp = {name}:StateMLPPolicy\n")


def _vla(args, site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "vla_train", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_registered_policy_class_trains_exports_and_evaluates(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install(site)
    cfg = tiny_config(tmp_path / "run", steps=20, optim={"lr": 1e-2})
    cfg["policy"] = {"type": "state_mlp", "horizon": 2}
    done = _vla(["train", str(write_config(tmp_path / "c.yaml", cfg))], site)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss"] < records[0]["loss"]
    saved = json.loads((tmp_path / "run" / "pretrained" / "config.json").read_text())
    assert saved["type"] == "state_mlp" and saved["horizon"] == 2
    evaluated = _vla(["eval", str(tmp_path / "run"), "--episodes", "2"], site)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert evaluated.stdout.strip().splitlines()[-1].startswith("success_rate: ")
