"""``vla push RUN_DIR REPO_ID`` without a network: HfApi's ``create_repo`` / ``upload_folder`` stubbed; the card
carries the components, the dataset, the training config and the eval results of the run."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from train_helpers import tiny_config
from vla_core import load_policy
from vla_train import cli
from vla_train.config import TrainConfig
from vla_train.push import dataset_of
from vla_train.trainer import train


@pytest.fixture
def hub(monkeypatch):
    calls = {"repos": [], "files": {}}

    def create_repo(self, repo_id, **kwargs):
        calls["repos"].append((repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        names = [p.name for p in Path(folder_path).iterdir() if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            calls["files"][name] = (Path(folder_path) / name).read_bytes()
        calls["kwargs"] = kwargs
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_vla_push_uploads_the_run_with_its_card(tmp_path, hub, capsys, monkeypatch):
    run_dir = train(TrainConfig.from_dict(tiny_config(tmp_path / "run", log={"every": 1, "progress": False,
                                                                             "plot": False})))
    assert cli.main(["eval", str(run_dir), "--episodes", "4"]) == 0
    monkeypatch.setenv("MY_TOKEN", "hf_secret")
    capsys.readouterr()
    assert cli.main(["push", str(run_dir), "me/toy", "--private", "--token-env", "MY_TOKEN", "--message", "m"]) == 0
    assert capsys.readouterr().out.strip() == "pushed to https://huggingface.co/me/toy/commit/abc"
    assert hub["repos"] == [("me/toy", {"private": True, "exist_ok": True, "token": "hf_secret"})]
    assert hub["kwargs"]["commit_message"] == "m" and hub["kwargs"]["token"] == "hf_secret"
    assert set(hub["files"]) == {"config.json", "model.safetensors", "train_config.yaml", "eval.json", "README.md"}
    card = ModelCard(hub["files"]["README.md"].decode())
    assert card.data.library_name == "vla" and "vla-train" in card.data.tags
    assert card.data.vla["components"] == {"policy": "vla", "backbone": "test_linear", "head": "test_mlp"}
    assert card.data.eval_results[0].metric_type == "success_rate"
    assert "toy_reach (built into vla-train)" in card.text and "num_episodes: 8" in card.text
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "pulled").mkdir(exist_ok=True)
        (tmp_path / "pulled" / name).write_bytes(hub["files"][name])
    assert load_policy(tmp_path / "pulled").config.head["type"] == "test_mlp"


def test_vla_push_of_a_missing_run_is_one_line(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["push", "./runs/typo", "me/x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    assert hub["repos"] == []


@pytest.mark.parametrize(("data", "expected"), [
    ({"type": "toy_reach"}, ("toy_reach (built into vla-train)", None)),
    ({"type": "lerobot", "root": "lerobot/pusht"}, ("lerobot/pusht", "lerobot/pusht")),
    ({"type": "lerobot", "root": "/data/pusht"}, ("/data/pusht", None)),
    (None, (None, None)),
])
def test_the_dataset_goes_into_the_metadata_only_when_it_is_a_hub_id(data, expected):
    assert dataset_of({"data": data} if data else {}) == expected
