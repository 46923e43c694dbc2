"""`vla train` on a LeRobot v3.0 dataset: the toy task exported by `vla convert toy`, 1 process and 2 ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_helpers import run_vla, tiny_config, write_config
from vla_core import VLAPolicy
from vla_train.cli import main
from vla_train.data import build_dataset
from vla_train.data.toy_reach import IMAGE_KEY

TOY = {"num_episodes": 6, "image_size": 16, "seed": 3}  # what the CLI call below exports


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_lerobot") / "toy"
    args = ["convert", "toy", str(root), "--episodes", "6", "--seed", "3", "--image-size", "16", "--png"]
    assert main(args) == 0
    return root


def config(toy_root, out, **overrides):
    cfg = tiny_config(out, **overrides)
    cfg["data"] = {"type": "lerobot", "root": str(toy_root), "stats_frames": 60}
    return cfg


def test_export_reads_back_equal_to_the_toy_dataset(toy_root):
    toy = build_dataset({"type": "toy_reach", **TOY, "expert_noise": 0.01})
    exported = build_dataset({"type": "lerobot", "root": str(toy_root)})
    assert len(exported) == len(toy)
    for i in (0, 29, 30, len(toy) - 1):
        item = exported[i]
        np.testing.assert_array_equal(item["observation.state"].numpy(), toy.state[i])
        np.testing.assert_array_equal(item["action"].numpy(), toy.action[i])
        image = toy.read_frames(IMAGE_KEY, np.array([i]))[0]
        # PNG is lossless; the only loss is the uint8 rounding of the float image
        assert (item[IMAGE_KEY].numpy() - image).__abs__().max() <= 0.5 / 255 + 1e-6


def test_vla_train_runs_on_a_lerobot_dataset(toy_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", config(toy_root, tmp_path / "run", steps=8))
    assert main(["train", str(cfg)]) == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 8 and all(np.isfinite(losses))
    policy = VLAPolicy.from_pretrained(tmp_path / "run" / "pretrained")
    stats = policy.normalizer.stats_of("observation.state")
    assert torch.isfinite(stats["mean"]).all() and (stats["std"] > 0).all()


@pytest.mark.slow
def test_vla_train_runs_on_a_lerobot_dataset_with_two_ranks(toy_root, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", config(toy_root, tmp_path / "run", steps=4))
    proc = run_vla(["train", str(cfg)], nproc=2)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "run" / "pretrained" / "model.safetensors").is_file()
    assert str(tmp_path / "run") in out.strip().splitlines()[-1]
