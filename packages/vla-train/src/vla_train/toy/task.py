"""The toy 2D reach task: geometry, rendering, the scripted expert and a batched closed-loop env.

The arena is the unit square. An agent (white disc) must reach a target (coloured disc). The
policy sees the agent's position as state, but the target only in the RGB image, so an
image-blind policy cannot solve it. With ``num_targets=2`` a red and a blue target are drawn and
the instruction (``task``, e.g. "reach the red target") names the goal.

Actions are absolute: the commanded next position of the agent; the env moves the agent
toward it by at most ``max_speed`` per step. Shapes: N environments / frames, K targets, S image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS = {"red": (0.9, 0.15, 0.15), "blue": (0.2, 0.4, 0.95)}
AGENT_COLOR = (0.95, 0.95, 0.95)
BACKGROUND = (0.12, 0.12, 0.12)


@dataclass(frozen=True)
class ReachGeometry:
    """Task constants (shared by the demonstrations and the closed-loop env)."""

    image_size: int = 64
    num_targets: int = 1
    max_speed: float = 0.08
    success_radius: float = 0.07
    agent_radius: float = 0.05
    target_radius: float = 0.07
    episode_length: int = 30

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(COLORS)[: self.num_targets]


def sample_layout(rng: np.random.Generator, n: int, geo: ReachGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random starts: agent (N, 2), targets (N, K, 2) kept apart, goal index (N,)."""
    agent = rng.uniform(0.1, 0.9, size=(n, 2))
    targets = np.empty((n, geo.num_targets, 2))
    for i in range(n):
        placed: list[np.ndarray] = [agent[i]]
        for k in range(geo.num_targets):
            while True:
                t = rng.uniform(0.1, 0.9, size=2)
                if all(np.linalg.norm(t - p) > 0.3 for p in placed):
                    break
            targets[i, k] = t
            placed.append(t)
    goal = rng.integers(0, geo.num_targets, size=n)
    return agent, targets, goal


def instruction(goal: int, geo: ReachGeometry) -> str:
    return f"reach the {geo.colors[goal]} target"


def move(agent: np.ndarray, action: np.ndarray, geo: ReachGeometry) -> np.ndarray:
    """One env step: agent (N, 2) moves toward the commanded position action (N, 2), at most max_speed."""
    delta = action - agent
    norm = np.linalg.norm(delta, axis=-1, keepdims=True)
    delta = delta * np.minimum(1.0, geo.max_speed / np.maximum(norm, 1e-12))
    return np.clip(agent + delta, 0.0, 1.0)


def expert_action(agent: np.ndarray, goal_pos: np.ndarray, geo: ReachGeometry) -> np.ndarray:
    """The scripted expert: command a point at most max_speed along the straight line to the goal."""
    return move(agent, goal_pos, geo)


def render(agent: np.ndarray, targets: np.ndarray, geo: ReachGeometry) -> np.ndarray:
    """agent (N, 2), targets (N, K, 2) -> float32 images (N, 3, S, S) in [0, 1], anti-aliased discs."""
    s = geo.image_size
    centers = (np.arange(s) + 0.5) / s
    xx, yy = centers[None, None, :], centers[None, :, None]  # (1, 1, S), (1, S, 1); y grows downward
    image = np.empty((agent.shape[0], s, s, 3), dtype=np.float32)
    image[:] = BACKGROUND
    discs = [(targets[:, k], geo.target_radius, COLORS[c]) for k, c in enumerate(geo.colors)]
    for pos, radius, color in [*discs, (agent, geo.agent_radius, AGENT_COLOR)]:
        dist = np.sqrt((xx - pos[:, 0, None, None]) ** 2 + (yy - pos[:, 1, None, None]) ** 2)
        alpha = np.clip((radius - dist) * s + 0.5, 0.0, 1.0)[..., None].astype(np.float32)
        image = image * (1 - alpha) + alpha * np.asarray(color, dtype=np.float32)
    return np.ascontiguousarray(image.transpose(0, 3, 1, 2))


def demonstrations(num_episodes: int, seed: int, geo: ReachGeometry, noise: float = 0.0, *,
                   every_goal: bool = False) -> dict[str, np.ndarray]:
    """Expert episodes of ``episode_length`` frames each, as flat frame arrays.

    Returns ``state`` (N, 2) agent positions, ``action`` (N, 2), ``episode_index`` (N,),
    ``targets`` (E, K, 2) and ``goal`` (E,), with N = E * episode_length. ``noise`` perturbs the
    executed motion (not the labels), so the demonstrations show recoveries. ``every_goal``: each drawn
    layout is demonstrated once per target (episodes ``k * K .. k * K + K - 1`` share a start and
    targets and have goals ``0 .. K - 1``), so only the instruction tells those episodes apart.
    """
    rng = np.random.default_rng(seed)
    if every_goal:
        k = geo.num_targets
        agent, targets, _ = sample_layout(rng, -(-num_episodes // k), geo)
        agent, targets = np.repeat(agent, k, 0)[:num_episodes], np.repeat(targets, k, 0)[:num_episodes]
        goal = np.tile(np.arange(k), len(agent))[:num_episodes]
    else:
        agent, targets, goal = sample_layout(rng, num_episodes, geo)
    goal_pos = targets[np.arange(num_episodes), goal]
    states, actions = [], []
    for _ in range(geo.episode_length):
        act = expert_action(agent, goal_pos, geo)
        states.append(agent)
        actions.append(act)
        agent = move(agent, act + noise * rng.standard_normal(act.shape), geo)
    t = geo.episode_length
    return {
        "state": np.stack(states, 1).reshape(-1, 2).astype(np.float32),
        "action": np.stack(actions, 1).reshape(-1, 2).astype(np.float32),
        "episode_index": np.repeat(np.arange(num_episodes), t),
        "targets": targets.astype(np.float32),
        "goal": goal,
    }


class ReachEnv:
    """N reach episodes stepped together. ``reset`` and ``step`` return observations as numpy:
    ``state`` (N, 2), ``image`` (N, 3, S, S), ``task`` list of N strings."""

    def __init__(self, geo: ReachGeometry, num_envs: int, seed: int) -> None:
        self.geo, self.num_envs = geo, num_envs
        self.rng = np.random.default_rng(seed)

    def reset(self) -> dict:
        self.agent, self.targets, self.goal = sample_layout(self.rng, self.num_envs, self.geo)
        self.success = np.zeros(self.num_envs, dtype=bool)
        self.steps = 0
        self._update_success()
        return self.observe()

    def observe(self) -> dict:
        return {
            "state": self.agent.astype(np.float32),
            "image": render(self.agent, self.targets, self.geo),
            "task": [instruction(int(g), self.geo) for g in self.goal],
        }

    def _update_success(self) -> None:
        goal_pos = self.targets[np.arange(self.num_envs), self.goal]
        self.success |= np.linalg.norm(self.agent - goal_pos, axis=-1) < self.geo.success_radius

    def step(self, action: np.ndarray) -> tuple[dict, np.ndarray, bool]:
        """action (N, 2) -> (observation, success so far (N,) bool, done)."""
        self.agent = move(self.agent, np.asarray(action, dtype=np.float64), self.geo)
        self.steps += 1
        self._update_success()
        return self.observe(), self.success.copy(), self.steps >= self.geo.episode_length
