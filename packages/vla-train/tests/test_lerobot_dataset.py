"""LeRobot v3.0 reader on datasets written by our converter: round trip, windows, splits and errors."""

from __future__ import annotations

import gc
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import ConfigError, FeatureType, Normalizer
from vla_train.data import build_dataset
from vla_train.data.lerobot import (
    FrameTimestampError,
    LeRobotDataError,
    LeRobotV3Dataset,
    VideoDecodeError,
)
from vla_train.data.lerobot.convert_toy import convert_toy, episodes_from_arrays

FPS = 10
LENGTHS = (6, 9, 4, 7)
CAM = "observation.images.top"


def _episodes(seed: int = 0) -> list[dict]:
    """Toy-task-like episodes: a smooth image with a moving square, state, action, task."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e, n in enumerate(LENGTHS):
        images = np.zeros((n, 32, 32, 3), np.uint8)
        images[..., 2] = 40
        for t in range(n):
            x = 2 + 3 * t + e
            images[t, 8:16, x : x + 8] = (220, 60, 30)
        episodes.append(
            {
                "observation.image": images,
                "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
                "action": rng.normal(size=(n, 3)).astype(np.float32),
                "task": ["reach red", "reach blue"][e % 2],
            }
        )
    return episodes


@pytest.fixture(scope="module")
def episodes() -> list[dict]:
    return _episodes()


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory, episodes: list[dict]) -> Path:
    return convert_toy(
        episodes, tmp_path_factory.mktemp("png") / "ds", fps=FPS, video=False, episodes_per_file=3
    )


@pytest.fixture(scope="module")
def video_root(tmp_path_factory: pytest.TempPathFactory, episodes: list[dict]) -> Path:
    return convert_toy(
        episodes, tmp_path_factory.mktemp("mp4") / "ds", fps=FPS, video=True, episodes_per_file=3
    )


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _frame_of(episodes: list[dict], index: int) -> tuple[int, int]:
    starts = np.cumsum((0, *LENGTHS))
    ep = int(np.searchsorted(starts, index, side="right") - 1)
    return ep, index - int(starts[ep])


# ------------------------------------------------------------------------------------- round trip


def test_converter_round_trip_images_exact(image_root: Path, episodes: list[dict]) -> None:
    ds = LeRobotV3Dataset(image_root)
    assert len(ds) == sum(LENGTHS) and ds.num_episodes == len(LENGTHS) and ds.fps == FPS
    for i in range(len(ds)):
        item = ds[i]
        ep, t = _frame_of(episodes, i)
        want = torch.from_numpy(episodes[ep]["observation.image"][t]).permute(2, 0, 1).float() / 255
        assert torch.equal(item[CAM], want)
        assert torch.equal(item["observation.state"], torch.from_numpy(episodes[ep]["observation.state"][t]))
        assert torch.equal(item["action"], torch.from_numpy(episodes[ep]["action"][t]))
        assert item["task"] == episodes[ep]["task"]
        assert (int(item["episode_index"]), int(item["frame_index"]), int(item["index"])) == (ep, t, i)
        assert item["timestamp"].item() == pytest.approx(t / FPS)


def test_converter_round_trip_video_within_codec_tolerance(video_root: Path, episodes: list[dict]) -> None:
    ds = LeRobotV3Dataset(video_root)
    assert ds.meta.video_keys == [CAM]
    assert len({ds.meta.video_file(e, CAM) for e in range(len(LENGTHS))}) == 2  # 3 episodes share a file
    for i in range(len(ds)):
        item = ds[i]
        ep, t = _frame_of(episodes, i)
        want = torch.from_numpy(episodes[ep]["observation.image"][t]).permute(2, 0, 1).float() / 255
        assert item[CAM].shape == (3, 32, 32) and item[CAM].dtype == torch.float32
        assert (item[CAM] - want).abs().mean() < 0.03, f"frame {i} decoded far from what was written"
        # the decoded frame is the right one: the square is where frame t put it, not where t +- 1 did
        others = [episodes[ep]["observation.image"][s] for s in (t - 1, t + 1) if 0 <= s < LENGTHS[ep]]
        for other in others:
            other_t = torch.from_numpy(other).permute(2, 0, 1).float() / 255
            assert (item[CAM] - want).abs().mean() < (item[CAM] - other_t).abs().mean()
        assert torch.equal(item["action"], torch.from_numpy(episodes[ep]["action"][t]))


def test_flat_toy_arrays_convert_and_read_back(tmp_path: Path, episodes: list[dict]) -> None:
    """The toy generator's flat layout (float CHW images, episode_index) round-trips through the converter."""
    images = np.concatenate([ep["observation.image"] for ep in episodes]).transpose(0, 3, 1, 2) / 255.0
    state = np.concatenate([ep["observation.state"] for ep in episodes])
    action = np.concatenate([ep["action"] for ep in episodes])
    episode_index = np.repeat(np.arange(len(LENGTHS)), LENGTHS)
    split = episodes_from_arrays(images, state, action, episode_index, [ep["task"] for ep in episodes])
    assert [len(ep["action"]) for ep in split] == list(LENGTHS)
    ds = LeRobotV3Dataset(convert_toy(split, tmp_path / "flat", fps=FPS, video=False))
    for i in (0, 5, 6, 20, len(ds) - 1):
        assert torch.equal(ds[i][CAM], torch.from_numpy(images[i]).float())
        assert torch.equal(ds[i]["action"], torch.from_numpy(action[i]))
    with pytest.raises(ValueError, match="contiguous"):
        episodes_from_arrays(images[:4], state[:4], action[:4], np.array([0, 1, 0, 1]), "x")


def test_features_and_stats_feed_the_normalizer(image_root: Path, episodes: list[dict]) -> None:
    ds = LeRobotV3Dataset(image_root)
    feats = ds.features
    assert feats[CAM].type is FeatureType.VISUAL and feats[CAM].shape == (3, 32, 32)
    assert feats["observation.state"].type is FeatureType.STATE and feats["observation.state"].shape == (2,)
    assert feats["action"].type is FeatureType.ACTION and feats["action"].shape == (3,)
    assert feats["task"].type is FeatureType.LANGUAGE
    assert "timestamp" not in feats and "index" not in feats
    actions = np.concatenate([ep["action"] for ep in episodes])
    stats = ds.stats["action"]
    assert set(stats) == {"mean", "std", "min", "max", "q01", "q99"}
    np.testing.assert_allclose(stats["mean"], actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-5)
    assert ds.stats[CAM]["mean"].shape == (3, 1, 1)
    norm = Normalizer(feats, modes={"VISUAL": "mean_std", "STATE": "min_max", "ACTION": "quantile"})
    norm.set_stats(ds.stats)
    x = torch.from_numpy(actions)
    y = norm.normalize("action", x)
    assert y.min() >= -1.2 and y.max() <= 1.2
    torch.testing.assert_close(norm.unnormalize("action", y), x)


# ----------------------------------------------------------------------------------------- windows


@settings(max_examples=25, deadline=None)
@given(
    index=st.integers(0, sum(LENGTHS) - 1),
    action=st.lists(st.integers(-3, 8), min_size=1, max_size=6),
    state=st.lists(st.integers(-4, 1), min_size=1, max_size=3),
)
def test_windows_clamp_and_pad_like_lerobot(
    image_root: Path, episodes: list[dict], index, action, state
) -> None:
    delta = {
        "action": [d / FPS for d in action],
        "observation.state": [d / FPS for d in state],
        CAM: [d / FPS for d in state],
    }
    item = LeRobotV3Dataset(image_root, delta_timestamps=delta)[index]
    ep, t = _frame_of(episodes, index)
    n = LENGTHS[ep]
    for key, offsets in (("action", action), ("observation.state", state)):
        want = np.stack([episodes[ep][key][min(max(t + d, 0), n - 1)] for d in offsets])
        assert torch.equal(item[key], torch.from_numpy(want))
        assert item[f"{key}_is_pad"].tolist() == [not 0 <= t + d < n for d in offsets]
    frames = np.stack([episodes[ep]["observation.image"][min(max(t + d, 0), n - 1)] for d in state])
    assert torch.equal(item[CAM], torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255)


def test_dataloader_workers_return_the_same_items(video_root: Path) -> None:
    delta = {"action": [0.0, 0.1, 0.2], CAM: [-0.1, 0.0]}
    ds = LeRobotV3Dataset(video_root, delta_timestamps=delta)
    ds[0]  # open a container in the parent: workers must not reuse it
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["task"]) for b in batches) == len(ds)
    first = batches[0]
    assert first[CAM].shape == (5, 2, 3, 32, 32) and first["action"].shape == (5, 3, 3)
    assert first["action_is_pad"].dtype == torch.bool
    for j in range(5):
        assert torch.equal(first[CAM][j], ds[j][CAM])
        assert first["task"][j] == ds[j]["task"]


def _collect_garbage(_: int) -> None:
    gc.collect()


def test_workers_survive_datasets_freed_after_fork(video_root: Path) -> None:
    """A dataset that decoded in the parent and is freed in a worker must not hang the worker."""
    gc.disable()
    try:
        old = LeRobotV3Dataset(video_root)
        old[0]
        old.cycle = old  # only the cycle collector frees it: in the worker, by _collect_garbage
        del old
        ds = LeRobotV3Dataset(video_root, delta_timestamps={CAM: [-0.1, 0.0]})
        ds[1]
        loader = torch.utils.data.DataLoader(
            ds, batch_size=4, num_workers=2, timeout=120, worker_init_fn=_collect_garbage
        )
        assert sum(len(b["task"]) for b in loader) == len(ds)
    finally:
        gc.enable()


def test_trainer_protocol_delta_indices_and_read_frames(video_root: Path, episodes: list[dict]) -> None:
    by_seconds = LeRobotV3Dataset(video_root, delta_timestamps={"action": [-0.1, 0.0, 0.1, 0.2]})
    by_frames = build_dataset(
        {"type": "lerobot", "root": str(video_root), "delta_indices": {"action": [-1, 0, 1, 2]}}
    )
    for i in (0, 5, 6, 20, len(by_frames) - 1):
        assert torch.equal(by_frames[i]["action"], by_seconds[i]["action"])
        assert torch.equal(by_frames[i]["action_is_pad"], by_seconds[i]["action_is_pad"])
    with pytest.raises(LeRobotDataError, match="unknown feature.*'observation.velocity'"):
        by_frames.set_delta_indices({"observation.velocity": [0]})
    idx = np.array([0, 4, 7, 16, 25])
    actions = by_frames.read_frames("action", idx)
    assert actions.dtype == np.float32 and actions.shape == (5, 3)
    want = np.stack([episodes[_frame_of(episodes, i)[0]]["action"][_frame_of(episodes, i)[1]] for i in idx])
    np.testing.assert_array_equal(actions, want)
    images = by_frames.read_frames(CAM, idx)
    assert images.dtype == np.float32 and images.shape == (5, 3, 32, 32)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(images[j], by_frames[int(i)][CAM].numpy())


def test_image_transforms_apply_to_cameras(image_root: Path) -> None:
    ds = LeRobotV3Dataset(image_root, image_transforms=lambda x: 1 - x)
    plain = LeRobotV3Dataset(image_root)
    assert torch.equal(ds[3][CAM], 1 - plain[3][CAM])
    assert torch.equal(ds[3]["action"], plain[3]["action"])


# -------------------------------------------------------------------------------------------- splits


def test_episode_split_train_val(image_root: Path) -> None:
    train = build_dataset({"type": "lerobot", "root": str(image_root), "episodes": "0:3"})
    val = build_dataset({"type": "lerobot", "root": str(image_root), "episodes": [3]})
    assert len(train) == sum(LENGTHS[:3]) and len(val) == LENGTHS[3]
    assert {int(train[i]["episode_index"]) for i in range(len(train))} == {0, 1, 2}
    assert {int(val[i]["episode_index"]) for i in range(len(val))} == {3}
    assert torch.equal(val[0]["action"], LeRobotV3Dataset(image_root)[sum(LENGTHS[:3])]["action"])
    sel = LeRobotV3Dataset(image_root, episodes=[3, 1], delta_timestamps={"action": [-0.1, 0.0, 0.1]})
    assert len(sel) == LENGTHS[1] + LENGTHS[3]
    assert sel[0]["action_is_pad"].tolist() == [True, False, False]  # windows stay inside episodes


def test_bad_config_and_selection_errors(image_root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field 'shuffle'"):
        build_dataset({"type": "lerobot", "root": str(image_root), "shuffle": True})
    with pytest.raises(ConfigError, match="'root'"):
        build_dataset({"type": "lerobot"})
    with pytest.raises(ConfigError, match="data.episodes"):
        build_dataset({"type": "lerobot", "root": str(image_root), "episodes": "first:last"})
    with pytest.raises(ConfigError, match="not both"):
        build_dataset(
            {"type": "lerobot", "root": str(image_root), "delta_timestamps": {"action": [0.0]},
             "delta_indices": {"action": [0]}}
        )
    with pytest.raises(LeRobotDataError, match=r"episodes \[7\]"):
        LeRobotV3Dataset(image_root, episodes=[0, 7])
    with pytest.raises(LeRobotDataError, match="not multiples of 1/fps"):
        LeRobotV3Dataset(image_root, delta_timestamps={"action": [0.0, 0.05]})
    with pytest.raises(IndexError):
        LeRobotV3Dataset(image_root)[sum(LENGTHS)]


# -------------------------------------------------------------------------------------------- errors


def test_unknown_feature_is_named(image_root: Path) -> None:
    with pytest.raises(LeRobotDataError, match=r"unknown feature\(s\) \['observation.velocity'\]"):
        LeRobotV3Dataset(image_root, delta_timestamps={"observation.velocity": [0.0]})


def test_missing_files_are_named(video_root: Path, tmp_path: Path) -> None:
    root = _copy(video_root, tmp_path)
    (root / "videos" / CAM / "chunk-000" / "file-001.mp4").unlink()
    with pytest.raises(LeRobotDataError, match=r"missing video file .*file-001\.mp4 \(episode 3"):
        LeRobotV3Dataset(root)
    LeRobotV3Dataset(root, episodes=[0, 1, 2])  # the other file's episodes still read
    (root / "data" / "chunk-000" / "file-000.parquet").unlink()
    with pytest.raises(LeRobotDataError, match=r"missing data file .*file-000\.parquet \(episode 0\)"):
        LeRobotV3Dataset(root, episodes=[0, 1, 2])
    (root / "meta" / "info.json").unlink()
    with pytest.raises(LeRobotDataError, match=r"missing file .*meta/info\.json"):
        LeRobotV3Dataset(root)


def test_missing_directory_and_old_version(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(LeRobotDataError, match="missing dataset directory"):
        LeRobotV3Dataset(tmp_path / "nope")
    root = _copy(image_root, tmp_path)
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotDataError, match="'v2.1' is not supported"):
        LeRobotV3Dataset(root)


def test_timestamp_outside_episode_is_named(video_root: Path, tmp_path: Path) -> None:
    ds = LeRobotV3Dataset(video_root)
    last = (LENGTHS[1] - 1) / FPS
    assert ds.frames_at(1, CAM, [0.0, last]).shape == (2, 3, 32, 32)
    with pytest.raises(FrameTimestampError, match=r"file-000\.mp4 \(episode 1.*outside the episode"):
        ds.frames_at(1, CAM, [last + 0.1])
    with pytest.raises(FrameTimestampError, match=r"\(episode 1.*outside"):
        ds.frames_at(1, CAM, [-0.1])
    # data timestamps out of sync with the video: the item read fails and names file and episode
    root = _copy(video_root, tmp_path)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    ts = table.column("timestamp").to_numpy().copy()
    ts[LENGTHS[0] + 2] += 0.05  # episode 1, frame 2: half a frame off
    table = table.set_column(table.column_names.index("timestamp"), "timestamp", pa.array(ts, pa.float32()))
    pq.write_table(table, path)
    bad = LeRobotV3Dataset(root)
    with pytest.raises(FrameTimestampError, match=r"file-000\.mp4 \(episode 1\).*tolerance_s"):
        bad[LENGTHS[0] + 2]
    assert bad[LENGTHS[0] + 3]["frame_index"].item() == 3  # its neighbours still read


def test_corrupt_video_is_named(video_root: Path, tmp_path: Path) -> None:
    root = _copy(video_root, tmp_path)
    path = root / "videos" / CAM / "chunk-000" / "file-001.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    ds = LeRobotV3Dataset(root)
    assert ds[0]["frame_index"].item() == 0  # episodes in the intact file still read
    with pytest.raises(VideoDecodeError, match=r"file-001\.mp4 \(episode 3\)"):
        ds[sum(LENGTHS[:3])]


def test_truncated_video_is_named(video_root: Path, tmp_path: Path) -> None:
    root = _copy(video_root, tmp_path)
    path = root / "videos" / CAM / "chunk-000" / "file-000.mp4"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    ds = LeRobotV3Dataset(root)
    with pytest.raises((VideoDecodeError, FrameTimestampError), match=r"file-000\.mp4 \(episode 2\)"):
        ds[sum(LENGTHS[:2]) + LENGTHS[2] - 1]


def test_hub_id_resolves_through_snapshot_download(monkeypatch: pytest.MonkeyPatch, image_root: Path) -> None:
    import huggingface_hub

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(image_root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ds = LeRobotV3Dataset("someone/toy_reach", revision="v3.0")
    assert len(ds) == sum(LENGTHS)
    assert calls == [{"repo_id": "someone/toy_reach", "repo_type": "dataset", "revision": "v3.0"}]


# ------------------------------------------------------------------------- info.json and paths outside the root


def _edit_info(root: Path, edit) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("edit,match", [
    (lambda i: i.update(fps=0), r"field 'fps' must be a positive integer \(frames per second\), received 0"),
    (lambda i: i.update(fps="ten"), r"field 'fps' must be a positive integer.*received 'ten'"),
    (lambda i: i["features"]["observation.state"].update(shape=[2, "x"]),
     r"field 'features.observation.state.shape' must be a list of positive integers, received \[2, 'x'\]"),
    (lambda i: i["features"]["action"].update(shape=-3),
     r"field 'features.action.shape' must be a list of positive integers, received -3"),
    (lambda i: i["features"]["action"].update(shape=[0]), r"field 'features.action.shape'.*received \[0\]"),
    (lambda i: i.update(features=[1, 2]), r"field 'features' must be a mapping"),
])
def test_bad_info_fields_are_named(image_root: Path, tmp_path: Path, edit, match) -> None:
    root = _copy(image_root, tmp_path)
    _edit_info(root, edit)
    with pytest.raises(LeRobotDataError, match=f"{root / 'meta/info.json'}: {match}"):
        LeRobotV3Dataset(root)


@pytest.mark.parametrize("fps", [30, 3, 11])
def test_an_fps_that_disagrees_with_the_timestamps_is_named(image_root: Path, tmp_path: Path, fps: int) -> None:
    root = _copy(image_root, tmp_path)
    _edit_info(root, lambda i: i.update(fps=fps))
    with pytest.raises(LeRobotDataError, match=rf"fps {fps} \(frames {1 / fps:.6f} s apart\) disagrees with the "
                                                rf"timestamps in .*file-000\.parquet.*0\.100000 s apart \(10 fps\)"):
        LeRobotV3Dataset(root)


@pytest.mark.parametrize("field,template", [
    ("data_path", "../outside/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("data_path", "/etc/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("video_path", "videos/../../{video_key}/file-{file_index:03d}.mp4"),
])
def test_path_templates_must_stay_inside_the_dataset(image_root: Path, video_root: Path, tmp_path: Path,
                                                     field: str, template: str) -> None:
    root = _copy(video_root if field == "video_path" else image_root, tmp_path)
    _edit_info(root, lambda i: i.update({field: template}))
    with pytest.raises(LeRobotDataError, match=f"info.json: {field} {re.escape(repr(template))} gives '.*' leads to "
                                               f".*, outside {root}; only paths inside it are read"):
        LeRobotV3Dataset(root)


def test_a_template_with_unknown_fields_is_named(image_root: Path, tmp_path: Path) -> None:
    root = _copy(image_root, tmp_path)
    _edit_info(root, lambda i: i.update(data_path="data/{episode}.parquet"))
    with pytest.raises(LeRobotDataError, match=r"data_path 'data/\{episode\}.parquet' is not a template of"):
        LeRobotV3Dataset(root)


def test_image_files_must_stay_inside_the_dataset(image_root: Path, tmp_path: Path) -> None:
    root = _copy(image_root, tmp_path)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    column = table.column(CAM).to_pylist()
    column[0] = {"bytes": None, "path": "../../secret.png"}
    table = table.set_column(table.column_names.index(CAM), CAM, pa.array(column, table.schema.field(CAM).type))
    pq.write_table(table, path)
    ds = LeRobotV3Dataset(root)
    with pytest.raises(LeRobotDataError, match=r"image path of 'observation.images.top' '../../secret.png' leads to"):
        ds[0]


@pytest.mark.parametrize("name", ["./data/typo", "data/lerobot/typo", "~/no-such-dataset-dir"])
def test_a_mistyped_dataset_path_never_asks_the_hub(name: str, tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **k: pytest.fail("asked the Hub"))
    with pytest.raises(LeRobotDataError, match="it does not exist.*never looked up on the Hugging Face Hub"):
        LeRobotV3Dataset(name)
