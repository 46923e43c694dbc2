"""``pi05_flow`` head: the pi0.5 action expert (adaptive-RMSNorm time conditioning; torch only)."""

from vla_heads.pi05_flow.head import Pi05FlowConfig, Pi05FlowHead

__all__ = ["Pi05FlowConfig", "Pi05FlowHead"]
