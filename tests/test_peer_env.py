"""The peer (LeRobot) side venvs exist and import both LeRobot and our packages."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer

_PROBE = r"""
import importlib, importlib.metadata as md, json, sys
mods = sys.argv[1:]
for m in mods:
    importlib.import_module(m)
import lerobot
print(json.dumps({
    "python": list(sys.version_info[:2]),
    "lerobot_attr": getattr(lerobot, "__version__", None),
    "lerobot": md.version("lerobot"),
    "transformers": md.version("transformers"),
    "flash_attn": importlib.util.find_spec("flash_attn") is not None,
    "vla_core_file": importlib.import_module("vla_core").__file__,
}))
"""


def _probe(python: Path, *modules: str) -> dict:
    proc = subprocess.run(
        [str(python), "-c", _PROBE, *modules], capture_output=True, text=True, timeout=900, check=False
    )
    assert proc.returncode == 0, f"probe failed in {python}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _is_ours_editable(vla_core_file: str) -> bool:
    repo = Path(__file__).resolve().parent.parent
    return Path(vla_core_file).resolve().is_relative_to(repo / "packages" / "vla-core" / "src")


def test_lerobot_061_peer(lerobot_061_python: Path) -> None:
    info = _probe(
        lerobot_061_python,
        "lerobot",
        "vla_core",
        "lerobot.policies.act.modeling_act",
        "lerobot.policies.diffusion.modeling_diffusion",
        "lerobot.policies.pi0.modeling_pi0",
    )
    assert info["python"] == [3, 12]
    assert info["lerobot"] == "0.6.1"
    assert info["lerobot_attr"] in (None, "0.6.1")
    assert _is_ours_editable(info["vla_core_file"]), info["vla_core_file"]


def test_lerobot_051_peer(lerobot_051_python: Path) -> None:
    info = _probe(
        lerobot_051_python,
        "lerobot",
        "vla_core",
        "lerobot.policies.groot",
        "lerobot.policies.groot.action_head.flow_matching_action_head",
        "lerobot.policies.groot.eagle2_hg_model.modeling_eagle2_5_vl",
    )
    assert info["python"] == [3, 12]
    assert info["lerobot"] == "0.5.1"
    assert info["lerobot_attr"] in (None, "0.5.1")
    assert info["transformers"] == "5.3.0"
    assert not info["flash_attn"]
    assert _is_ours_editable(info["vla_core_file"]), info["vla_core_file"]
