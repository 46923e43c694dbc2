"""Eagle 2 / 2.5 style VLM backbone (GR00T N1.5), registered as ``eagle``."""

from vla_backbones.eagle.config import EagleConfig
from vla_backbones.eagle.model import EagleBackbone

__all__ = ["EagleBackbone", "EagleConfig"]
