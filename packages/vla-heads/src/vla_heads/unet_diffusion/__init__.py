"""``unet_diffusion``: Diffusion Policy's conditional 1D UNet head with diffusers' DDPM / DDIM schedulers."""

from vla_heads.unet_diffusion.config import UNetDiffusionConfig
from vla_heads.unet_diffusion.head import UNetDiffusionHead, make_scheduler
from vla_heads.unet_diffusion.unet import ConditionalUnet1d

__all__ = ["ConditionalUnet1d", "UNetDiffusionConfig", "UNetDiffusionHead", "make_scheduler"]
