"""VLAPolicy: normalizer -> backbone -> (projector) -> head -> unnormalizer, from one config dict.

The pair is checked and wired when the policy is built, never at the first forward:

1. fields the components declare and the spec leaves out are filled from the features
   (:func:`derived_fields`);
2. the head says what it reads (:meth:`ActionHead.context_needs`), and the backbone adapts to it
   (:meth:`Backbone.configure_for`, e.g. hidden states rather than K/V);
3. the built backbone says what it gives (:meth:`Backbone.context_spec`); a head that reads K/V from a
   backbone without them is refused, and a width the head cannot take gets a projector (which maps
   ``pos_embed`` too);
4. the head fills the fields that follow from the context (:meth:`ActionHead.configure_for`, e.g.
   ``context_dim``, a pooling that fits a varying token count) or refuses it, naming the field.

Every failure is a :class:`~vla_core.errors.ConfigError` naming what the head needs, what the backbone
gives and the field that fixes it. ``self.config`` is the fully wired config, saved with the weights.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vla_core.config import ComponentConfig
from vla_core.errors import ConfigError
from vla_core.features import ACTION, FeatureType, camera_keys, first_of_type
from vla_core.interfaces import (
    ActionHead,
    Backbone,
    BackboneOutput,
    Batch,
    ContextNeeds,
    ContextSpec,
    HeadOutput,
)
from vla_core.policy_base import BasePolicyConfig, Policy
from vla_core.registry import BACKBONES, HEADS, POLICIES, PROJECTORS
from vla_core.rtc import FlowActionHead, RTCGuide


@dataclass(frozen=True, kw_only=True)
class PolicyConfig(BasePolicyConfig):
    """Everything needed to rebuild a composed policy (its weights and stats live in model.safetensors).

    Component specs are ``{"type": name, **fields}``. Fields a component declares and the spec
    leaves out are filled from the features (see :func:`derived_fields`) and from the pair's wiring.
    """

    backbone: dict[str, Any]
    head: dict[str, Any]
    projector: dict[str, Any] | None = None
    freeze_backbone: bool = False
    freeze: tuple[str, ...] = ()  # glob patterns over parameter names, e.g. "backbone.layer1.*"

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("backbone", "head"):
            spec = getattr(self, key)
            if "type" not in spec:
                raise ConfigError(f"{type(self).__name__}.{key}: expected a mapping with a 'type' key, received {spec!r}")


def derived_fields(config: BasePolicyConfig) -> dict[str, Any]:
    """Facts a component may declare as config fields and receive from the policy's features.

    ``image_keys`` (camera keys), ``image_shape`` (C, H, W of the first camera), ``image_shapes``
    (one per camera), ``state_dim``, ``env_state_dim``, ``action_dim``, ``n_obs_steps``.
    """
    inputs, outputs = config.inputs, config.outputs
    cams = camera_keys(inputs)
    state = first_of_type(inputs, FeatureType.STATE)
    env = first_of_type(inputs, FeatureType.ENV)
    return {
        "image_keys": list(cams),
        "image_shape": list(inputs[cams[0]].shape) if cams else None,
        "image_shapes": [list(inputs[k].shape) for k in cams] if cams else None,
        "state_dim": state[1].shape[-1] if state else None,
        "env_state_dim": env[1].shape[-1] if env else None,
        "action_dim": outputs[ACTION].shape[-1],
        "n_obs_steps": config.n_obs_steps,
    }


def _fill(kind: str, spec: Mapping[str, Any], config_class: type[ComponentConfig], facts: Mapping[str, Any]) -> dict:
    """``spec`` with the ``facts`` its config class declares filled in; a contradicting value raises."""
    spec = dict(spec)
    names = config_class.field_names()
    for key, value in facts.items():
        if key not in names or value is None:
            continue
        if key not in spec:
            spec[key] = value
        elif _plain(spec[key]) != _plain(value):
            raise ConfigError(
                f"{kind}.{key}: the features give {value!r} but the {kind} spec says {spec[key]!r}; "
                "drop the field to take it from the features"
            )
    return spec


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def resolve_config(config: PolicyConfig | Mapping[str, Any]) -> PolicyConfig:
    """Fill the component specs' fields derived from the features (before the pair is wired)."""
    if not isinstance(config, PolicyConfig):
        config = PolicyConfig.from_dict(config)
    facts = derived_fields(config)
    backbone = _fill("backbone", config.backbone, BACKBONES.config_class(config.backbone["type"]), facts)
    head = _fill("head", config.head, HEADS.config_class(config.head["type"]), facts)
    return dataclasses.replace(config, backbone=backbone, head=head)


def _fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "type"}


def _spec(name: str, config: ComponentConfig) -> dict[str, Any]:
    return {"type": name, **config.to_dict()}


def projector_spec(
    given: Mapping[str, Any] | None, context: ContextSpec, needs: ContextNeeds, head: str
) -> dict[str, Any] | None:
    """The projector between a backbone giving ``context`` and a head needing ``needs``, or None.

    A projector is inserted (``linear`` unless ``given`` names another type) whenever the head needs a
    width the backbone does not give; ``in_dim`` / ``out_dim`` and ``pos_embed`` are filled in.
    """
    if given is None and (needs.width is None or needs.width == context.width):
        return None
    spec = dict(given or {"type": "linear"})
    spec.setdefault("type", "linear")
    if spec.setdefault("in_dim", context.width) != context.width:
        raise ConfigError(f"projector.in_dim: the backbone gives width {context.width}, the spec says "
                          f"{spec['in_dim']}; drop the field")
    out = spec.get("out_dim", needs.width)
    if out is None:
        raise ConfigError(f"projector.out_dim: head {head!r} takes any width; set projector.out_dim (or "
                          "head.context_dim) to the width the projector should produce")
    if needs.width is not None and out != needs.width:
        raise ConfigError(f"projector.out_dim: head {head!r} needs width {needs.width}, the projector gives "
                          f"{out}; drop projector.out_dim")
    spec["out_dim"] = out
    return _fill("projector", spec, PROJECTORS.config_class(spec["type"]), {"pos_embed": context.pos_embed})


@POLICIES.register("vla")
class VLAPolicy(Policy):
    """A robot policy composed of registered components (backbone, optional projector, head).

    Inputs are raw batches (robot units, images in [0, 1]); ``predict_action_chunk`` returns
    (B, H, A) in robot units.
    """

    config_class = PolicyConfig

    def __init__(self, config: PolicyConfig | Mapping[str, Any]) -> None:
        super().__init__(config)
        c = self.config
        backbone_cls, head_cls = BACKBONES.get(c.backbone["type"]), HEADS.get(c.head["type"])
        head_config = head_cls.config_class.from_dict(_fields(c.head))
        needs = head_cls.context_needs(head_config)
        backbone_config = backbone_cls.configure_for(backbone_cls.config_class.from_dict(_fields(c.backbone)), needs)
        self.backbone: Backbone = backbone_cls(backbone_config)
        given = self.backbone.context_spec()
        if needs.kv and given.kv is None:
            raise ConfigError(
                f"head {c.head['type']!r} reads per-layer prefix K/V (past_key_values), but backbone "
                f"{c.backbone['type']!r} gives none; set backbone.type to a backbone that returns them"
            )
        projector = projector_spec(c.projector, given, needs, c.head["type"])
        self.projector: nn.Module | None = None if projector is None else PROJECTORS.build(projector)
        context = given if projector is None else dataclasses.replace(given, width=projector["out_dim"])
        head_config = head_cls.configure_for(head_config, context)
        needs = head_cls.context_needs(head_config)
        if needs.fixed_tokens and context.num_tokens is None:
            raise ConfigError(
                f"head {c.head['type']!r} needs a fixed number of context tokens, but backbone "
                f"{c.backbone['type']!r} gives a number that varies with the input; change the head's "
                "pooling (see its config) or the backbone"
            )
        self.head: ActionHead = head_cls(head_config)
        if self.head.action_dim != self.action_dim:
            raise ConfigError(
                f"head.action_dim is {self.head.action_dim} but output_features[{ACTION!r}] has {self.action_dim}"
            )
        self.horizon = self.head.horizon
        self.config = dataclasses.replace(
            c,
            backbone=_spec(c.backbone["type"], backbone_config),
            head=_spec(c.head["type"], head_config),
            projector=projector,
        )
        self.context = context  # what the head receives
        self._action_selection()  # n_action_steps against the horizon, at build time
        self._apply_freezing()

    # ----------------------------------------------------------------- building
    @classmethod
    def build_config(cls, data: Mapping[str, Any]) -> PolicyConfig:
        return resolve_config(data)

    @classmethod
    def from_config(cls, config: PolicyConfig | Mapping[str, Any]) -> VLAPolicy:
        return cls(config)

    def _apply_freezing(self) -> None:
        if self.config.freeze_backbone:
            self.backbone.requires_grad_(False)
        names = [n for n, _ in self.named_parameters()]
        for pattern in self.config.freeze:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise ConfigError(f"freeze: pattern {pattern!r} matches no parameter (e.g. {names[:3]})")
            for name in hits:
                self.get_parameter(name).requires_grad_(False)

    def fsdp_units(self) -> set[type[nn.Module]]:
        """Module classes to shard one by one (the union of the components')."""
        units = set(self.backbone.fsdp_units()) | set(self.head.fsdp_units())
        if self.projector is not None:
            units |= set(self.projector.fsdp_units())
        return units

    @property
    def training_defaults(self) -> dict[str, Any]:
        """Defaults the components suggest to a trainer (e.g. ``{"ema": True}`` for diffusion heads)."""
        return {**self.backbone.training_defaults, **self.head.training_defaults}

    # ----------------------------------------------------------------- running
    def encode(self, batch: Batch) -> BackboneOutput:
        """Normalized batch -> context (features and positions projected when a projector is set)."""
        context = self.backbone(batch)
        if self.projector is not None:
            features, pos_embed = self.projector(context.features, context.pos_embed)
            context = dataclasses.replace(context, features=features, pos_embed=pos_embed)
        return context

    def compute_loss(self, nbatch: Batch) -> HeadOutput:
        return self.head(self.encode(nbatch), nbatch)

    def sample_chunk(self, nbatch: Batch, *, noise: Tensor | None, generator: torch.Generator | None,
                     guide: RTCGuide | None = None) -> Tensor:
        """Normalized chunk (B, H, A); ``guide`` (real-time chunking) only for a :class:`FlowActionHead`."""
        if guide is None:
            return self.head.predict_action(self.encode(nbatch), nbatch, noise=noise, generator=generator)
        return self.head.predict_action(self.encode(nbatch), nbatch, noise=noise, generator=generator, guide=guide)

    @property
    def supports_rtc(self) -> bool:
        """True when the head is a :class:`~vla_core.rtc.FlowActionHead` (pi0_flow, dit_flow_matching)."""
        return isinstance(self.head, FlowActionHead)

    def rtc_unsupported_reason(self) -> str:
        return f"this policy's head {self.config.head['type']!r} is not one"

    # ----------------------------------------------------------------- saving
    def config_to_save(self) -> dict[str, Any]:
        """Fields that only pointed at initial weight files (``weight_source_fields``) become None: the
        saved directory is self-contained."""
        config = self.config.to_dict()
        for key, component in (("backbone", self.backbone), ("head", self.head)):
            for name in component.weight_source_fields:  # the weights are in model.safetensors now
                if config[key].get(name) is not None:
                    config[key][name] = None
        return config
