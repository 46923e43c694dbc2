"""GR00T N1.5 style flow-matching action head with a cross-attention DiT (registered ``dit_flow_matching``)."""

from vla_heads.dit_flow_matching.config import DiTFlowMatchingConfig
from vla_heads.dit_flow_matching.head import DiTFlowMatchingHead

__all__ = ["DiTFlowMatchingConfig", "DiTFlowMatchingHead"]
