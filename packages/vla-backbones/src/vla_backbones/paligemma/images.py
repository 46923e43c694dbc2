"""Image preparation for SigLIP: aspect-preserving resize with centred zero padding, then [-1, 1]."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_with_pad(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, size, size): bilinear resize keeping the aspect ratio, clamp to
    [0, 1], then zero padding split evenly on both sides (openpi's convention)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    ratio = max(width / size, height / size)
    new_h, new_w = int(height / ratio), int(width / ratio)
    resized = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(resized, (left, size - new_w - left, top, size - new_h - top))


def to_siglip_range(images: Tensor, size: int) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B, C, size, size) in [-1, 1]."""
    return resize_with_pad(images, size) * 2.0 - 1.0
