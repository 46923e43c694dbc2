"""Closed-loop evaluation with a slow policy: synchronous vs asynchronous chunk execution, with and
without real-time chunking (RTC), on the toy reach task.

Inference takes ``delay`` control steps (simulated: the chunk is computed at once but handed to the
robot ``delay`` steps after its observation). Each chunk's row 0 belongs to the control step of its
observation. Three ways to execute (``N`` = ``n_action_steps``, ``H`` = the horizon, ``d`` = the delay):

- ``sync``: execute rows 0..N-1 of a chunk, then hold still (command the current position) for d
  steps while the next chunk is computed from the new observation, and so on;
- ``async``: the robot never waits. A new inference starts every ``s = max(N, d)`` steps, at row s
  of the current chunk; while it runs the robot keeps executing rows s..s+d-1, and when the new
  chunk arrives it continues from the new chunk's row d (needs ``s + d <= H``). Naive switching
  jumps at the boundary;
- ``async`` with ``rtc``: as ``async``, but the new chunk is computed with the current chunk's rows
  s..H-1 as the prefix and delay d (:meth:`vla_core.Policy.predict_action_chunk`), so its first d rows
  are the ones the robot executed meanwhile and row d continues them.

Reported: success rate and the mean action jump at chunk boundaries (the distance between the last
action executed from one chunk and the first executed from the next, averaged over boundaries and
environments), and for reference the mean distance between consecutive actions of one chunk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_core import ConfigError, Policy, load_policy
from vla_core.features import OBS_STATE

from vla_train.eval import load_eval_env_factory, resolve_policy_dir

MODES = ("sync", "async")


def chunk_schedule(policy: Policy, delay: int, mode: str) -> int:
    """The async inference period ``s = max(n_action_steps, delay)``, checked (``s + delay <= H``)."""
    if mode not in MODES:
        raise ConfigError(f"mode: expected one of {list(MODES)}, received {mode!r}")
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ConfigError(f"--inference-delay: expected an int >= 0 (control steps), received {delay!r}")
    if policy.config.n_obs_steps != 1:
        raise ConfigError(f"eval with --inference-delay / --async: expected a policy with n_obs_steps = 1, "
                          f"received {policy.config.n_obs_steps}")
    steps = policy.n_action_steps
    period = max(steps, delay)
    if mode == "async" and period + delay > policy.horizon:
        raise ConfigError(f"--inference-delay {delay}: asynchronous execution needs max(n_action_steps, delay) + delay "
                          f"<= the horizon {policy.horizon}, received max({steps}, {delay}) + {delay}")
    return period


@torch.no_grad()
def timed_rollout(policy: Policy, env, *, delay: int, mode: str = "async", rtc: bool = False,
                  seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """One batch of episodes with a ``delay``-step policy; returns success (N,) bool, the boundary jumps
    (one (N,) array per chunk boundary) and the steps between consecutive actions of one chunk (one (N,)
    array per step), for reference."""
    if rtc and mode != "async":
        raise ConfigError("--rtc: real-time chunking applies to asynchronous execution; add --async")
    period = chunk_schedule(policy, delay, mode)
    policy.eval()
    generator = torch.Generator().manual_seed(seed)
    obs = env.reset()
    chunk = policy.predict_action_chunk(obs, generator=generator)  # the first chunk is ready at step 0
    row, steps, success = 0, 0, np.zeros(0, dtype=bool)
    pending: torch.Tensor | None = None
    last: torch.Tensor | None = None
    switched = False
    jumps: list[np.ndarray] = []
    within: list[np.ndarray] = []

    def act(action: torch.Tensor) -> bool:
        nonlocal obs, success, steps
        obs, success, done = env.step(action)
        steps += 1
        return done or steps >= env.max_steps

    while True:
        if pending is not None and row == period + delay:  # it arrives: continue from its row `delay`
            chunk, pending, row, switched = pending, None, delay, True
        if mode == "async" and row == period:  # start the next inference on this observation
            prefix = chunk[:, period:] if rtc else None
            pending = policy.predict_action_chunk(obs, generator=generator, prefix=prefix, delay=delay if rtc else 0)
            if delay == 0:
                chunk, pending, row, switched = pending, None, 0, True
        action = chunk[:, row]
        if last is not None:
            (jumps if switched else within).append((action - last).norm(dim=-1).cpu().numpy())
        last, switched, row = action, False, row + 1
        if act(action):
            break
        if mode == "sync" and row == policy.n_action_steps:
            done = False
            for _ in range(delay):  # hold still while the next chunk is computed
                if done := act(obs[OBS_STATE].clone()):
                    break
            if done:
                break
            chunk, row, switched = policy.predict_action_chunk(obs, generator=generator), 0, True
    return success, jumps, within


def evaluate_async(path: str | Path, *, episodes: int, inference_delay: int, asynchronous: bool = True,
                   rtc: bool = False, seed: int = 100_000, batch_size: int = 50,
                   compile_mode: str | None = None) -> dict[str, Any]:
    """Success rate and mean boundary jump over ``episodes`` episodes with a simulated inference delay;
    writes ``eval_async.json`` next to the policy. ``compile_mode``: as in :func:`vla_train.eval.evaluate`."""
    policy_dir = resolve_policy_dir(path)
    make_env = load_eval_env_factory(policy_dir)
    policy = load_policy(policy_dir)
    if compile_mode is not None:
        policy.compile(compile_mode)
    mode = "async" if asynchronous else "sync"
    successes, jumps, within, done = [], [], [], 0
    while done < episodes:
        n = min(batch_size, episodes - done)
        success, boundary, steps = timed_rollout(policy, make_env(n, seed + done), delay=inference_delay, mode=mode,
                                          rtc=rtc, seed=seed + done)
        successes.append(success)
        jumps.extend(boundary)
        within.extend(steps)
        done += n
    success = np.concatenate(successes)
    all_jumps = np.concatenate(jumps) if jumps else np.zeros(0)
    out = {"episodes": int(episodes), "mode": mode, "rtc": rtc, "inference_delay": inference_delay,
           "success_rate": float(success.mean()), "mean_boundary_jump": float(all_jumps.mean()) if jumps else 0.0,
           "boundaries": len(all_jumps), "mean_step_within_chunks": float(np.concatenate(within).mean()) if within else 0.0,
           "seed": seed, "policy": str(policy_dir)}
    (policy_dir / "eval_async.json").write_text(json.dumps(out, indent=2))
    return out
