"""The component interfaces: Backbone, ActionHead and Projector, and what they return.

Shapes: ``B`` batch, ``T`` context tokens, ``D`` width, ``H`` horizon (chunk length),
``A`` action dim.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from vla_core.config import ComponentConfig

Batch = Mapping[str, Any]
C = TypeVar("C", bound=ComponentConfig)


@dataclass(frozen=True)
class KVGeometry:
    """Per-layer K/V a backbone hands to an expert head: ``num_layers`` pairs (k, v), each of shape
    (B, num_kv_heads, T, head_dim)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class ContextSpec:
    """What a backbone's context holds, known once it is built (before any forward).

    width: D of ``features``. num_tokens: T, or None when it varies with the input (text length).
    pos_embed: whether ``pos_embed`` is set. kv: the geometry of ``past_key_values``, or None.
    """

    width: int
    num_tokens: int | None
    pos_embed: bool = False
    kv: KVGeometry | None = None


@dataclass(frozen=True)
class ContextNeeds:
    """What a head reads from the context.

    width: the feature width the head attends with, or None when it takes the backbone's (its
    ``context_dim`` is then filled in); a different width inserts a projector. fixed_tokens: it needs
    the same token count for every input (e.g. it flattens the tokens). kv: it reads the per-layer
    ``past_key_values`` rather than only the features.
    """

    width: int | None = None
    fixed_tokens: bool = False
    kv: bool = False


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

    # Default LoRA targets: glob patterns over the component's own module names (e.g.
    # "layers.*.self_attn.*_proj"), the attention and MLP projections a fine-tune adapts. The trainer's
    # ``peft`` section uses them when it names no ``target_modules`` (vla_train.adapters).
    lora_targets: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields (no ``type``) of a tiny instance that builds in well under a second.

        The contract suite (:mod:`vla_core.testing`) builds every registered component from this.
        Fields the policy derives from its features (``image_keys``, ``state_dim``, ``action_dim``,
        ``context_dim`` ...) are left out. ``workdir`` is a scratch directory for assets the tiny
        instance needs (e.g. a tokenizer).
        """
        raise NotImplementedError(
            f"{cls.__qualname__} declares no tiny_config(); the contract suite needs one "
            "(a classmethod returning the fields of a tiny instance)"
        )


class Backbone(Component):
    """Turns observations (images, state, language) into context tokens.

    Subclasses set ``self.output_dim`` (D) and implement ``forward(batch) -> BackboneOutput``.
    """

    output_dim: int

    @abc.abstractmethod
    def forward(self, batch: Batch) -> BackboneOutput:
        """batch -> BackboneOutput with features (B, T, D) and attention_mask (B, T)."""

    def context_spec(self) -> ContextSpec:
        """What the context holds (checked against the head's needs when a policy is built).

        Default: width ``output_dim``, a token count that varies, no positions, no K/V.
        """
        return ContextSpec(width=self.output_dim, num_tokens=None)

    @classmethod
    def configure_for(cls, config: C, needs: ContextNeeds) -> C:
        """This backbone's config adapted to what the head needs (e.g. hidden states vs K/V).

        Raises :class:`~vla_core.errors.ConfigError` naming the field when the config contradicts
        the head. Default: the config unchanged.
        """
        return config


class ActionHead(Component):
    """Maps context tokens to an action chunk (B, H, A).

    Subclasses set ``self.horizon`` (H) and ``self.action_dim`` (A).
    """

    horizon: int
    action_dim: int

    @classmethod
    def context_needs(cls, config: ComponentConfig) -> ContextNeeds:
        """What this head reads from the context. Default: ``context_dim`` when the config sets it
        (a width to project to), else the backbone's width."""
        return ContextNeeds(width=getattr(config, "context_dim", None))

    @classmethod
    def configure_for(cls, config: C, context: ContextSpec) -> C:
        """This head's config with the fields that follow from the context filled in.

        ``context`` is what the head receives (after any projector). Raises
        :class:`~vla_core.errors.ConfigError` that names the field to change when the head cannot use
        it. Default: ``context_dim`` (when the config has that field and leaves it unset) becomes
        the context width.
        """
        if "context_dim" in config.field_names() and config.context_dim is None:
            return dataclasses.replace(config, context_dim=context.width)
        return config

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
    """Maps context tokens (B, T, in_dim) to (B, T, out_dim), and their positions with them.

    Its config may declare ``pos_embed: bool`` (filled by the policy: whether the backbone gives
    positions) when projecting positions needs parameters of its own.
    """

    in_dim: int
    out_dim: int

    @abc.abstractmethod
    def forward(self, features: Tensor, pos_embed: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """features (B, T, in_dim), pos_embed (B or 1, T, in_dim) or None -> the same at out_dim.

        Positions are mapped so that ``features + pos_embed`` projects like the sum would (a
        linear projector applies its weight without the bias to them)."""
