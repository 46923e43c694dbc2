"""`vla eval --inference-delay N [--async [--rtc]]`: chunk execution with a slow policy on the toy task.

The schedules are checked on a deterministic head (boundaries where they belong, the zero-delay runs equal
to the plain closed loop); on a flow head, real-time chunking lowers the mean action jump at chunk
boundaries against naive asynchronous switching.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import tiny_config, write_config
from vla_core import ConfigError, load_policy
from vla_heads.dit_flow_matching import DiTFlowMatchingHead
from vla_train.config import load_config
from vla_train.eval import load_eval_env_factory, rollout
from vla_train.eval_async import timed_rollout
from vla_train.trainer import train

EPISODE = 10  # tiny_config's episode length


def _train(tmp_path, head: dict, n_action_steps: int):
    cfg = tiny_config(tmp_path / "run", policy={"backbone": {"type": "test_linear", "dim": 16}, "head": head,
                                                "n_action_steps": n_action_steps})
    return train(load_config(write_config(tmp_path / "c.yaml", cfg))) / "pretrained"


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("mlp"), {"type": "test_mlp", "horizon": 6}, 3)


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flow")
    head = {**DiTFlowMatchingHead.tiny_config(tmp), "type": "dit_flow_matching", "horizon": 8, "max_seq_len": 8}
    return _train(tmp, head, 3)


@pytest.mark.parametrize("mode, delay, boundaries, executed", [
    ("sync", 0, 3, 10),   # chunks start at steps 0, 3, 6, 9
    ("sync", 2, 1, 6),    # 3 actions, hold 2, the next chunk starts at step 5; the one after would at 10
    ("async", 0, 3, 10),  # a new chunk every 3 steps, used at once
    ("async", 2, 2, 10),  # inference at rows 3 (steps 3, 6, 9); arrivals at steps 5 and 8
    ("async", 3, 2, 10),  # period max(3, 3) = 3, arrivals at steps 6 and 9
])
def test_boundaries_fall_where_the_schedule_puts_them(mlp_dir, mode, delay, boundaries, executed):
    policy, make_env = load_policy(mlp_dir), load_eval_env_factory(mlp_dir)
    success, jumps, within = timed_rollout(policy, make_env(4, 0), delay=delay, mode=mode)
    assert success.shape == (4,) and len(jumps) == boundaries and all(j.shape == (4,) for j in jumps)
    assert len(jumps) + len(within) == executed - 1  # every executed action after the first is one or the other


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_zero_delay_is_the_plain_closed_loop(mlp_dir, mode):
    """A deterministic head without delay: both schedules execute what select_action executes."""
    policy, make_env = load_policy(mlp_dir), load_eval_env_factory(mlp_dir)
    want, _ = rollout(policy, make_env(8, 5))
    got, _, _ = timed_rollout(policy, make_env(8, 5), delay=0, mode=mode)
    np.testing.assert_array_equal(got, want)
    env = make_env(8, 5)
    timed_rollout(policy, env, delay=0, mode=mode)
    plain = make_env(8, 5)
    rollout(policy, plain)
    np.testing.assert_allclose(env.env.agent, plain.env.agent, atol=1e-6)


def test_rtc_lowers_the_boundary_jump(flow_dir):
    policy, make_env = load_policy(flow_dir), load_eval_env_factory(flow_dir)
    _, naive, _ = timed_rollout(policy, make_env(16, 1), delay=2, mode="async", seed=3)
    _, rtc, _ = timed_rollout(policy, make_env(16, 1), delay=2, mode="async", rtc=True, seed=3)
    assert len(naive) == len(rtc) > 0
    assert np.concatenate(rtc).mean() < np.concatenate(naive).mean()


def test_schedule_errors(mlp_dir, flow_dir):
    policy, make_env = load_policy(mlp_dir), load_eval_env_factory(mlp_dir)
    with pytest.raises(ConfigError, match="--rtc: real-time chunking applies to asynchronous execution"):
        timed_rollout(policy, make_env(1, 0), delay=1, mode="sync", rtc=True)
    with pytest.raises(ConfigError, match=r"--inference-delay 4: .* <= the horizon 6, received max\(3, 4\) \+ 4"):
        timed_rollout(policy, make_env(1, 0), delay=4, mode="async")
    with pytest.raises(ConfigError, match="--inference-delay: expected an int >= 0"):
        timed_rollout(policy, make_env(1, 0), delay=-1, mode="sync")
    with pytest.raises(ValueError, match="real-time chunking needs a flow-matching head"):
        timed_rollout(policy, make_env(1, 0), delay=1, mode="async", rtc=True)


def test_vla_eval_async_command(flow_dir, capsys):
    from vla_train.cli import main

    assert main(["eval", str(flow_dir), "--async", "--inference-delay", "2", "--rtc", "--episodes", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("success_rate: ") and out[-2].startswith("mean_boundary_jump: ")
    result = json.loads((flow_dir / "eval_async.json").read_text())
    assert (result["mode"], result["rtc"], result["inference_delay"], result["episodes"]) == ("async", True, 2, 3)
    assert main(["eval", str(flow_dir), "--rtc", "--inference-delay", "1"]) == 2  # --rtc needs --async
    assert "--rtc: real-time chunking applies to asynchronous execution" in capsys.readouterr().err
    assert result["boundaries"] > 0 and 0.0 <= result["success_rate"] <= 1.0


def test_toy_flow_config_builds_a_policy_with_rtc():
    from pathlib import Path

    from vla_core import build_policy
    from vla_train.data import build_dataset
    from vla_train.trainer import policy_spec

    config = load_config(Path(__file__).resolve().parents[3] / "configs" / "toy_flow.yaml")
    policy = build_policy(policy_spec(config, build_dataset(config.data)))
    assert policy.supports_rtc and policy.horizon == 10 and policy.n_action_steps == 5
