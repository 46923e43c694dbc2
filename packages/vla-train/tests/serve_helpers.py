"""Helpers for the serve tests: a tiny saved policy, observations, and the in-process reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import vla_test_components as tc
from vla_core import Policy, build_policy, load_policy

OBS_MAP = {"observation/image": "observation.images.top", "observation/state": "observation.state"}


def tiny_policy(directory: Path, *, language: bool = True, **overrides) -> Policy:
    """The test components (8x8 camera, 3-D state, 2-D actions, horizon 4), saved and loaded back."""
    cfg = tc.policy_config(**overrides)
    if language:
        cfg["input_features"] = {**cfg["input_features"], "task": {"type": "LANGUAGE", "shape": []}}
    tc.set_unit_stats(build_policy(cfg)).save_pretrained(directory)
    return load_policy(directory)


def observation(seed: int, *, image: str = "uint8", prompt: str | None = "reach the red target") -> dict:
    """One openpi-style observation (no batch dim): image uint8 HWC or float CHW, float32 state."""
    rng = np.random.default_rng(seed)
    obs = {"observation/state": rng.standard_normal(3).astype(np.float32)}
    if image == "uint8":
        obs["observation/image"] = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    else:
        obs["observation/image"] = rng.random((3, 8, 8), dtype=np.float32)
    if prompt is not None:
        obs["prompt"] = prompt
    return obs


def reference_actions(policy: Policy, obs: dict) -> np.ndarray:
    """(H, A): ``predict_action_chunk`` on the same observation, in process, batch of one."""
    image = obs["observation/image"]
    if image.dtype == np.uint8:
        image = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    else:
        image = torch.from_numpy(image)
    batch = {"observation.images.top": image[None], "observation.state": torch.from_numpy(obs["observation/state"])[None]}
    if "task" in policy.input_features:
        batch["task"] = [obs["prompt"]]
    return policy.predict_action_chunk(batch)[0].numpy()
