"""What the pi0 and pi0.5 action experts share: the Gemma expert over the prefix K/V, flow matching.

Expert layer i attends to the prefix K/V of backbone layer i plus the suffix tokens, under a mask in
which the prefix never sees the suffix (it is computed once, by the backbone). Because the prefix
never reads the suffix, training runs the same two stages as inference (prefix, then the expert on
its K/V) and equals the joint forward of openpi / LeRobot.

A subclass says what the suffix is (:meth:`ExpertFlowHead.embed_suffix`), which suffix tokens see
which (the ``suffix_allowed`` buffer) and how the final norm is applied. Actions are zero-padded to
``max_action_dim``; the loss covers the real ``action_dim`` dims only (LeRobot's reduction).

Shapes: ``B`` batch, ``P`` prefix tokens, ``S`` suffix tokens, ``H`` horizon, ``D`` width,
``A_max`` = ``max_action_dim``, ``Hkv`` K/V heads, ``d`` head dim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vla_core import (
    BackboneOutput,
    ComponentConfig,
    ConfigError,
    ContextNeeds,
    ContextSpec,
    FlowActionHead,
    FlowField,
    HeadOutput,
)
from vla_core.config import check_positive
from vla_core.features import ACTION, ACTION_IS_PAD
from vla_core.gemma import GemmaDecoderLayer, GemmaMLP, GemmaProjections, init_linear, rope_cos_sin

from vla_heads.pi0_flow.expert import attention_bias
from vla_heads.pi0_flow.flow import interpolate, sample_time


@dataclass(frozen=True, kw_only=True)
class ExpertFlowConfig(ComponentConfig):
    """Expert geometry (gemma_300m by default), flow-matching settings and the prefix geometry.

    ``prefix_num_layers`` / ``prefix_num_kv_heads`` / ``prefix_head_dim`` describe the backbone's
    K/V; the policy fills them from the K/V geometry of ``Backbone.context_spec()`` and they must
    equal ``depth`` / ``num_kv_heads`` / ``head_dim``.
    """

    action_dim: int
    horizon: int = 50
    max_action_dim: int = 32
    width: int = 1024
    depth: int = 18
    mlp_dim: int = 4096
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    prefix_num_layers: int | None = None
    prefix_num_kv_heads: int | None = None
    prefix_head_dim: int | None = None
    num_inference_steps: int = 10
    time_beta_alpha: float = 1.5
    time_beta_beta: float = 1.0
    time_scale: float = 0.999
    time_offset: float = 0.001
    min_period: float = 4e-3
    max_period: float = 4.0
    mask_padded_actions: bool = False  # LeRobot / openpi count padded chunk steps in the loss

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(
            name, action_dim=self.action_dim, horizon=self.horizon, width=self.width, depth=self.depth,
            mlp_dim=self.mlp_dim, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            num_inference_steps=self.num_inference_steps, min_period=self.min_period, max_period=self.max_period,
        )
        if self.action_dim > self.max_action_dim:
            raise ConfigError(f"{name}.max_action_dim: expected >= action_dim {self.action_dim}, received {self.max_action_dim}")
        if self.width % 2:
            raise ConfigError(f"{name}.width: the sine-cosine time embedding needs an even width, received {self.width}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{name}.num_kv_heads: must divide num_heads {self.num_heads}, received {self.num_kv_heads}")
        for ours, theirs, what in (
            ("depth", "prefix_num_layers", "layers (expert layer i attends to prefix layer i)"),
            ("num_kv_heads", "prefix_num_kv_heads", "K/V heads (expert and prefix keys share one softmax)"),
            ("head_dim", "prefix_head_dim", "head dim"),
        ):
            prefix = getattr(self, theirs)
            if prefix is not None and prefix != getattr(self, ours):
                raise ConfigError(
                    f"{name}.{ours}: the backbone's prefix has {prefix} {what} ({theirs}) but the expert has "
                    f"{getattr(self, ours)}; make {ours} equal {prefix} or pick a matching backbone"
                )


class ExpertFlowHead(FlowActionHead):
    """Base of ``pi0_flow`` and ``pi05_flow``: the expert stack, the flow loss and the flow field that
    :class:`vla_core.FlowActionHead` integrates by Euler (RTC-guided with ``guide=``, see :mod:`vla_core.rtc`).

    Needs ``context.past_key_values``: per-layer (k, v) of shape (B, Hkv, P, d) and
    ``context.attention_mask`` (B, P), as the ``paligemma`` backbone returns them.
    Subclasses pass ``cond_dim`` (adaptive norms), register a ``suffix_allowed`` buffer and implement
    :meth:`fixed_inputs`, :meth:`embed_suffix` and :meth:`final_norm`; messages name the registered name.
    """

    # LoRA on the expert's attention and MLP projections (openpi's gemma_300m_lora variant)
    lora_targets = ("layers.*.self_attn.*_proj", "layers.*.mlp.*_proj")

    def __init__(self, config: ExpertFlowConfig, *, cond_dim: int | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.horizon, self.action_dim = c.horizon, c.action_dim
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(
                width=c.width, mlp_dim=c.mlp_dim, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                head_dim=c.head_dim, eps=c.rms_eps, cond_dim=cond_dim,
            )
            for _ in range(c.depth)
        )
        for module in self.layers.modules():  # Gemma's initializer on attention and MLP; the rest keeps its own
            if isinstance(module, (GemmaProjections, GemmaMLP)):
                for linear in module.children():
                    init_linear(linear)
        self.action_in_proj = nn.Linear(c.max_action_dim, c.width)
        self.action_out_proj = nn.Linear(c.width, c.max_action_dim)

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {GemmaDecoderLayer}

    @classmethod
    def context_needs(cls, config: ExpertFlowConfig) -> ContextNeeds:
        """The per-layer prefix K/V (the features are not read)."""
        return ContextNeeds(kv=True)

    @classmethod
    def configure_for(cls, config: ExpertFlowConfig, context: ContextSpec) -> ExpertFlowConfig:
        """The ``prefix_*`` fields from the context's K/V geometry (a contradicting value raises)."""
        if context.kv is None:
            raise ConfigError(f"{cls.registered_name} reads per-layer prefix K/V (past_key_values); the backbone gives none")
        fields = {}
        for name, value in (("prefix_num_layers", context.kv.num_layers),
                            ("prefix_num_kv_heads", context.kv.num_kv_heads), ("prefix_head_dim", context.kv.head_dim)):
            given = getattr(config, name)
            if given is not None and given != value:
                raise ConfigError(f"head.{name}: the backbone gives {value} but the head spec says {given}; drop the "
                                  "field to take it from the backbone")
            fields[name] = value
        return dataclasses.replace(config, **fields)

    # ------------------------------------------------------------------ subclass hooks
    def fixed_inputs(self, batch: Any, dtype: torch.dtype) -> Any:
        """Per-observation inputs that stay fixed across denoising steps (pi0: the state token)."""
        raise NotImplementedError

    def embed_suffix(self, x_t: Tensor, time: Tensor, fixed: Any) -> tuple[Tensor, Tensor | None]:
        """Noisy actions (B, H, A_max), time (B,) -> suffix tokens (B, S, D) and the adaptive-norm
        condition (B, D) or None."""
        raise NotImplementedError

    def final_norm(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """The expert's last norm over (B, S, D)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pieces
    def prefix_kv(self, context: BackboneOutput) -> tuple[tuple[Tensor, Tensor], ...]:
        """The backbone's per-layer K/V, checked against this expert's geometry."""
        c, kv = self.config, context.past_key_values
        if kv is None:
            raise ValueError(f"{self.registered_name} reads the prefix K/V from context.past_key_values; use a backbone that "
                             "returns them (e.g. 'paligemma')")
        if len(kv) != c.depth:
            raise ValueError(f"{self.registered_name}: the backbone returned K/V for {len(kv)} layers but the expert has depth "
                             f"{c.depth}; expert layer i attends to prefix layer i")
        k = kv[0][0]
        if k.dim() != 4 or k.shape[1] != c.num_kv_heads or k.shape[3] != c.head_dim:
            raise ValueError(f"{self.registered_name}: prefix keys have shape {tuple(k.shape)}; expected (B, {c.num_kv_heads}, P, "
                             f"{c.head_dim}) (num_kv_heads, head_dim)")
        return tuple(kv)

    @staticmethod
    def _pad(x: Tensor, dim: int) -> Tensor:
        return F.pad(x, (0, dim - x.shape[-1])) if x.shape[-1] < dim else x

    def suffix_inputs(self, context: BackboneOutput) -> tuple[Tensor, Tensor, Tensor]:
        """Everything that stays fixed across denoising steps: rotary tables cos, sin (B, S, d) and the
        attention bias (B, 1, S, P + S), in the context's dtype (the expert computes in it). Suffix
        positions continue after the valid prefix tokens."""
        c = self.config
        prefix_mask = context.attention_mask
        dtype = context.features.dtype
        length = self.suffix_allowed.shape[0]
        positions = prefix_mask.sum(dim=1, keepdim=True) + torch.arange(length, device=prefix_mask.device)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, dtype)
        return cos, sin, attention_bias(prefix_mask, self.suffix_allowed, dtype)

    def velocity(self, x_t: Tensor, time: Tensor, fixed: Any, kv, suffix: tuple) -> Tensor:
        """Predicted velocity (B, H, A_max), float32, at noisy actions x_t (B, H, A_max) and time (B,)."""
        cos, sin, bias = suffix
        x, cond = self.embed_suffix(x_t.to(cos.dtype), time, fixed)
        for layer, past in zip(self.layers, kv):
            x = layer(x, cos, sin, bias, past_kv=past, cond=cond)[0]
        return self.action_out_proj(self.final_norm(x, cond)[:, -self.horizon:]).float()

    # ------------------------------------------------------------------ API
    def compute_loss(
        self, context: BackboneOutput, batch: Any, *, noise: Tensor | None = None, time: Tensor | None = None
    ) -> HeadOutput:
        """Flow-matching loss for the normalized target ``batch["action"]`` (B, H, A).

        ``noise`` (B, H, A) or (B, H, max_action_dim) and ``time`` (B,) default to N(0, 1) and
        ``Beta(alpha, beta) * scale + offset``; pass them to reproduce a given draw.
        """
        c = self.config
        action = batch[ACTION]
        if action.shape[1] != c.horizon:
            raise ValueError(f"batch key {ACTION!r}: {self.registered_name} needs the full chunk of {c.horizon} steps, "
                             f"received {action.shape[1]}")
        target = self._pad(action.float(), c.max_action_dim)
        bsz = target.shape[0]
        noise = torch.randn_like(target) if noise is None else self._pad(noise.to(target), c.max_action_dim)
        if time is None:
            time = sample_time(bsz, target.device, alpha=c.time_beta_alpha, beta=c.time_beta_beta,
                               scale=c.time_scale, offset=c.time_offset)
        x_t, u_t = interpolate(target, noise, time.to(target))
        suffix = self.suffix_inputs(context)
        fixed = self.fixed_inputs(batch, suffix[0].dtype)
        v_t = self.velocity(x_t, time.to(target), fixed, self.prefix_kv(context), suffix)
        err = (v_t - u_t)[..., : c.action_dim].square()
        if c.mask_padded_actions and ACTION_IS_PAD in batch:
            keep = (~batch[ACTION_IS_PAD]).to(err.dtype)[..., None]
            loss = (err * keep).sum() / (keep.sum() * c.action_dim).clamp(min=1)
        else:
            loss = err.mean()
        return HeadOutput(loss=loss, metrics={"mse": loss.detach()})

    def forward(self, context: BackboneOutput, batch: Any) -> HeadOutput:
        return self.compute_loss(context, batch)

    def flow_field(
        self, context: BackboneOutput, batch: Any, *, noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> FlowField:
        """The expert's field in RTC's time ``tau = 1 - t`` (``dx/dtau = -v``) and the start noise (B, H, A_max).

        The fixed inputs, rotary tables and attention bias are computed once; the prefix K/V are the
        backbone's, unchanged, at every step. ``noise`` (B, H, A) is zero-padded to ``max_action_dim``;
        without it, noise for all ``max_action_dim`` dims is drawn. Euler on this field is the expert's
        Euler from t = 1 to 0 (``t = 1 - k / steps``), bit for bit: negating both ``dt`` and ``v`` is exact.
        """
        c = self.config
        kv = self.prefix_kv(context)
        suffix = self.suffix_inputs(context)
        fixed = self.fixed_inputs(batch, suffix[0].dtype)
        bsz, device = context.attention_mask.shape[0], context.attention_mask.device
        if noise is None:
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(bsz, c.horizon, c.max_action_dim, generator=generator, device=gen_device).to(device)
        noise = self._pad(noise.float().to(device), c.max_action_dim)
        dt = -1.0 / c.num_inference_steps

        def velocity(x: Tensor, k: int) -> Tensor:
            t = torch.full((bsz,), 1.0 + k * dt, dtype=torch.float32, device=device)
            return -self.velocity(x, t, fixed, kv, suffix)

        return FlowField(noise=noise, steps=c.num_inference_steps, velocity=velocity)
