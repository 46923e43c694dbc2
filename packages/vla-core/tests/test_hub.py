"""Publishing on the Hub without a network: the model card's metadata and body, and the upload through
huggingface_hub's own ``upload_folder`` with only ``create_repo`` / ``create_commit`` (the HTTP calls) stubbed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from vla_core import VLAPolicy, load_policy
from vla_core.hub import card_for_directory, components, model_card
from vla_core.testing import policy_batch
from vla_test_components import policy_config, set_unit_stats

TRAIN = {"data": {"type": "toy_reach", "num_episodes": 8}, "steps": 5, "batch_size": 4}
EVAL = {"episodes": 10, "successes": 9, "success_rate": 0.9, "seed": 100000, "policy": "/somewhere/pretrained"}


def make_policy():
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy.from_config(policy_config()))


@pytest.fixture
def hub(monkeypatch):
    """Stub HfApi's two network calls (``create_repo``, ``upload_folder``); the upload stub selects files with
    huggingface_hub's own pattern filter and parses the card with its own parser, and records every byte."""
    calls = {"repos": [], "files": {}, "uploads": []}

    def create_repo(self, repo_id, **kwargs):
        calls["repos"].append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, **kwargs):
        calls["uploads"].append((repo_id, kwargs))
        names = [p.name for p in Path(folder_path).iterdir() if p.is_file()]
        for name in filter_repo_objects(names, allow_patterns=allow_patterns):
            calls["files"][name] = (Path(folder_path) / name).read_bytes()
        calls["validated"] = ModelCard(calls["files"]["README.md"].decode()).data.to_dict()
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def metadata(card_text: str) -> dict:
    head, _, _ = card_text.removeprefix("---\n").partition("\n---\n")
    return yaml.safe_load(head)


def test_the_card_carries_library_components_dataset_config_and_eval():
    config = {"type": "vla", **make_policy().config_to_save()}
    card = model_card(config, repo_id="me/act-toy", dataset="lerobot/pusht", dataset_id="lerobot/pusht",
                      train_config=TRAIN, eval_results=EVAL, tags=["act"])
    meta = metadata(str(card))
    assert meta["library_name"] == "vla" and meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "robotics"
    assert meta["datasets"] == ["lerobot/pusht"]
    assert meta["vla"]["components"] == {"policy": "vla", "backbone": "test_linear", "head": "test_mlp"}
    assert {"vla", "robotics", "test_linear", "test_mlp", "act"} <= set(meta["tags"])
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "success_rate", "value": 0.9, "name": "success rate"}]
    assert result["dataset"]["type"] == "lerobot/pusht"
    body = card.text
    assert 'load_policy("me/act-toy")' in body
    assert yaml.safe_load(body.split("```yaml\n")[1].split("```")[0]) == TRAIN
    assert "| success_rate | 0.9 |" in body and "/somewhere" not in body
    # huggingface_hub reads it back as a valid card
    assert ModelCard(str(card)).data.library_name == "vla"


def test_a_card_without_dataset_or_eval_has_no_such_metadata():
    meta = metadata(str(model_card({"type": "vla", "backbone": {"type": "b"}, "head": {"type": "h"}}, repo_id="a/b")))
    assert "datasets" not in meta and "model-index" not in meta
    assert components({"type": "vla", "backbone": {"type": "b"}, "head": {"type": "h"}, "x": 1}) == {
        "policy": "vla", "backbone": "b", "head": "h"}


def test_a_non_numeric_success_rate_is_refused():
    with pytest.raises(ValueError, match=r"eval_results\['success_rate'\]: expected a number, received 'high'"):
        model_card({"type": "vla"}, repo_id="a/b", eval_results={"success_rate": "high"})


def test_push_to_hub_uploads_a_policy_that_loads_back(hub, tmp_path):
    policy = make_policy()
    info = policy.push_to_hub("me/tiny", private=True, eval_results=EVAL, dataset="toy_reach")
    assert info.commit_url == "https://huggingface.co/me/tiny/commit/0"
    assert hub["repos"] == [("me/tiny", {"private": True, "exist_ok": True, "token": None})]
    assert set(hub["files"]) == {"config.json", "model.safetensors", "README.md"}
    assert hub["uploads"] == [("me/tiny", {"revision": None, "token": None, "commit_message": "Upload vla policy"})]
    for name, data in hub["files"].items():
        (tmp_path / name).write_bytes(data)
    loaded = load_policy(tmp_path)
    for name, tensor in policy.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, equal_nan=True)
    batch = policy_batch(policy)
    torch.testing.assert_close(loaded.select_action(batch), policy.eval().select_action(batch))
    meta = metadata(hub["files"]["README.md"].decode())
    assert hub["validated"]["library_name"] == "vla"
    assert meta["vla"]["components"]["head"] == "test_mlp"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.9


def test_card_for_directory_reads_train_config_and_eval(tmp_path):
    directory = make_policy().save_pretrained(tmp_path / "p")
    (directory / "train_config.yaml").write_text(yaml.safe_dump(TRAIN))
    (directory / "eval.json").write_text('{"success_rate": 0.5, "episodes": 4}')
    card = card_for_directory(directory, repo_id="me/p")
    assert "num_episodes: 8" in card.text and "| success_rate | 0.5 |" in card.text
