"""Shipped configs by name: ``vla train quickstart`` from any directory, ``vla configs``, a file path wins."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from vla_train import cli
from vla_train.builtin_configs import builtin_configs, config_dir, resolve_config
from vla_train.config import load_config

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = {"act", "diffusion_pusht", "groot_n15", "groot_tiny", "lerobot_act", "lerobot_diffusion", "pi0", "pi05",
           "pi05_tiny", "pi05_toy", "pi0_tiny", "quickstart", "toy_flow"}


def test_the_configs_ship_inside_the_package_and_the_repo_path_still_works():
    assert set(builtin_configs()) == SHIPPED
    assert config_dir().parent == Path(cli.__file__).parent
    assert (ROOT / "configs").resolve() == config_dir().resolve()
    for path in builtin_configs().values():
        assert "policy" in yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml"])
def test_a_name_resolves_from_any_directory(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(name) == config_dir() / "quickstart.yaml"
    config = load_config(name, ["steps=7", "output_dir=elsewhere"])
    assert config.steps == 7 and config.output_dir == "elsewhere" and config.batch_size == 16


def test_a_file_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = yaml.safe_load((config_dir() / "quickstart.yaml").read_text())
    Path("quickstart").write_text(yaml.safe_dump({**data, "steps": 3}))
    assert resolve_config("quickstart") == Path("quickstart")
    assert load_config("quickstart").steps == 3


@pytest.mark.parametrize("name", ["quikstart", "sub/quickstart", "quickstart.yml"])
def test_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", name]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"training config not found: {name}" in err and "quickstart" in err and "vla configs" in err


def test_vla_configs_lists_and_prints(capsys):
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == sorted(SHIPPED)
    assert "toy reach task" in next(line for line in lines if line.startswith("quickstart"))
    assert cli.main(["configs", "quickstart"]) == 0
    assert capsys.readouterr().out == (config_dir() / "quickstart.yaml").read_text()
