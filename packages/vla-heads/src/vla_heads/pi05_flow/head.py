"""``pi05_flow``: the pi0.5 action expert (Gemma 300M by default) with flow matching.

What changes from ``pi0_flow`` (LeRobot 0.6.1 ``policies/pi05/modeling_pi05.py``, openpi ``pi05=True``):

- No state token: the robot state reaches the model as discretized text in the prefix prompt
  (``paligemma`` with ``discrete_state_bins=256``). The suffix is the H action tokens alone,
  ``action_in_proj(x_t)``, all seeing each other and the prefix.
- Time enters through adaptive RMSNorm: ``cond = silu(time_mlp_out(silu(time_mlp_in(emb(t)))))``
  (B, D), with ``emb`` the sine-cosine embedding of pi0; every expert norm (both per layer and the
  final one) maps ``cond`` to scale, shift and gate, and the gates scale the residual branches
  (:class:`vla_core.gemma.AdaptiveRMSNorm`).

Everything else (prefix K/V per layer, flow convention, Euler sampler, loss over the real action
dims) is :class:`vla_heads.pi0_flow.base.ExpertFlowHead`. Shapes: ``B`` batch, ``H`` horizon,
``D`` width, ``A_max`` = ``max_action_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from vla_core import HEADS
from vla_core.gemma import AdaptiveRMSNorm

from vla_heads.pi0_flow.base import ExpertFlowConfig, ExpertFlowHead
from vla_heads.pi0_flow.expert import suffix_allowed
from vla_heads.pi0_flow.flow import sinusoidal_time_embedding


@dataclass(frozen=True, kw_only=True)
class Pi05FlowConfig(ExpertFlowConfig):
    """:class:`ExpertFlowConfig` (gemma_300m, chunk 50, 10 Euler steps by default); the time MLP and
    the adaptive norms' conditioning have the expert's ``width``."""


@HEADS.register("pi05_flow")
class Pi05FlowHead(ExpertFlowHead):
    """pi0.5 action expert: ``forward`` -> flow-matching loss, ``predict_action`` -> (B, H, A) by Euler.

    Needs ``context.past_key_values``: per-layer (k, v) of shape (B, Hkv, P, d) and
    ``context.attention_mask`` (B, P), as the ``paligemma`` backbone returns them (with the state in
    its prompt: ``discrete_state_bins``).
    """

    config_class = Pi05FlowConfig

    def __init__(self, config: Pi05FlowConfig) -> None:
        super().__init__(config, cond_dim=config.width)
        c = config
        self.norm = AdaptiveRMSNorm(c.width, c.width, eps=c.rms_eps)
        self.time_mlp_in = nn.Linear(c.width, c.width)
        self.time_mlp_out = nn.Linear(c.width, c.width)
        self.register_buffer("suffix_allowed", suffix_allowed(c.horizon, state_token=False), persistent=False)

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second.

        A 2-layer expert of width 32 with 8 query heads sharing 1 K/V head of dim 8: the K/V geometry
        of ``paligemma``'s tiny config.
        """
        return {
            "horizon": 4, "max_action_dim": 6, "width": 32, "depth": 2, "mlp_dim": 64,
            "num_heads": 8, "num_kv_heads": 1, "head_dim": 8, "num_inference_steps": 4,
        }

    def fixed_inputs(self, batch: Any, dtype) -> None:
        """Nothing: the state is in the prefix."""
        return

    def time_condition(self, time: Tensor, dtype) -> Tensor:
        """Time (B,) -> the adaptive norms' condition (B, D) in ``dtype``."""
        c = self.config
        emb = sinusoidal_time_embedding(time, c.width, c.min_period, c.max_period).to(dtype)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))

    def embed_suffix(self, x_t: Tensor, time: Tensor, fixed: None) -> tuple[Tensor, Tensor]:
        """Action tokens (B, H, D) and the time condition (B, D)."""
        return self.action_in_proj(x_t), self.time_condition(time, x_t.dtype)

    def final_norm(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.norm(x, cond)[0]
