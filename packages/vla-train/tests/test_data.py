"""Data: windows from delta indices, streaming stats, the resumable stream, feature checks, the toy task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_core import ACTION, ACTION_IS_PAD, OBS_STATE, TASK, FeatureType, PolicyFeature
from vla_train.data import BatchStream, RunningStats, build_dataset, check_features, compute_stats, policy_delta_indices
from vla_train.toy.task import ReachEnv, ReachGeometry, demonstrations, expert_action, render

TOY = {"type": "toy_reach", "num_episodes": 6, "episode_length": 12, "image_size": 16}


@settings(max_examples=25, deadline=None)
@given(index=st.integers(0, 71), n_obs=st.integers(1, 3), horizon=st.integers(1, 15))
def test_windows_clamp_to_the_episode_and_mark_padding(index, n_obs, horizon):
    ds = build_dataset(TOY)
    ds.set_delta_indices(policy_delta_indices(ds.features, n_obs, horizon))
    sample = ds[index]
    ep_start = (index // 12) * 12
    offsets = np.arange(1 - n_obs, 1 - n_obs + horizon)
    wanted = index + offsets
    pad = (wanted < ep_start) | (wanted >= ep_start + 12)
    src = np.clip(wanted, ep_start, ep_start + 11)
    assert sample[ACTION].shape == (horizon, 2)
    np.testing.assert_array_equal(sample[ACTION].numpy(), ds.action[src])
    np.testing.assert_array_equal(sample[ACTION_IS_PAD].numpy(), pad)
    if n_obs > 1:
        obs = index + np.arange(1 - n_obs, 1)
        np.testing.assert_array_equal(sample[OBS_STATE].numpy(), ds.state[np.clip(obs, ep_start, None)])
        assert sample["observation.images.top"].shape == (n_obs, 3, 16, 16)
    else:
        np.testing.assert_array_equal(sample[OBS_STATE].numpy(), ds.state[index])


def test_stats_match_numpy_and_the_reservoir_stays_bounded():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5000, 3)) * [1, 2, 3] + [0, 1, -1]
    running = RunningStats(3, reservoir_size=20_000)
    for chunk in np.array_split(data, 7):
        running.update(chunk)
    out = running.result()
    np.testing.assert_allclose(out["mean"], data.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["std"], data.std(0), rtol=1e-12)
    np.testing.assert_array_equal(out["min"], data.min(0))
    np.testing.assert_allclose(out["q99"], np.quantile(data, 0.99, axis=0))  # all rows fit: exact
    small = RunningStats(3, reservoir_size=2000, seed=1)
    big = rng.standard_normal((60_000, 3))
    for chunk in np.array_split(big, 30):
        small.update(chunk)
    assert small.reservoir.shape == (2000, 3)  # memory does not grow with the data
    np.testing.assert_allclose(small.result()["q01"], np.quantile(big, 0.01, axis=0), atol=0.25)
    np.testing.assert_allclose(small.result()["mean"], big.mean(0), atol=1e-12)


def test_dataset_stats_cover_every_feature_with_policy_shapes():
    ds = build_dataset(TOY)
    stats = compute_stats(ds, max_frames=50)
    assert set(stats) == {"observation.images.top", OBS_STATE, ACTION}
    assert stats["observation.images.top"]["mean"].shape == (3, 1, 1)
    assert stats[OBS_STATE]["std"].shape == (2,)
    assert 0 <= stats["observation.images.top"]["min"].min() and stats["observation.images.top"]["max"].max() <= 1
    full = compute_stats(ds, max_frames=10_000)
    np.testing.assert_allclose(full[ACTION]["mean"], ds.action.mean(0), rtol=1e-6)


@pytest.mark.parametrize("world_size", [1, 2])
def test_stream_resumes_at_the_same_batch(world_size):
    ds = build_dataset(TOY)
    ds.set_delta_indices(policy_delta_indices(ds.features, 1, 3))

    def stream():
        return BatchStream(ds, micro_batch_size=5, rank=world_size - 1, world_size=world_size, seed=3)

    first = stream()
    seen = [next(first)[OBS_STATE] for _ in range(20)]  # crosses epoch boundaries (72 frames)
    for cut in (4, 7, 13):
        again = stream()
        for _ in range(cut):
            next(again)
        resumed = stream()
        resumed.load_state_dict(again.state_dict())
        for k in range(cut, 20):
            torch.testing.assert_close(next(resumed)[OBS_STATE], seen[k], rtol=0, atol=0)
    other = BatchStream(ds, micro_batch_size=5, rank=0, world_size=2, seed=3) if world_size == 2 else None
    if other is not None:  # the ranks see disjoint samples
        a, b = next(other)[OBS_STATE], stream()
        assert not any(torch.equal(x, y) for x in a for y in next(b)[OBS_STATE])


def test_feature_mismatch_is_a_clear_error():
    ds = build_dataset(TOY)
    want = {"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 96, 96))}
    with pytest.raises(ValueError, match=r"observation.images.top.*\[3, 96, 96\].*\[3, 16, 16\]"):
        check_features(want, {}, ds.features, "toy_reach")
    with pytest.raises(ValueError, match="needs 'observation.images.wrist'"):
        check_features({"observation.images.wrist": PolicyFeature(FeatureType.VISUAL, (3, 16, 16))}, {}, ds.features, "t")


def test_expert_solves_the_env_and_the_target_is_only_in_the_image():
    geo = ReachGeometry(image_size=32, episode_length=30)
    env = ReachEnv(geo, 64, seed=5)
    obs = env.reset()
    goal = env.targets[:, 0]
    for _ in range(geo.episode_length):
        obs, success, done = env.step(expert_action(env.agent, goal, geo))
    assert success.all() and done
    # the target is visible: moving it changes the image but not the state
    a = render(env.agent[:1], env.targets[:1], geo)
    b = render(env.agent[:1], env.targets[:1] * 0.5 + 0.25, geo)
    assert np.abs(a - b).max() > 0.5 and set(obs) == {"state", "image", "task"}
    demos = demonstrations(4, 0, geo)
    again = demonstrations(4, 0, geo)
    np.testing.assert_array_equal(demos["action"], again["action"])  # generated deterministically


def test_two_target_variant_names_the_goal_in_the_instruction():
    ds = build_dataset({**TOY, "num_targets": 2})
    assert ds.features[TASK].type is FeatureType.LANGUAGE
    texts = {ds[i][TASK] for i in range(len(ds))}
    assert texts <= {"reach the red target", "reach the blue target"} and len(texts) == 2
    for ep in range(6):
        last = ep * 12 + 11
        goal = ds.targets[ep, ds.goal[ep]]
        other = ds.targets[ep, 1 - ds.goal[ep]]
        assert np.linalg.norm(ds.state[last] - goal) < np.linalg.norm(ds.state[last] - other)
        assert ("red" if ds.goal[ep] == 0 else "blue") in ds[last][TASK]
    env = ds.make_env(3, seed=0)
    assert len(env.reset()[TASK]) == 3


@settings(max_examples=15, deadline=None)
@given(num_episodes=st.integers(1, 9), seed=st.integers(0, 100))
def test_every_goal_demonstrates_each_layout_once_per_target(num_episodes, seed):
    geo = ReachGeometry(image_size=16, num_targets=2, episode_length=20)
    demos = demonstrations(num_episodes, seed, geo, every_goal=True)
    t = geo.episode_length
    start = demos["state"].reshape(num_episodes, t, 2)[:, 0]
    last = demos["state"].reshape(num_episodes, t, 2)[:, -1]
    np.testing.assert_array_equal(demos["goal"], np.arange(num_episodes) % 2)
    for ep in range(0, num_episodes - 1, 2):  # a pair: same start and targets, the two goals
        np.testing.assert_array_equal(start[ep], start[ep + 1])
        np.testing.assert_array_equal(demos["targets"][ep], demos["targets"][ep + 1])
    for ep in range(num_episodes):  # each episode ends at its own goal
        goal = demos["targets"][ep, demos["goal"][ep]]
        assert np.linalg.norm(last[ep] - goal) < geo.success_radius


def test_every_goal_pairs_differ_only_in_the_instruction_and_actions():
    ds = build_dataset({**TOY, "num_targets": 2, "every_goal": True})
    first, second = ds[0], ds[ds.geo.episode_length]  # frame 0 of episodes 0 and 1
    torch.testing.assert_close(first["observation.images.top"], second["observation.images.top"])
    torch.testing.assert_close(first[OBS_STATE], second[OBS_STATE])
    assert {first[TASK], second[TASK]} == {"reach the red target", "reach the blue target"}
    assert not torch.equal(first[ACTION], second[ACTION])
