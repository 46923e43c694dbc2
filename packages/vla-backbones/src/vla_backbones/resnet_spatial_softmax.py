"""``resnet_spatial_softmax``: Diffusion Policy's RGB encoder as a backbone.

Per camera image (B, C, H, W), optionally resized, then randomly cropped in training / center
cropped in eval: torchvision ResNet up to ``layer4`` (BatchNorm optionally replaced by GroupNorm with
``C // 16`` groups) -> SpatialSoftmax keypoints (1x1 conv to K maps, softmax over positions,
expected (x, y)) -> Linear(2K, 2K) -> ReLU. One token of width ``D = 2K`` per camera and observation
step, step-major: token ``s * n_cameras + c`` is camera ``c`` at step ``s``; (B, n_obs_steps * n_cameras, D).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vla_core import BACKBONES, Backbone, BackboneOutput, ConfigError, ContextSpec
from vla_core.checkpoint import load_tensors
from vla_core.config import ComponentConfig, check_positive

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass(frozen=True, kw_only=True)
class SpatialSoftmaxConfig(ComponentConfig):
    """Derived fields (filled from the features): ``image_keys``, ``image_shape``, ``n_obs_steps``."""

    image_keys: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of every camera
    n_obs_steps: int = 1
    vision_backbone: str = "resnet18"
    pretrained_weights: str | None = None  # path of a torchvision state-dict file (.safetensors, or .pth)
    use_group_norm: bool = True
    resize_shape: tuple[int, int] | None = None
    crop_shape: tuple[int, int] | None = None
    crop_is_random: bool = True
    num_keypoints: int = 32
    separate_encoder_per_camera: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not self.image_keys:
            raise ConfigError(f"{name}.image_keys: expected at least one camera key, received none")
        if self.image_shape is None or len(self.image_shape) != 3:
            raise ConfigError(f"{name}.image_shape: expected (C, H, W), received {self.image_shape!r}")
        check_positive(name, n_obs_steps=self.n_obs_steps, num_keypoints=self.num_keypoints)
        if self.vision_backbone not in RESNETS:
            raise ConfigError(
                f"{name}.vision_backbone: expected one of {list(RESNETS)}, received {self.vision_backbone!r}"
            )
        if self.use_group_norm and self.pretrained_weights:
            raise ConfigError(
                f"{name}.use_group_norm: replacing BatchNorm by GroupNorm discards the pretrained BatchNorm "
                "statistics; set use_group_norm=False to use pretrained_weights"
            )
        _, h, w = self.image_shape
        if self.resize_shape is not None:
            check_positive(name, resize_shape=min(self.resize_shape))
            h, w = self.resize_shape
        if self.crop_shape is not None:
            ch, cw = self.crop_shape
            if not (0 < ch <= h and 0 < cw <= w):
                raise ConfigError(
                    f"{name}.crop_shape: expected a crop within the {h}x{w} image, received {self.crop_shape}"
                )

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) the ResNet sees."""
        if self.crop_shape is not None:
            return tuple(self.crop_shape)
        if self.resize_shape is not None:
            return tuple(self.resize_shape)
        return tuple(self.image_shape[1:])


def _resnet_trunk(name: str, use_group_norm: bool, weights_path: str | None) -> nn.Sequential:
    """torchvision ResNet up to layer4 (children before avgpool/fc), optionally with GroupNorm."""
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)
    if weights_path:
        path = Path(weights_path)
        tensors = load_tensors(path, allow_pickle=path.suffix != ".safetensors")
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"{path}: not a torchvision {name} state dict "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
    trunk = nn.Sequential(*list(model.children())[:-2])
    if use_group_norm:
        _batchnorm_to_groupnorm(trunk)
    return trunk


def _batchnorm_to_groupnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d in ``module`` (in place) by GroupNorm(C // 16, C)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.GroupNorm(child.num_features // 16, child.num_features))
        else:
            _batchnorm_to_groupnorm(child)


class SpatialSoftmax(nn.Module):
    """Keypoints from a feature map: (N, C, h, w) -> (N, K, 2) expected (x, y) in [-1, 1].

    A 1x1 conv maps C channels to K maps; each map is softmaxed over its h*w positions and the
    keypoint is the softmax-weighted mean of the position grid (x varies along w, y along h).
    """

    def __init__(self, channels: int, height: int, width: int, num_keypoints: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, num_keypoints, kernel_size=1)
        xs, ys = np.meshgrid(np.linspace(-1.0, 1.0, width), np.linspace(-1.0, 1.0, height))
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], axis=1)
        self.register_buffer("pos_grid", torch.from_numpy(grid).float())  # (h*w, 2), saved with the weights

    def forward(self, features: Tensor) -> Tensor:
        maps = self.conv(features)
        n, k = maps.shape[:2]
        attention = F.softmax(maps.reshape(n * k, -1), dim=-1)
        return (attention @ self.pos_grid.to(attention.dtype)).view(n, k, 2)


class RgbEncoder(nn.Module):
    """One camera's encoder: images (N, C, h, w), already cropped -> features (N, 2K)."""

    def __init__(self, config: SpatialSoftmaxConfig) -> None:
        super().__init__()
        self.backbone = _resnet_trunk(
            config.vision_backbone, config.use_group_norm, config.pretrained_weights
        )
        with torch.no_grad():  # eval: the shape probe must not touch BatchNorm running statistics
            probe = torch.zeros(1, config.image_shape[0], *config.input_hw)
            c, h, w = self.backbone.eval()(probe).shape[1:]
        self.backbone.train()
        self.pool = SpatialSoftmax(c, h, w, config.num_keypoints)
        self.proj = nn.Linear(2 * config.num_keypoints, 2 * config.num_keypoints)

    def forward(self, images: Tensor) -> Tensor:
        keypoints = self.pool(self.backbone(images)).flatten(1)
        return F.relu(self.proj(keypoints))


def center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w), the central window (torchvision's rounding of the offsets)."""
    h, w = size
    top = round((images.shape[-2] - h) / 2.0)
    left = round((images.shape[-1] - w) / 2.0)
    return images[..., top : top + h, left : left + w]


def random_crop(images: Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """(N, C, H, W) -> (N, C, h, w), an independent uniformly random window per image."""
    n, _, height, width = images.shape
    h, w = size
    top = torch.randint(0, height - h + 1, (n, 1), generator=generator).to(images.device)
    left = torch.randint(0, width - w + 1, (n, 1), generator=generator).to(images.device)
    rows = (top + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, h, 1)
    cols = (left + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, w)
    index = torch.arange(n, device=images.device)[:, None, None, None]
    return images[index, torch.arange(images.shape[1], device=images.device)[None, :, None, None], rows, cols]


@BACKBONES.register("resnet_spatial_softmax")
class SpatialSoftmaxBackbone(Backbone):
    """Cameras over ``n_obs_steps`` -> (B, n_obs_steps * n_cameras, 2K) keypoint-feature tokens."""

    config_class = SpatialSoftmaxConfig

    def __init__(self, config: SpatialSoftmaxConfig) -> None:
        super().__init__()
        self.config = config
        n_encoders = len(config.image_keys) if config.separate_encoder_per_camera else 1
        self.encoders = nn.ModuleList(RgbEncoder(config) for _ in range(n_encoders))
        self.output_dim = 2 * config.num_keypoints

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second."""
        return {
            "vision_backbone": "resnet18",
            "use_group_norm": True,
            "num_keypoints": 4,
            "crop_shape": [24, 24],
        }

    def context_spec(self) -> ContextSpec:
        """Width 2K, one token per camera and observation step, no positions."""
        c = self.config
        return ContextSpec(width=self.output_dim, num_tokens=c.n_obs_steps * len(c.image_keys))

    def fsdp_units(self) -> set[type[nn.Module]]:
        """One unit per camera encoder: it runs the whole ResNet trunk, SpatialSoftmax and projection
        in its own forward."""
        return {RgbEncoder}

    def preprocess(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> resized, then cropped (random in training if ``crop_is_random``, else central)."""
        c = self.config
        if c.resize_shape is not None:
            images = F.interpolate(
                images, size=tuple(c.resize_shape), mode="bilinear", align_corners=False, antialias=True
            )
        if c.crop_shape is not None:
            if self.training and c.crop_is_random:
                images = random_crop(images, tuple(c.crop_shape))
            else:
                images = center_crop(images, tuple(c.crop_shape))
        return images

    def _images(self, batch: Any, key: str) -> Tensor:
        """batch[key] as (B, n_obs_steps, C, H, W); a single step (B, C, H, W) is repeated."""
        images = batch[key]
        if images.dim() == 4:
            images = images.unsqueeze(1).expand(-1, self.config.n_obs_steps, -1, -1, -1)
        if images.dim() != 5 or images.shape[1] != self.config.n_obs_steps:
            raise ValueError(
                f"batch key {key!r}: expected (B, {self.config.n_obs_steps}, C, H, W) or (B, C, H, W), "
                f"received {tuple(images.shape)}"
            )
        return images

    def forward(self, batch: Any) -> BackboneOutput:
        keys = self.config.image_keys
        images = torch.stack([self._images(batch, k) for k in keys], dim=2)  # (B, S, N, C, H, W)
        b, s, n = images.shape[:3]
        if len(self.encoders) == 1:
            feats = self.encoders[0](self.preprocess(images.flatten(0, 2))).view(b, s, n, -1)
        else:
            feats = torch.stack(
                [
                    enc(self.preprocess(images[:, :, i].flatten(0, 1))).view(b, s, -1)
                    for i, enc in enumerate(self.encoders)
                ],
                dim=2,
            )  # (B, S, N, D)
        tokens = feats.reshape(b, s * n, self.output_dim)
        return BackboneOutput(
            features=tokens, attention_mask=torch.ones(b, s * n, dtype=torch.bool, device=tokens.device)
        )
