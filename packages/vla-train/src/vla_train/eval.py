"""Closed-loop evaluation: roll the policy out in the dataset's environment (the toy reach task).

``evaluate(path)`` accepts a run directory (uses ``pretrained/``) or a pretrained directory
written by the trainer (it carries ``train_config.yaml``, which names the task); writes
``eval.json`` beside the policy and, with ``save_video``, ``eval.gif`` and ``eval.png`` (a strip
of frames of the first episode).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vla_core import ConfigError, Policy, load_policy
from vla_core.paths import missing_path_error

from vla_train.config import load_yaml
from vla_train.data import build_dataset


def resolve_policy_dir(path: str | Path) -> Path:
    """A run directory's ``pretrained/`` or the pretrained directory itself (local only)."""
    given, path = path, Path(path).expanduser()
    if not path.exists():
        raise missing_path_error(given, "run or policy directory")
    if (path / "pretrained" / "config.json").is_file():
        return path / "pretrained"
    if (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"{path} is neither a run directory (with pretrained/) nor a pretrained policy directory")


@torch.no_grad()
def rollout(policy: Policy, env, *, record: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run one batch of episodes; returns success (N,) bool and, if ``record``, frames of env 0."""
    policy.eval()
    policy.reset()
    batch = env.reset()
    frames = [env.frames()[0]] if record else []
    success = np.zeros(0, dtype=bool)
    for _ in range(env.max_steps):
        action = policy.select_action(batch)
        batch, success, done = env.step(action)
        if record:
            frames.append(env.frames()[0])
        if done:
            break
    return success, frames


def run_episodes(policy: Policy, make_env: Callable[[int, int], Any], *, episodes: int, seed: int,
                 batch_size: int = 50, record: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """``episodes`` closed-loop episodes in batches of ``batch_size``; the batch that starts after ``done``
    episodes runs in ``make_env(n, seed + done)``. Returns success (episodes,) bool and, if ``record``, the
    frames of the first episode."""
    results, frames = [], []
    for done in range(0, episodes, batch_size):
        success, shot = rollout(policy, make_env(min(batch_size, episodes - done), seed + done),
                                record=record and done == 0)
        results.append(success)
        frames = frames or shot
    return np.concatenate(results) if results else np.zeros(0, dtype=bool), frames


def load_eval_env_factory(policy_dir: Path) -> Callable[[int, int], Any]:
    """``make_env(num_envs, seed)`` of the task named by ``policy_dir/train_config.yaml``."""
    spec_path = policy_dir / "train_config.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: evaluation needs the task the policy was trained on")
    spec = load_yaml(spec_path.read_text(), str(spec_path))
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), dict):
        raise ConfigError(f"{spec_path}: expected a training config with a 'data' mapping")
    data_spec = spec["data"]
    dataset = build_dataset(data_spec)
    if not hasattr(dataset, "make_env"):
        raise ValueError(f"dataset type {data_spec['type']!r} has no closed-loop environment to evaluate in")
    return dataset.make_env


def evaluate(path: str | Path, *, episodes: int, seed: int = 100_000, batch_size: int = 50,
             save_video: bool = False, compile_mode: str | None = None) -> dict[str, Any]:
    """Success rate over ``episodes`` closed-loop episodes; writes eval.json next to the policy.

    ``compile_mode`` (a :data:`vla_core.COMPILE_MODES` name): run the policy compiled
    (:meth:`vla_core.Policy.compile`); None runs it eager."""
    policy_dir = resolve_policy_dir(path)
    make_env = load_eval_env_factory(policy_dir)
    policy = load_policy(policy_dir)
    if compile_mode is not None:
        policy.compile(compile_mode)
    success, frames = run_episodes(policy, make_env, episodes=episodes, seed=seed, batch_size=batch_size,
                                   record=save_video)
    out = {"episodes": int(episodes), "successes": int(success.sum()), "success_rate": float(success.mean()),
           "seed": seed, "policy": str(policy_dir)}
    (policy_dir / "eval.json").write_text(json.dumps(out, indent=2))
    if save_video and frames:
        write_video(frames, policy_dir / "eval.gif", policy_dir / "eval.png")
    return out


def write_video(frames: list[np.ndarray], gif: Path, strip: Path, *, scale: int = 3, strip_frames: int = 8) -> None:
    """frames: list of uint8 (S, S, 3) -> an animated GIF and a PNG strip of evenly spaced frames."""
    from PIL import Image

    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=80, loop=0)
    picks = np.linspace(0, len(images) - 1, min(strip_frames, len(images))).round().astype(int)
    w, h = images[0].size
    sheet = Image.new("RGB", (w * len(picks), h))
    for i, k in enumerate(picks):
        sheet.paste(images[k], (i * w, 0))
    sheet.save(strip)
