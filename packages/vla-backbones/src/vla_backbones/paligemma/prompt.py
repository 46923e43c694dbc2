"""pi0.5's prompt: the task and the discretized robot state as text (LeRobot 0.6.1's
``Pi05PrepareStateTokenizerProcessorStep``, after openpi's ``PaligemmaTokenizer.tokenize``).

Each dimension of the normalized state (expected in [-1, 1]) becomes the index of its bin among
``bins`` equal bins over [-1, 1]: ``np.digitize(state, linspace(-1, 1, bins + 1)[:-1]) - 1``. Quirk
kept from the reference: a value below -1 gets -1 and one at or above the last edge gets
``bins - 1``; nothing is clipped.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discretize_state(state: Tensor, bins: int) -> Tensor:
    """Normalized state (B, S) float -> bin indices (B, S) long in [-1, bins - 1] (compared in float64)."""
    edges = torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64, device=state.device)[:-1]
    return torch.bucketize(state.double(), edges, right=True) - 1


def pi05_prompts(tasks: list[str], state: Tensor, bins: int) -> list[str]:
    """``tasks`` (B strings) and normalized state (B, S) -> B prompts
    ``"Task: {task}, State: {i_1 ... i_S};\\nAction: "`` (task stripped, ``_`` and newlines to spaces)."""
    if len(tasks) != state.shape[0]:
        raise ValueError(f"pi05 prompt: {len(tasks)} task strings for a state batch of {state.shape[0]}")
    ids = discretize_state(state, bins).tolist()
    prompts = []
    for task, row in zip(tasks, ids):
        text = task.strip().replace("_", " ").replace("\n", " ")
        prompts.append(f"Task: {text}, State: {' '.join(map(str, row))};\nAction: ")
    return prompts


def prompt_words(bins: int = 256) -> str:
    """The words of the prompt template and every bin number, for building a word-level tokenizer that
    knows them (tests, toy runs): ``"Task State Action : , ; - 0 1 ... bins-1"``."""
    return " ".join(["Task State Action : , ; -", *map(str, range(bins))])
