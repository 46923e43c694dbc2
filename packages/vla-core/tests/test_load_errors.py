"""Loading and saving policies: NaN/Inf weights refused, damaged files and configs named, a full disk
named and cleaned up, mistyped local paths never sent to the Hub."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import vla_core.checkpoint as ckpt
from safetensors import SafetensorError
from vla_core import (
    CheckpointError,
    CheckpointWriteError,
    ConfigError,
    VLAPolicy,
    load_checkpoint,
    load_tensors,
)
from vla_core.paths import inside, is_local_path
from vla_test_components import policy_config, set_unit_stats

SUPPORT = Path(__file__).resolve().parents[3] / "tests" / "support"


def make_policy():
    torch.manual_seed(0)
    return set_unit_stats(VLAPolicy.from_config(policy_config()))


@pytest.fixture
def saved(tmp_path):
    return make_policy().save_pretrained(tmp_path / "p")


def poison(directory: Path, name: str = "head.net.0.weight", value: float = float("nan")) -> None:
    tensors = load_tensors(directory / "model.safetensors")
    tensors[name].view(-1)[0] = value
    ckpt.save_safetensors(tensors, directory / "model.safetensors")


# ---------------------------------------------------------------------------------- NaN / Inf weights
def test_nan_weights_refuse_to_load_with_their_names(saved):
    poison(saved)
    poison(saved, "backbone.block.lin.bias", float("inf"))
    with pytest.raises(CheckpointError, match=r"model.safetensors: checkpoint holds 2 tensor\(s\) with NaN/Inf "
                                              r"values: backbone.block.lin.bias, head.net.0.weight.*allow_nonfinite"):
        VLAPolicy.from_pretrained(saved)
    policy = make_policy()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with pytest.raises(CheckpointError, match="head.net.0.weight"):
        load_checkpoint(policy, saved / "model.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())  # nothing loaded


def test_nan_weights_load_with_a_loud_warning_when_allowed(saved):
    poison(saved)
    with pytest.warns(RuntimeWarning, match=r"loading 1 tensor\(s\) with NaN/Inf values: head.net.0.weight"):
        policy = VLAPolicy.from_pretrained(saved, allow_nonfinite=True)
    assert torch.isnan(policy.head.net[0].weight[0, 0])


def test_unset_normalization_stats_are_not_broken_weights(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="normalization stats are not set"):
        VLAPolicy.from_config(policy_config()).save_pretrained(tmp_path / "p")  # stats never set: all NaN
    policy = VLAPolicy.from_pretrained(tmp_path / "p")
    with pytest.raises(RuntimeError, match="normalization stats for .* are not set"):
        policy.predict_action_chunk({"observation.images.top": torch.rand(1, 3, 8, 8),
                                     "observation.state": torch.zeros(1, 3)})
    poison(tmp_path / "p", "normalizer.stats.observation__state.mean", 1.0)  # partly set: broken
    with pytest.raises(CheckpointError, match="normalizer.stats.observation__state.mean"):
        VLAPolicy.from_pretrained(tmp_path / "p")


# ---------------------------------------------------------------------------------- damaged files
def test_truncated_and_bad_header_safetensors_name_the_file(saved):
    weights = saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file.*incomplete"):
        VLAPolicy.from_pretrained(saved)
    weights.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file.*header too large"):
        load_tensors(weights)


def test_corrupt_config_json_names_the_file(saved):
    config = saved / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    with pytest.raises(ConfigError, match=f"{config}: not a readable JSON policy config"):
        VLAPolicy.from_pretrained(saved)
    config.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=f"{config}: expected a JSON object, received list"):
        VLAPolicy.from_pretrained(saved)
    config.write_text(json.dumps({**json.loads(text), "n_obs_step": 2}))
    with pytest.raises(ConfigError, match=f"{config}: .*unknown field 'n_obs_step'"):
        VLAPolicy.from_pretrained(saved)


def test_a_corrupt_pickle_is_named_when_allowed(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=f"{path}: cannot be loaded as weights only"):
        load_tensors(path, allow_pickle=True)


# ---------------------------------------------------------------------------------- local paths
@pytest.mark.parametrize("name", ["./runs/policy", "/nonexistent/policy", "~/nonexistent-vla-policy",
                                  "runs/exp1/pretrained", "EXISTING/typo"])
def test_a_mistyped_local_path_says_so_and_never_asks_the_hub(name, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTING").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("asked the Hub"))
    assert is_local_path(name)
    with pytest.raises(FileNotFoundError, match=f"policy directory {name} does not exist.*never looked up"):
        VLAPolicy.from_pretrained(name)


def test_hub_ids_are_not_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_local_path("lerobot/act_aloha") and not is_local_path("gpt2")


def test_hub_failures_say_what_was_tried(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)

    def not_found(*args, **kwargs):
        raise OSError("404 Repository Not Found")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_found)
    with pytest.raises(FileNotFoundError, match="someone/nothing is no local directory, and the Hugging Face Hub "
                                                "gave no policy for it: OSError: 404"):
        VLAPolicy.from_pretrained("someone/nothing")


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../b"])
def test_paths_that_leave_their_root_are_refused(tmp_path, relative):
    with pytest.raises(ValueError, match=f"data_path {relative!r} leads to .*, outside {tmp_path}"):
        inside(tmp_path, relative, "data_path")
    assert inside(tmp_path, "a/./b/../c", "x") == tmp_path / "a" / "c"


# ---------------------------------------------------------------------------------- a full disk
def test_save_pretrained_on_a_full_disk_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    policy = make_policy()
    with pytest.raises(CheckpointWriteError, match=f"cannot save the policy to {tmp_path / 'new'}: .*No space left"):
        policy.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("kept")
    with pytest.raises(OSError, match="No space left"):  # also an OSError
        policy.save_pretrained(tmp_path / "old")
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["notes.txt"]


def test_save_pretrained_keeps_the_old_policy_when_the_config_write_fails(tmp_path, monkeypatch):
    make_policy().save_pretrained(tmp_path / "p")
    before = {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()}
    real = Path.write_text

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(CheckpointWriteError, match="No space left"):
        make_policy().save_pretrained(tmp_path / "p")
    monkeypatch.setattr(Path, "write_text", real)
    assert {p.name: p.read_bytes() for p in (tmp_path / "p").iterdir()} == before


def _tmpfs_unavailable() -> str | None:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"this machine does not allow mounting a tmpfs in a user namespace: {probe.stderr.strip()}"
    return None


@pytest.mark.skipif(_tmpfs_unavailable() is not None, reason=str(_tmpfs_unavailable()))
def test_save_pretrained_on_a_real_full_tmpfs(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import json, sys, torch
        sys.path.insert(0, {str(SUPPORT)!r})
        from vla_test_components import policy_config
        from vla_core import CheckpointWriteError, VLAPolicy
        policy = VLAPolicy.from_config(policy_config(head={{"type": "test_mlp", "hidden_dim": 4096}}))
        try:
            policy.save_pretrained({str(mount / "p")!r})
            print(json.dumps({{"error": None}}))
        except CheckpointWriteError as err:
            print(json.dumps({{"error": str(err), "left": [str(p) for p in __import__("pathlib").Path({str(mount)!r}).rglob("*")]}}))
    """)
    done = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size=256k none {mount} && exec {sys.executable} -c \"$0\"", script],
                          capture_output=True, text=True, timeout=300, env={**os.environ}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is not None and f"cannot save the policy to {mount / 'p'}" in result["error"]
    assert "No space left on device" in result["error"]
    assert result["left"] == []


def test_saved_policy_files_are_readable_by_others(tmp_path):
    # mkstemp makes 0600 files; a saved policy gets the mode open() gives (0644 under umask 022)
    old = os.umask(0o022)
    try:
        directory = make_policy().save_pretrained(tmp_path / "p")
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (directory / name).stat().st_mode & 0o777 == 0o644, name


def test_saving_a_policy_without_stats_warns_by_key(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"normalization stats are not set for \[.*'action'.*\]"):
        VLAPolicy.from_config(policy_config()).save_pretrained(tmp_path / "p")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_policy().save_pretrained(tmp_path / "q")  # stats set: silent
