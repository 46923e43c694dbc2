"""Our LeRobot v3.0 reader returns LeRobot 0.6.1's own items, on datasets LeRobot itself recorded.

The peer script (tests/peer_scripts/lerobot_dataset_items.py, LeRobot 0.6.1 venv) records a dataset with
``LeRobotDataset.create`` + ``add_frame`` + ``save_episode`` (a video camera, an image camera stored in
parquet, state, environment state, action, reward, two tasks; tiny file-size limits so that data and
video files hold several episodes and there are several files), then dumps ``dataset[i]`` for chosen
indices, windows and episode selections. It also dumps LeRobot's items of a dataset written by our
converter, which shows LeRobot reads what we write. Tabular values must be equal exactly, decoded frames
within codec tolerance (both sides decode with PyAV/FFmpeg; their FFmpeg builds may differ).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from vla_train.data.lerobot import LeRobotV3Dataset
from vla_train.data.lerobot.convert_toy import convert_toy

pytestmark = pytest.mark.peer

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "lerobot_dataset_items.py"
VIDEO_ATOL = 3 / 255  # decoded frames: the two FFmpeg builds may round colour conversion differently
WINDOWS = {
    "action": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    "observation.state": [-0.2, -0.1, 0.0],
    "observation.environment_state": [-0.1, 0.0],
    "observation.images.cam": [-0.1, 0.0, 0.1],
    "observation.images.wrist": [-0.1, 0.0],
    "next.reward": [0.0, 0.1],
}
# Episode lengths 7, 12, 8, 13, 9, 14 -> starts 0, 7, 19, 27, 40, 49; 63 frames.
EDGES = [0, 1, 5, 6, 7, 8, 18, 19, 26, 27, 39, 40, 48, 49, 55, 61, 62]
SELECTED = [1, 3, 4]  # 12 + 13 + 9 = 34 frames


def _toy_episodes(seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(3):
        n = 6 + 2 * e
        yy, xx = np.mgrid[0:24, 0:32]
        images = np.stack(
            [np.stack([xx * 6 + 5 * t, yy * 8 + 3 * t, (xx + yy + 9 * t) * 3], -1) % 256 for t in range(n)]
        ).astype(np.uint8)
        episodes.append(
            {
                "observation.image": images,
                "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
                "action": rng.normal(size=(n, 2)).astype(np.float32),
                "task": ["reach the red target", "reach the blue target"][e % 2],
            }
        )
    return episodes


@pytest.fixture(scope="module")
def peer_dumps(lerobot_061_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("lerobot_parity")
    recorded, ours = tmp / "recorded", tmp / "ours_written"
    convert_toy(_toy_episodes(), ours, fps=10, episodes_per_file=2)
    cases = {
        "plain": {"root": str(recorded), "indices": EDGES},
        "windows": {"root": str(recorded), "indices": EDGES, "delta": WINDOWS},
        "selected": {
            "root": str(recorded),
            "indices": list(range(34)),
            "delta": WINDOWS,
            "episodes": SELECTED,
        },
        "ours_written": {
            "root": str(ours),
            "indices": list(range(24)),
            "delta": {"action": [0.0, 0.1, 0.2, 0.3], "observation.images.top": [-0.1, 0.0]},
        },
    }
    plan = {
        "make": [{"root": str(recorded), "episodes": 6, "video_mb": 0.025, "data_mb": 0.045, "seed": 0}],
        "dump": [dict(case, out=str(tmp / f"{name}.safetensors")) for name, case in cases.items()],
    }
    (tmp / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run(
        [str(lerobot_061_python), str(SCRIPT), str(tmp / "plan.json")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"recorded": recorded, "cases": cases, "tmp": tmp}


def _reference(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), "pt") as f:
        other = json.loads(f.metadata()["other"])
    return load_file(str(path)), other


def _compare(ds: LeRobotV3Dataset, path: Path, indices: list[int]) -> None:
    ref, other = _reference(path)
    assert len(ds) == int(ref["len"])
    video = set(ds.meta.video_keys)
    for i in indices:
        item = ds[i]
        want = {k.split("/", 1)[1] for k in [*ref, *other] if k.startswith(f"{i}/")}
        assert set(item) == want, f"index {i}: keys differ by {sorted(set(item) ^ want)}"
        for key in want:
            theirs = ref.get(f"{i}/{key}", other.get(f"{i}/{key}"))
            mine = item[key]
            if not isinstance(theirs, torch.Tensor):
                assert mine == theirs, (i, key)
                continue
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, (
                i,
                key,
                mine.shape,
                theirs.shape,
            )
            if key in video:
                torch.testing.assert_close(mine, theirs, atol=VIDEO_ATOL, rtol=0, msg=f"index {i} {key}")
            else:
                assert torch.equal(mine, theirs), f"index {i} {key}:\n{mine}\n!=\n{theirs}"


def test_recorded_dataset_is_multi_episode_multi_file(peer_dumps: dict) -> None:
    ds = LeRobotV3Dataset(peer_dumps["recorded"])
    files = [ds.meta.data_file(e) for e in range(6)]
    videos = [ds.meta.video_file(e, "observation.images.cam") for e in range(6)]
    assert len(set(files)) >= 2 and len(set(files)) < 6, files
    assert len(set(videos)) >= 2 and len(set(videos)) < 6, videos
    assert ds.meta.video_keys == ["observation.images.cam"] and ds.meta.image_keys == [
        "observation.images.wrist"
    ]


@pytest.mark.parametrize("case", ["plain", "windows", "selected"])
def test_items_equal_lerobot(peer_dumps: dict, case: str) -> None:
    spec = peer_dumps["cases"][case]
    ds = LeRobotV3Dataset(spec["root"], delta_timestamps=spec.get("delta"), episodes=spec.get("episodes"))
    _compare(ds, peer_dumps["tmp"] / f"{case}.safetensors", spec["indices"])


def test_padding_at_episode_edges_matches_lerobot(peer_dumps: dict) -> None:
    ref, _ = _reference(peer_dumps["tmp"] / "windows.safetensors")
    # Last frame of episode 0 (index 6): all future actions but the first are padding.
    assert ref["6/action_is_pad"].tolist() == [False, True, True, True, True, True]
    assert ref["7/observation.state_is_pad"].tolist() == [True, True, False]
    ds = LeRobotV3Dataset(peer_dumps["recorded"], delta_timestamps=WINDOWS)
    item = ds[6]
    assert item["action_is_pad"].tolist() == [False, True, True, True, True, True]
    assert torch.equal(item["action"][1:], item["action"][:1].expand(5, -1))  # clamped to the last frame


def test_lerobot_reads_our_converter_output(peer_dumps: dict) -> None:
    spec = peer_dumps["cases"]["ours_written"]
    ds = LeRobotV3Dataset(spec["root"], delta_timestamps=spec["delta"])
    _compare(ds, peer_dumps["tmp"] / "ours_written.safetensors", spec["indices"])
