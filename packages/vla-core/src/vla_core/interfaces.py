"""The component interfaces: Backbone, ActionHead and Projector, and what they return.

Shapes: ``B`` batch, ``T`` context tokens, ``D`` width, ``H`` horizon (chunk length),
``A`` action dim.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vla_core.config import ComponentConfig

Batch = Mapping[str, Any]


@dataclass
class BackboneOutput:
    """Context for the action head.

    features: (B, T, D) context tokens.
    attention_mask: (B, T) bool, True where the token is valid.
    pos_embed: (B or 1, T, D) positions for heads that add them (ACT), else None.
    past_key_values: per-layer prefix K/V for expert heads (pi0), else None.
    """

    features: Tensor
    attention_mask: Tensor
    pos_embed: Tensor | None = None
    past_key_values: Any = None


@dataclass
class HeadOutput:
    """loss: differentiable scalar; metrics: detached scalars for logging (e.g. l1, kl, mse)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Component(nn.Module, metaclass=abc.ABCMeta):
    """Shared base: a config class, a registered name and the FSDP sharding units."""

    config_class: ClassVar[type[ComponentConfig]]
    registered_name: ClassVar[str]

    def fsdp_units(self) -> set[type[nn.Module]]:
        """Module classes to shard one by one with FSDP (e.g. transformer blocks). Default: none."""
        return set()

    # Training defaults a component may suggest to the trainer, e.g. {"ema": True} for diffusion heads.
    training_defaults: ClassVar[dict[str, Any]] = {}

    # Config fields that only name files the initial weights are read from (e.g. "pretrained_weights").
    # A saved policy carries its weights, so ``VLAPolicy.save_pretrained`` writes these as None.
    weight_source_fields: ClassVar[tuple[str, ...]] = ()


class Backbone(Component):
    """Turns observations (images, state, language) into context tokens.

    Subclasses set ``self.output_dim`` (D) and implement ``forward(batch) -> BackboneOutput``.
    """

    output_dim: int

    @abc.abstractmethod
    def forward(self, batch: Batch) -> BackboneOutput:
        """batch -> BackboneOutput with features (B, T, D) and attention_mask (B, T)."""

    def context_spec(self) -> dict[str, Any]:
        """Facts about the context beyond ``output_dim`` (e.g. the per-layer K/V geometry of
        ``past_key_values``). A head config that declares a field of the same name receives the
        value from the policy, which rejects a spec that says otherwise. Default: none."""
        return {}


class ActionHead(Component):
    """Maps context tokens to an action chunk (B, H, A).

    Subclasses set ``self.horizon`` (H) and ``self.action_dim`` (A).
    """

    horizon: int
    action_dim: int

    @abc.abstractmethod
    def forward(self, context: BackboneOutput, batch: Batch) -> HeadOutput:
        """Training loss for the (normalized) target ``batch["action"]`` (B, H, A)."""

    @abc.abstractmethod
    def predict_action(
        self,
        context: BackboneOutput,
        batch: Batch,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(Normalized) action chunk (B, H, A). Generative heads start from ``noise`` (B, H, A) when given."""


class Projector(Component):
    """Maps context tokens (B, T, in_dim) to (B, T, out_dim)."""

    in_dim: int
    out_dim: int

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """(B, T, in_dim) -> (B, T, out_dim)."""
