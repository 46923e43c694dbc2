"""User-caused errors: one line naming the file or key, exit status 2, no traceback; a full disk named
and cleaned up; YAML alias bombs refused before any key is read; local paths never sent to the Hub."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from safetensors import SafetensorError
from torch.distributed.checkpoint.api import CheckpointException
from train_helpers import HERE, tiny_config, write_config
from vla_core import CheckpointWriteError, ConfigError
from vla_train import cli
from vla_train.config import MAX_YAML_NODES, load_config
from vla_train.convert import convert_lerobot
from vla_train.convert.lerobot import read_lerobot_stats

SUPPORT = HERE.parents[2] / "tests" / "support"

BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


# ------------------------------------------------------------------------------------------- YAML
def test_a_yaml_alias_bomb_fails_fast_before_any_key_is_checked(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)  # 9**9 ~ 387M strings once expanded; also no valid key in it
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"{path}: YAML: the document expands to more than {MAX_YAML_NODES:,} nodes"):
        load_config(path)
    assert time.perf_counter() - start < 2
    assert "alias bomb" in one_line_error(capsys, ["train", str(path)])


def test_recursive_aliases_and_bad_yaml_are_named(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=f"{path}: YAML: an alias refers to a node that contains it"):
        load_config(path)
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_config(path)


def test_a_few_aliases_still_load(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    text = yaml.safe_dump(cfg).replace("lr: 0.001", "lr: &lr 0.001") + "seed: 3\n"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert load_config(path).seed == 3


# ------------------------------------------------------------------------------------------- CLI
def test_checkpoint_exception_prints_one_line(tmp_path, capsys, monkeypatch):
    from vla_train import trainer

    def fails(*args, **kwargs):
        try:
            raise ValueError("Size mismatch for head.net.0.weight")
        except ValueError as err:
            from torch.distributed.checkpoint.api import _wrap_exception

            raise CheckpointException("Failed to load", {0: _wrap_exception(err), 1: _wrap_exception(err)}) from None

    monkeypatch.setattr(trainer, "train", fails)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run"))
    line = one_line_error(capsys, ["train", str(config), "--resume"])
    assert line == ("vla train: error: torch.distributed.checkpoint failed on rank 0: ValueError: Size mismatch "
                    "for head.net.0.weight; rank 1: ValueError: Size mismatch for head.net.0.weight")


@pytest.mark.parametrize("command", [["eval", "runs/typo"], ["info", "./runs/typo"], ["eval", "/nonexistent/run"],
                                     ["convert", "lerobot", "runs/lerobot_act", "out"]])
def test_mistyped_local_paths_say_they_do_not_exist(tmp_path, capsys, monkeypatch, command):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("asked the Hub"))
    line = one_line_error(capsys, command)
    assert f"{command[-2] if command[0] == 'convert' else command[-1]} does not exist" in line
    assert "never looked up on the Hugging Face Hub" in line


def test_corrupt_converter_inputs_name_the_file(tmp_path, capsys):
    src = tmp_path / "lerobot"
    src.mkdir()
    (src / "config.json").write_text('{"type": "act", ')
    assert f"{src / 'config.json'}: not readable JSON" in one_line_error(capsys, ["convert", "lerobot", str(src),
                                                                               str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="config.json: expected a JSON object"):
        (src / "config.json").write_text("[]")
        convert_lerobot(src, tmp_path / "out")


@pytest.mark.parametrize("state_file", ["../stats.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_converter_stats_files_must_stay_inside_the_source(tmp_path, state_file):
    src = tmp_path / "lerobot"
    src.mkdir()
    (tmp_path / "stats.safetensors").write_bytes(b"")
    steps = [{"registry_name": "normalizer_processor", "state_file": state_file}]
    (src / "policy_preprocessor.json").write_text(json.dumps({"steps": steps}))
    with pytest.raises(ValueError, match=f"policy_preprocessor.json: state_file '{state_file}' leads to .*, "
                                         f"outside {src}"):
        read_lerobot_stats(src)


def test_corrupt_training_spec_of_a_policy_is_named(tmp_path, capsys):
    pretrained = tmp_path / "p"
    pretrained.mkdir()
    (pretrained / "config.json").write_text("{}")
    (pretrained / "train_config.yaml").write_text("data: [unclosed\n")
    assert f"{pretrained / 'train_config.yaml'}: not valid YAML" in one_line_error(capsys, ["eval", str(pretrained)])


# ------------------------------------------------------------------------------------------- a full disk
def test_a_full_disk_during_a_checkpoint_names_it_and_removes_the_partial_one(tmp_path, monkeypatch):
    import vla_core.checkpoint as core_checkpoint
    from vla_train.config import TrainConfig
    from vla_train.trainer import Trainer

    trainer = Trainer(TrainConfig.from_dict(tiny_config(tmp_path / "run", checkpoint={"every": 1})))
    trainer.train_step()
    trainer.step = 1
    trainer.checkpointer.save(1, trainer.state())

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(core_checkpoint, "save_file", full)
    ckpts = tmp_path / "run" / "checkpoints"
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint {ckpts / 'step_00000002'}: cannot "
                                                   f"write .*state.safetensors: .*No space left on device"):
        trainer.checkpointer.save(2, trainer.state())
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000001"]
    assert (ckpts / "latest").read_text().strip() == "step_00000001"
    trainer.close()


def _tmpfs_unavailable() -> str | None:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"this machine does not allow mounting a tmpfs in a user namespace: {probe.stderr.strip()}"
    return None


@pytest.mark.skipif(_tmpfs_unavailable() is not None, reason=str(_tmpfs_unavailable()))
def test_a_real_full_tmpfs_during_training(tmp_path):
    """A 1 MiB tmpfs holds the run; it is filled up before the second checkpoint, which then fails cleanly."""
    mount = tmp_path / "small"
    mount.mkdir()
    cfg = tiny_config(mount / "run", steps=4, checkpoint={"every": 2, "keep_last": 5})
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(SUPPORT)!r}, {str(HERE)!r}]
        import vla_test_components
        from pathlib import Path
        from vla_core import CheckpointWriteError
        from vla_train.config import TrainConfig
        from vla_train.trainer import Trainer
        trainer = Trainer(TrainConfig.from_dict(json.loads({json.dumps(json.dumps(cfg))})))
        for step in (1, 2):
            trainer.train_step()
            trainer.step = step
        trainer.checkpointer.save(2, trainer.state())
        import os
        fd = os.open({str(mount / "filler")!r}, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk, then give back the last 16 KiB
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            pass
        os.ftruncate(fd, os.fstat(fd).st_size - 16384)
        os.close(fd)
        trainer.train_step()
        trainer.step = 3
        try:
            trainer.checkpointer.save(4, trainer.state())
            error = None
        except CheckpointWriteError as err:
            error = str(err)
        ckpts = Path({str(mount / "run" / "checkpoints")!r})
        print(json.dumps({{"error": error, "left": sorted(p.name for p in ckpts.iterdir()),
                           "latest": (ckpts / "latest").read_text().strip()}}))
    """)
    done = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size=1m none {mount} && exec {sys.executable} -c \"$0\"", script],
                          capture_output=True, text=True, timeout=300, env={**os.environ}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is not None, result
    assert f"cannot write checkpoint {mount / 'run' / 'checkpoints' / 'step_00000004'}" in result["error"]
    assert "No space left on device" in result["error"]
    assert result["left"] == ["latest", "step_00000002"] and result["latest"] == "step_00000002"
