"""ACT (Action Chunking Transformer) head, registered as ``act_vae``."""

from vla_heads.act_vae.head import ACTVAEConfig, ACTVAEHead

__all__ = ["ACTVAEConfig", "ACTVAEHead"]
