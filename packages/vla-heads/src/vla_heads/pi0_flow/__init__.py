"""``pi0_flow`` head: the pi0 action expert (torch only; the Gemma layers come from ``vla_core.gemma``)."""

from vla_heads.pi0_flow.base import ExpertFlowConfig, ExpertFlowHead
from vla_heads.pi0_flow.head import Pi0FlowConfig, Pi0FlowHead

__all__ = ["ExpertFlowConfig", "ExpertFlowHead", "Pi0FlowConfig", "Pi0FlowHead"]
