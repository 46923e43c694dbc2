"""ACT's image encoder: a torchvision ResNet cut after layer4, a 1x1 projection, 2D sine positions.

Each camera's (B, 3, H, W) image becomes an (H/32 x W/32) feature map, projected to ``dim_model``
and flattened row-major into tokens; the cameras' tokens are concatenated in ``image_keys`` order.
The matching 2D sinusoidal position embeddings (DETR's ``PositionEmbeddingSine(normalize=True)``,
as in ACT and LeRobot) come back in ``BackboneOutput.pos_embed`` for the head to add.

Cameras may differ in resolution (a wide top camera and a small wrist camera), as in LeRobot's ACT:
each camera gets the positions of its own feature-map size. Cameras of one shape run through the
ResNet as one batch; the tokens and positions keep the camera order either way.

The state and environment-state tokens of ACT are projected by the head (``act_vae``), which
reads them from the batch: this backbone only sees images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d
from vla_core import (
    BACKBONES,
    Backbone,
    BackboneOutput,
    CheckpointError,
    ComponentConfig,
    ConfigError,
    ContextSpec,
    load_tensors,
)
from vla_core.config import check_choice, check_positive
from vla_core.interfaces import Batch

RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


@dataclass(frozen=True, kw_only=True)
class ResNetACTConfig(ComponentConfig):
    """image_keys / image_shapes / image_shape are filled by the policy from its VISUAL features.

    image_shapes: one (C, H, W) per camera, in ``image_keys`` order (cameras may differ in size).
    image_shape: the first camera's (C, H, W); a config that gives only ``image_shape`` (written before
    ``image_shapes`` existed, when all cameras had one shape) means that shape for every camera.
    Neither set: the token count is known only at the forward (``context_spec().num_tokens`` is None).

    pretrained_weights: a local torchvision ResNet state-dict file (``.safetensors``, or the
    ``.pth`` torchvision distributes, read with ``torch.load(weights_only=True)``); ``fc.*`` is
    ignored. None: random init (the weights usually come from a policy checkpoint).
    """

    image_keys: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None
    image_shapes: tuple[tuple[int, int, int], ...] | None = None
    variant: str = "resnet18"
    dim_model: int = 512
    frozen_bn: bool = True
    replace_final_stride_with_dilation: bool = False
    pretrained_weights: str | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "variant", self.variant, RESNETS)
        check_positive(name, dim_model=self.dim_model)
        if not self.image_keys:
            raise ConfigError(f"{name}.image_keys: expected at least one camera key, received {self.image_keys!r}")
        if self.replace_final_stride_with_dilation and self.variant in ("resnet18", "resnet34"):
            raise ConfigError(f"{name}.replace_final_stride_with_dilation: torchvision's BasicBlock ({self.variant}) "
                              "has no dilation; use a bottleneck variant such as resnet50")
        if self.image_shape is not None and self.image_shape[0] != 3:
            raise ConfigError(f"{name}.image_shape: a ResNet takes 3-channel images, received {self.image_shape!r}")
        if self.image_shapes is not None:
            if len(self.image_shapes) != len(self.image_keys):
                raise ConfigError(f"{name}.image_shapes: expected one (C, H, W) per camera of image_keys "
                                  f"{list(self.image_keys)}, received {len(self.image_shapes)}: {self.image_shapes!r}")
            bad = [s for s in self.image_shapes if s[0] != 3 or min(s) < 1]
            if bad:
                raise ConfigError(f"{name}.image_shapes: a ResNet takes 3-channel images, received {bad[0]!r}")
            if self.image_shape is not None and tuple(self.image_shape) != tuple(self.image_shapes[0]):
                raise ConfigError(f"{name}.image_shape: is the first camera's shape {self.image_shapes[0]!r} "
                                  f"(image_shapes[0]), received {self.image_shape!r}; drop image_shape")

    def camera_shapes(self) -> tuple[tuple[int, int, int], ...] | None:
        """(C, H, W) per camera in ``image_keys`` order, or None when not known before the forward."""
        if self.image_shapes is not None:
            return tuple(tuple(s) for s in self.image_shapes)
        if self.image_shape is not None:
            return (tuple(self.image_shape),) * len(self.image_keys)
        return None


def feature_map_size(height: int, width: int, dilation: bool = False) -> tuple[int, int]:
    """(h, w) of a torchvision ResNet's layer4 map for an (height x width) image.

    The stem convolution, the max-pool and the first block of layer2..layer4 each halve a side,
    rounding up (kernel 3 / 7 with padding 1 / 3, or 1x1 stride-2 shortcuts): 5 halvings, 4 with
    ``replace_final_stride_with_dilation`` (layer4 keeps stride 1).
    """
    for _ in range(4 if dilation else 5):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def sine_pos_embed_2d(height: int, width: int, dim: int, *, device=None) -> Tensor:
    """DETR / ACT 2D sine positions for an (height x width) map -> (height * width, dim), float32.

    Positions 1..H and 1..W are scaled to (0, 2 pi]; each axis gets dim/2 channels of interleaved
    sin / cos with frequencies 10000^(2 (i // 2) / (dim / 2)); the y half comes first.
    """
    half = dim // 2
    eps, two_pi = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = (y / (y[-1:] + eps) * two_pi)[:, None].expand(height, width)
    x = (x / (x[-1:] + eps) * two_pi)[None, :].expand(height, width)
    inv_freq = 10000 ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)

    def axis(pos: Tensor) -> Tensor:  # (h, w) -> (h, w, half), [sin, cos] interleaved
        angles = pos[..., None] / inv_freq
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(2)

    return torch.cat((axis(y), axis(x)), dim=-1).reshape(height * width, 2 * half)


def load_resnet_weights(resnet: nn.Module, path: str) -> None:
    """Load a torchvision ResNet state dict (``fc.*`` and BatchNorm counters are not used)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise CheckpointError(
            f"ResNetACTConfig.pretrained_weights: {file} not found; give a local torchvision state-dict file "
            "(.safetensors or .pth) or None for random init"
        )
    tensors = load_tensors(file, allow_pickle=file.suffix in (".pth", ".pt"))
    own = resnet.state_dict()
    tensors = {k: v for k, v in tensors.items() if not k.startswith("fc.") and not (
        k.endswith("num_batches_tracked") and k not in own)}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad = [k for k in own if k in tensors and own[k].shape != tensors[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"{file} is not a torchvision ResNet state dict for this variant: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatch {bad[:5]}"
        )
    resnet.load_state_dict(tensors, strict=True)


@BACKBONES.register("resnet_act")
class ResNetACTBackbone(Backbone):
    """Images -> ResNet layer4 maps -> 1x1 conv -> tokens (B, n_cams * h * w, dim_model) + positions.

    ``pos_embed`` is (1, T, dim_model); ``attention_mask`` is all True.
    """

    config_class = ResNetACTConfig
    weight_source_fields = ("pretrained_weights",)

    def __init__(self, config: ResNetACTConfig) -> None:
        super().__init__()
        self.config = config
        self.output_dim = config.dim_model
        norm = FrozenBatchNorm2d if config.frozen_bn else nn.BatchNorm2d
        resnet = getattr(torchvision.models, config.variant)(
            weights=None,
            norm_layer=norm,
            replace_stride_with_dilation=[False, False, config.replace_final_stride_with_dilation],
        )
        channels = resnet.fc.in_features
        del resnet.fc, resnet.avgpool
        if config.pretrained_weights is not None:
            load_resnet_weights(resnet, config.pretrained_weights)
        self.resnet = resnet
        self.proj = nn.Conv2d(channels, config.dim_model, kernel_size=1)
        self._pos_cache: dict[tuple, Tensor] = {}

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second."""
        return {"variant": "resnet18", "dim_model": 32}

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {type(self.resnet.layer1[0])}  # BasicBlock or Bottleneck, each called as a module

    def context_spec(self) -> ContextSpec:
        """Width ``dim_model``, one token per feature-map cell of every camera (summed over the
        cameras' own map sizes), sine positions."""
        c = self.config
        shapes = c.camera_shapes()
        tokens = None
        if shapes is not None:
            sizes = [feature_map_size(h, w, c.replace_final_stride_with_dilation) for _, h, w in shapes]
            tokens = sum(h * w for h, w in sizes)
        return ContextSpec(width=c.dim_model, num_tokens=tokens, pos_embed=True)

    def feature_map(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, dim_model, h, w) with h, w = H/32, W/32 (H/16, W/16 with dilation).

        torchvision's stem and its four stages, each called as a module, then the 1x1 projection.
        Memory format: the stem, layer1 and layer2 run channels-last (NHWC), where max-pooling is
        vectorised and their large maps need no layout conversion inside the convolutions; layer3
        and layer4 run NCHW, where the weights outweigh the maps (channels-last activations make
        PyTorch convert every convolution weight on each call). Same values either way, on every
        device; CPU ResNet-18 at 224x224: ~11 % off batch-1 inference, ~8 % off a training step.
        """
        r = self.resnet
        x = images.contiguous(memory_format=torch.channels_last)
        x = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))
        x = r.layer4(r.layer3(x.contiguous()))
        return self.proj(x)

    def positions(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(h * w, dim_model) sine positions, cached per map size."""
        return self.positions_for(((height, width),), device, dtype)

    def positions_for(self, sizes: tuple[tuple[int, int], ...], device: torch.device, dtype: torch.dtype) -> Tensor:
        """(sum h_i * w_i, dim_model): each camera's sine positions for its own map size (h_i, w_i),
        concatenated in camera order; cached per tuple of sizes."""
        key = (sizes, device, dtype)
        if key not in self._pos_cache:
            d = self.config.dim_model
            self._pos_cache[key] = torch.cat(
                [sine_pos_embed_2d(h, w, d, device=device) for h, w in sizes], dim=0
            ).to(dtype)
        return self._pos_cache[key]

    def _images(self, batch: Batch) -> list[Tensor]:
        images = []
        for key in self.config.image_keys:
            if key not in batch:
                raise ValueError(f"missing batch key {key!r}: resnet_act expects one image (B, 3, H, W) per camera "
                                 f"{list(self.config.image_keys)}; received keys {sorted(batch)}")
            img = batch[key]
            if img.dim() == 5 and img.shape[1] == 1:  # (B, 1, C, H, W): a one-step observation window
                img = img[:, 0]
            if img.dim() != 4 or img.shape[1] != 3:
                raise ValueError(f"batch key {key!r}: expected an image of shape (B, 3, H, W), received {tuple(img.shape)}")
            if images and img.shape[0] != images[0].shape[0]:
                raise ValueError(f"batch key {key!r}: batch size {img.shape[0]} differs from the first camera's "
                                 f"{images[0].shape[0]}")
            images.append(img)
        return images

    def forward(self, batch: Batch) -> BackboneOutput:
        """Each camera (B, 3, H_i, W_i) -> its map (B, D, h_i, w_i) -> tokens (B, sum_i h_i w_i, D) in
        camera order, with positions (1, sum_i h_i w_i, D) of each camera's own map size."""
        images = self._images(batch)
        bsz = images[0].shape[0]
        # Cameras of one shape share one ResNet pass as a batch (n * B, 3, H, W); the order of the
        # tokens stays the cameras' order whatever the grouping.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape[2:]), []).append(i)
        per_camera: list[Tensor] = [images[0]] * len(images)  # (B, h_i * w_i, D) tokens, filled below
        sizes: list[tuple[int, int]] = [(0, 0)] * len(images)  # (h_i, w_i) map sizes
        for cams in groups.values():
            stacked = images[cams[0]] if len(cams) == 1 else torch.cat([images[i] for i in cams], dim=0)
            maps = self.feature_map(stacked)  # (n * B, D, h, w)
            tokens = maps.flatten(2).transpose(1, 2)  # (n * B, h * w, D), row-major cells
            for i, t in zip(cams, tokens.split(bsz, dim=0)):
                per_camera[i], sizes[i] = t, (maps.shape[2], maps.shape[3])
        tokens = per_camera[0] if len(images) == 1 else torch.cat(per_camera, dim=1)
        pos = self.positions_for(tuple(sizes), tokens.device, tokens.dtype)[None]
        mask = torch.ones(bsz, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        return BackboneOutput(features=tokens, attention_mask=mask, pos_embed=pos)
