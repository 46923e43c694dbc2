"""``toy_reach``: the built-in 2D reach task as a dataset (rendered on the fly) and a closed-loop env."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from vla_core import ACTION, OBS_STATE, TASK, ConfigError, FeatureType, PolicyFeature
from vla_core.config import check_positive

from vla_train.data.base import EpisodeDataset
from vla_train.data.registry import DATASETS, DatasetConfig
from vla_train.toy.task import ReachEnv, ReachGeometry, demonstrations, instruction, render

IMAGE_KEY = "observation.images.top"


@dataclass(frozen=True, kw_only=True)
class ToyReachConfig(DatasetConfig):
    """``num_targets=2`` draws a red and a blue target and names the goal in ``task``; ``every_goal``
    demonstrates each drawn layout once per target (``num_episodes`` in all), so the instruction is the
    only difference between those episodes."""

    num_episodes: int = 200
    episode_length: int = 30
    image_size: int = 64
    num_targets: int = 1
    max_speed: float = 0.08
    success_radius: float = 0.07
    expert_noise: float = 0.01
    every_goal: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("data", num_episodes=self.num_episodes, episode_length=self.episode_length,
                       image_size=self.image_size, max_speed=self.max_speed, success_radius=self.success_radius)
        if self.num_targets not in (1, 2):
            raise ConfigError(f"data.num_targets: expected 1 or 2, received {self.num_targets}")

    def geometry(self) -> ReachGeometry:
        return ReachGeometry(image_size=self.image_size, num_targets=self.num_targets, max_speed=self.max_speed,
                             success_radius=self.success_radius, episode_length=self.episode_length)


@DATASETS.register("toy_reach")
class ToyReachDataset(EpisodeDataset):
    """Expert demonstrations generated from ``seed``; images are rendered when read."""

    config_class = ToyReachConfig

    def __init__(self, config: ToyReachConfig) -> None:
        super().__init__()
        self.config = config
        self.geo = config.geometry()
        demos = demonstrations(config.num_episodes, config.seed, self.geo, noise=config.expert_noise,
                               every_goal=config.every_goal)
        self.state, self.action = demos["state"], demos["action"]
        self.episode_index, self.targets, self.goal = demos["episode_index"], demos["targets"], demos["goal"]
        s = config.image_size
        self.features = {
            IMAGE_KEY: PolicyFeature(FeatureType.VISUAL, (3, s, s)),
            OBS_STATE: PolicyFeature(FeatureType.STATE, (2,)),
            ACTION: PolicyFeature(FeatureType.ACTION, (2,)),
        }
        if config.num_targets > 1:
            self.features[TASK] = PolicyFeature(FeatureType.LANGUAGE, ())

    def read_frames(self, key: str, indices: np.ndarray) -> np.ndarray:
        if key == IMAGE_KEY:
            episodes = self.episode_index[indices]
            return render(self.state[indices].astype(np.float64), self.targets[episodes], self.geo)
        return {OBS_STATE: self.state, ACTION: self.action}[key][indices]

    def task_of(self, index: int) -> str:
        return instruction(int(self.goal[self.episode_index[index]]), self.geo)

    def make_env(self, num_envs: int, seed: int) -> ToyReachEnv:
        return ToyReachEnv(self.geo, num_envs, seed, with_task=TASK in self.features)


class ToyReachEnv:
    """Batched closed-loop episodes that speak batch keys: observations are policy batches (B = num_envs)."""

    def __init__(self, geo: ReachGeometry, num_envs: int, seed: int, *, with_task: bool) -> None:
        self.env = ReachEnv(geo, num_envs, seed)
        self.with_task = with_task
        self.max_steps = geo.episode_length

    def _batch(self, obs: dict[str, Any]) -> dict[str, Any]:
        batch = {IMAGE_KEY: torch.from_numpy(obs["image"]), OBS_STATE: torch.from_numpy(obs["state"])}
        if self.with_task:
            batch[TASK] = obs["task"]
        return batch

    def reset(self) -> dict[str, Any]:
        return self._batch(self.env.reset())

    def step(self, action: torch.Tensor) -> tuple[dict[str, Any], np.ndarray, bool]:
        """action (B, 2) -> (next batch, success so far (B,), done)."""
        obs, success, done = self.env.step(action.detach().cpu().double().numpy())
        return self._batch(obs), success, done

    def frames(self) -> np.ndarray:
        """The current images as uint8 (B, S, S, 3), for videos."""
        image = render(self.env.agent, self.env.targets, self.env.geo)
        return (image.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)
