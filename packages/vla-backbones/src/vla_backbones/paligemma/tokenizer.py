"""Task strings -> token ids for the PaliGemma prefix, from a local tokenizer directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor


class TaskTokenizer:
    """Tokenize ``task`` strings the way LeRobot's pi0 processor does.

    Each task gets a trailing newline (PaliGemma's prompt format), then is tokenized with the
    tokenizer's own special tokens, right-padded and truncated to ``max_length``. Returns ids
    (B, L) long and a mask (B, L) bool.
    """

    def __init__(self, path: str | os.PathLike, max_length: int) -> None:
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer directory {path} not found (a local directory written by save_pretrained)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.max_length = max_length

    def __call__(
        self, tasks: list[str], device: torch.device | str | None = None, *, newline: bool = True
    ) -> tuple[Tensor, Tensor]:
        """``newline=False`` tokenizes the texts as given (pi0.5 prompts end in ``"Action: "``)."""
        texts = [t if t.endswith("\n") or not newline else t + "\n" for t in tasks]
        out = self.tokenizer(
            texts, max_length=self.max_length, truncation=True, padding="max_length",
            padding_side="right", return_tensors="pt",
        )
        return out["input_ids"].to(device), out["attention_mask"].to(device=device, dtype=torch.bool)
