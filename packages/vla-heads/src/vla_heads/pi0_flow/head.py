"""``pi0_flow``: the pi0 action expert (Gemma 300M by default) with flow matching.

The suffix is one state token and H action tokens (noisy actions fused with a sinusoidal time
embedding by an MLP). Expert layer i attends to the prefix K/V of backbone layer i plus the suffix,
with pi0's block-causal mask: the state token sees the prefix and itself, action tokens see
everything (see :mod:`vla_heads.pi0_flow.base` for what pi0 and pi0.5 share).

State and actions are zero-padded to ``max_state_dim`` / ``max_action_dim`` (32 in pi0
checkpoints); the loss covers the real ``action_dim`` dims only (LeRobot's reduction).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vla_core import HEADS, ConfigError
from vla_core.config import check_positive
from vla_core.features import OBS_STATE
from vla_core.gemma import RMSNorm

from vla_heads.pi0_flow.base import ExpertFlowConfig, ExpertFlowHead
from vla_heads.pi0_flow.expert import suffix_allowed
from vla_heads.pi0_flow.flow import sinusoidal_time_embedding


@dataclass(frozen=True, kw_only=True)
class Pi0FlowConfig(ExpertFlowConfig):
    """:class:`ExpertFlowConfig` plus the state token's input: ``state_dim`` zero-padded to ``max_state_dim``."""

    state_dim: int | None = None
    max_state_dim: int = 32

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.state_dim is None:
            raise ConfigError(f"{name}.state_dim: pi0 embeds {OBS_STATE!r} as its state token; declare that feature")
        check_positive(name, state_dim=self.state_dim)
        super().__post_init__()
        if self.state_dim > self.max_state_dim:
            raise ConfigError(f"{name}.max_state_dim: expected >= state_dim {self.state_dim}, received {self.max_state_dim}")


@HEADS.register("pi0_flow")
class Pi0FlowHead(ExpertFlowHead):
    """pi0 action expert: ``forward`` -> flow-matching loss, ``predict_action`` -> (B, H, A) by Euler
    (RTC-guided with ``guide=``, see :mod:`vla_core.rtc`).

    Needs ``context.past_key_values``: per-layer (k, v) of shape (B, Hkv, P, d) and
    ``context.attention_mask`` (B, P), as the ``paligemma`` backbone returns them.
    """

    config_class = Pi0FlowConfig

    def __init__(self, config: Pi0FlowConfig) -> None:
        super().__init__(config)
        c = config
        self.norm = RMSNorm(c.width, eps=c.rms_eps)
        self.state_proj = nn.Linear(c.max_state_dim, c.width)
        self.action_time_mlp_in = nn.Linear(2 * c.width, c.width)
        self.action_time_mlp_out = nn.Linear(c.width, c.width)
        self.register_buffer("suffix_allowed", suffix_allowed(c.horizon), persistent=False)

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second.

        A 2-layer expert of width 32 with 8 query heads sharing 1 K/V head of dim 8: the K/V geometry
        of ``paligemma``'s tiny config.
        """
        return {
            "horizon": 4, "max_action_dim": 6, "max_state_dim": 6, "width": 32, "depth": 2, "mlp_dim": 64,
            "num_heads": 8, "num_kv_heads": 1, "head_dim": 8, "num_inference_steps": 4,
        }

    def fixed_inputs(self, batch: Any, dtype: torch.dtype) -> Tensor:
        """``observation.state`` (B, S) or (B, T, S) -> the state token (B, 1, D), computed in ``dtype``."""
        return self.state_token(batch, dtype)

    def state_token(self, batch: Any, dtype: torch.dtype) -> Tensor:
        """``observation.state`` (B, S) or (B, T, S) -> state token (B, 1, D), computed in ``dtype``."""
        state = batch[OBS_STATE]
        state = state[:, -1] if state.dim() == 3 else state
        return self.state_proj(self._pad(state, self.config.max_state_dim).to(dtype))[:, None]

    def action_tokens(self, x_t: Tensor, time: Tensor) -> Tensor:
        """Noisy actions (B, H, A_max) and time (B,) -> action tokens (B, H, D), in x_t's dtype."""
        c = self.config
        actions = self.action_in_proj(x_t)
        time_emb = sinusoidal_time_embedding(time, c.width, c.min_period, c.max_period).to(actions.dtype)
        fused = torch.cat([actions, time_emb[:, None].expand_as(actions)], dim=-1)
        return self.action_time_mlp_out(F.silu(self.action_time_mlp_in(fused)))

    def embed_suffix(self, x_t: Tensor, time: Tensor, fixed: Tensor) -> tuple[Tensor, None]:
        """[state token | action tokens] (B, 1 + H, D); no adaptive-norm condition."""
        return torch.cat([fixed, self.action_tokens(x_t, time)], dim=1), None

    def final_norm(self, x: Tensor, cond: None) -> Tensor:
        return self.norm(x)
