"""``pi0_flow`` head: the pi0 action expert (transformers' Gemma layers via ``vla-heads[pi0]``, imported on build)."""

from vla_heads.pi0_flow.head import Pi0FlowConfig, Pi0FlowHead

__all__ = ["Pi0FlowConfig", "Pi0FlowHead"]
