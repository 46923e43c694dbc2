"""The ``vla`` command as a new user meets it: help without loading torch, one-line errors (exit 2) for a
machine without CUDA and for components whose package is not installed (naming the extra)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from train_helpers import tiny_config, write_config
from vla_train import cli

COMMANDS = [[], ["train"], ["eval"], ["serve"], ["push"], ["configs"], ["info"], ["convert"], ["convert", "lerobot"],
            ["convert", "groot"], ["convert", "toy"]]


def one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_help_of_every_command_imports_neither_torch_nor_vla_core():
    code = (
        "import sys, time\n"
        "from vla_train.cli import main\n"
        f"for argv in {COMMANDS!r}:\n"
        "    try:\n"
        "        main([*argv, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "loaded = [m for m in ('torch', 'vla_core', 'numpy') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("usage: vla") == len(COMMANDS)


def test_cuda_asked_on_a_machine_without_it_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    line = one_line_error(capsys, ["train", str(config), "--set", "parallel.device=cuda"])
    assert "parallel.device" in line and "'cuda'" in line and "parallel.device=cpu" in line


@pytest.mark.parametrize("missing", ["vla_backbones", "vla_heads"])
def test_an_unknown_component_without_the_models_extra_names_the_extra(tmp_path, capsys, monkeypatch, missing):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else find_spec(name, *a))
    cfg = tiny_config(tmp_path / "run")
    cfg["policy"]["backbone"] = {"type": "eagel"}
    line = one_line_error(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg))])
    assert "unknown backbone type 'eagel'" in line and "pip install 'vla-train[models]'" in line


def test_an_unknown_component_with_the_models_installed_gives_no_extra_hint(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "run")
    cfg["policy"]["backbone"] = {"type": "eagel"}
    line = one_line_error(capsys, ["train", str(write_config(tmp_path / "c.yaml", cfg))])
    assert "Did you mean 'eagle'?" in line and "vla-train[models]" not in line


def test_training_without_matplotlib_skips_the_plot_and_says_which_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if the `plot` extra were not installed
    cfg = tiny_config(tmp_path / "run", log={"every": 1, "progress": False, "plot": True})
    assert cli.main(["train", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    assert "loss.png not drawn: matplotlib is not installed (pip install 'vla-train[plot]')" in capsys.readouterr().out
    assert not (tmp_path / "run" / "loss.png").exists() and (tmp_path / "run" / "pretrained").is_dir()


def test_the_compile_modes_offered_are_vla_cores():
    from vla_core import COMPILE_MODES

    assert cli.COMPILE_MODES == tuple(COMPILE_MODES)
