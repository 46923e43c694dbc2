"""Text + image preprocessing for the Eagle backbone, built on a local tokenizer directory.

Per sample the prompt is Qwen chat formatted, with every camera image expanded to
``<image k><img>`` + ``<IMG_CONTEXT>`` x Q + ``</img>`` and the task written as ``str([task])`` (as
GR00T N1.5's LeRobot processor does); text is left-padded. Images are resized to the vision tower's
size (bicubic) and normalized to ``(x - 0.5) / 0.5``, one tile per image, ordered sample-major.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from vla_core import TASK, ConfigError

IMAGE_TOKEN, IMAGE_START, IMAGE_END = "<IMG_CONTEXT>", "<img>", "</img>"
# The prompt's other markers (a tokenizer should know them as special tokens), for up to two cameras.
PROMPT_TOKENS = ("<|im_start|>", "<|im_end|>", IMAGE_START, IMAGE_END, "<image 1>", "<image 2>")


class EagleProcessor:
    """``batch`` with ``task`` (list of B str) and camera images (B, C, H, W) in [0, 1] -> Eagle inputs."""

    def __init__(
        self,
        tokenizer,
        *,
        image_keys: tuple[str, ...],
        image_size: int,
        tokens_per_image: int,
        image_token_id: int,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.image_keys, self.image_size, self.tokens_per_image = image_keys, image_size, tokens_per_image
        self.max_length = max_length
        got = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if got != image_token_id:
            raise ConfigError(
                f"EagleConfig.image_token_id: is {image_token_id} but the tokenizer maps {IMAGE_TOKEN} to {got}"
            )

    @classmethod
    def from_config(cls, config) -> EagleProcessor:
        if not config.tokenizer_path:
            raise ConfigError(
                "EagleConfig.tokenizer_path: set it to a local tokenizer directory to feed `task` strings, or pass "
                "pre-tokenized eagle_input_ids / eagle_attention_mask / eagle_pixel_values"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path, local_files_only=True)
        return cls(
            tokenizer,
            image_keys=tuple(config.image_keys),
            image_size=int(config.vision["image_size"]),
            tokens_per_image=config.tokens_per_image,
            image_token_id=config.image_token_id,
            max_length=config.max_text_length,
        )

    def prompt(self, task: str, num_images: int) -> str:
        images = "".join(
            f"<image {k + 1}>{IMAGE_START}{IMAGE_TOKEN * self.tokens_per_image}{IMAGE_END}" for k in range(num_images)
        )
        return f"<|im_start|>user\n{images}{[task]!s}<|im_end|>\n<|im_start|>assistant\n"

    def images(self, batch: Any) -> Tensor | None:
        """Camera images -> (B * cameras, C, S, S) normalized, sample-major."""
        if not self.image_keys:
            return None
        per_cam = []
        for key in self.image_keys:
            img = batch[key]
            img = img[:, -1] if img.dim() == 5 else img
            if img.shape[-2:] != (self.image_size, self.image_size):
                img = F.interpolate(img.float(), size=(self.image_size,) * 2, mode="bicubic", align_corners=False)
            per_cam.append((img.clamp(0, 1) - 0.5) / 0.5)
        return torch.stack(per_cam, dim=1).flatten(0, 1)

    def __call__(self, batch: Any) -> dict[str, Tensor]:
        tasks = batch[TASK]
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        texts = [self.prompt(t, len(self.image_keys)) for t in tasks]
        enc = self.tokenizer(
            texts,
            padding="max_length" if self.max_length else "longest",
            max_length=self.max_length,
            truncation=bool(self.max_length),
            add_special_tokens=False,
            return_tensors="pt",
        )
        return {
            "eagle_input_ids": enc["input_ids"],
            "eagle_attention_mask": enc["attention_mask"].bool(),
            "eagle_pixel_values": self.images(batch),
        }
