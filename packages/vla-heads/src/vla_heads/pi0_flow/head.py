"""``pi0_flow``: the pi0 action expert (Gemma 300M by default) with flow matching.

The suffix is one state token and H action tokens (noisy actions fused with a sinusoidal time
embedding by an MLP). Expert layer i attends to the prefix K/V of backbone layer i plus the suffix,
with pi0's block-causal mask: the prefix never sees the suffix (it is computed once, by the
backbone), the state token sees the prefix and itself, action tokens see everything. Because the
prefix never reads the suffix, training runs the same two stages as inference (prefix, then the
expert on its K/V) and equals pi0's joint forward.

State and actions are zero-padded to ``max_state_dim`` / ``max_action_dim`` (32 in pi0
checkpoints); the loss covers the real ``action_dim`` dims only (LeRobot's reduction).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vla_core import (
    HEADS,
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
from vla_core.features import ACTION, ACTION_IS_PAD, OBS_STATE

from vla_heads.pi0_flow.expert import ExpertLayer, attention_bias, gemma_modules, rope_cos_sin, suffix_allowed
from vla_heads.pi0_flow.flow import interpolate, sample_time, sinusoidal_time_embedding


@dataclass(frozen=True, kw_only=True)
class Pi0FlowConfig(ComponentConfig):
    """Expert geometry (gemma_300m by default), flow-matching settings and the prefix geometry.

    ``prefix_num_layers`` / ``prefix_num_kv_heads`` / ``prefix_head_dim`` describe the backbone's
    K/V; the policy fills them from the K/V geometry of ``Backbone.context_spec()`` and they must
    equal ``depth`` / ``num_kv_heads`` / ``head_dim``.
    """

    action_dim: int
    state_dim: int | None = None
    horizon: int = 50
    max_action_dim: int = 32
    max_state_dim: int = 32
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
        if self.state_dim is None:
            raise ConfigError(f"{name}.state_dim: pi0 embeds {OBS_STATE!r} as its state token; declare that feature")
        check_positive(
            name, action_dim=self.action_dim, state_dim=self.state_dim, horizon=self.horizon, width=self.width,
            depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim, num_inference_steps=self.num_inference_steps, min_period=self.min_period,
            max_period=self.max_period,
        )
        if self.action_dim > self.max_action_dim:
            raise ConfigError(f"{name}.max_action_dim: expected >= action_dim {self.action_dim}, received {self.max_action_dim}")
        if self.state_dim > self.max_state_dim:
            raise ConfigError(f"{name}.max_state_dim: expected >= state_dim {self.state_dim}, received {self.max_state_dim}")
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


@HEADS.register("pi0_flow")
class Pi0FlowHead(FlowActionHead):
    """pi0 action expert: ``forward`` -> flow-matching loss, ``predict_action`` -> (B, H, A) by Euler
    (RTC-guided with ``guide=``, see :mod:`vla_core.rtc`).

    Needs ``context.past_key_values``: per-layer (k, v) of shape (B, Hkv, P, d) and
    ``context.attention_mask`` (B, P), as the ``paligemma`` backbone returns them.
    """

    config_class = Pi0FlowConfig

    def __init__(self, config: Pi0FlowConfig) -> None:
        super().__init__()
        self.config = c = config
        self.horizon, self.action_dim = c.horizon, c.action_dim
        self.layers = nn.ModuleList(
            ExpertLayer(
                width=c.width, mlp_dim=c.mlp_dim, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                head_dim=c.head_dim, eps=c.rms_eps,
            )
            for _ in range(c.depth)
        )
        for module in self.layers.modules():  # Gemma's initializer; the projections keep torch's default
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        self.norm = gemma_modules().GemmaRMSNorm(c.width, eps=c.rms_eps)
        self.state_proj = nn.Linear(c.max_state_dim, c.width)
        self.action_in_proj = nn.Linear(c.max_action_dim, c.width)
        self.action_time_mlp_in = nn.Linear(2 * c.width, c.width)
        self.action_time_mlp_out = nn.Linear(c.width, c.width)
        self.action_out_proj = nn.Linear(c.width, c.max_action_dim)
        self.register_buffer("suffix_allowed", suffix_allowed(c.horizon), persistent=False)

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {ExpertLayer}

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

    @classmethod
    def context_needs(cls, config: Pi0FlowConfig) -> ContextNeeds:
        """The per-layer prefix K/V (the features are not read)."""
        return ContextNeeds(kv=True)

    @classmethod
    def configure_for(cls, config: Pi0FlowConfig, context: ContextSpec) -> Pi0FlowConfig:
        """The ``prefix_*`` fields from the context's K/V geometry (a contradicting value raises)."""
        if context.kv is None:
            raise ConfigError("pi0_flow reads per-layer prefix K/V (past_key_values); the backbone gives none")
        fields = {}
        for name, value in (("prefix_num_layers", context.kv.num_layers),
                            ("prefix_num_kv_heads", context.kv.num_kv_heads), ("prefix_head_dim", context.kv.head_dim)):
            given = getattr(config, name)
            if given is not None and given != value:
                raise ConfigError(f"head.{name}: the backbone gives {value} but the head spec says {given}; drop the "
                                  "field to take it from the backbone")
            fields[name] = value
        return dataclasses.replace(config, **fields)

    # ------------------------------------------------------------------ pieces
    def prefix_kv(self, context: BackboneOutput) -> tuple[tuple[Tensor, Tensor], ...]:
        """The backbone's per-layer K/V, checked against this expert's geometry."""
        c, kv = self.config, context.past_key_values
        if kv is None:
            raise ValueError("pi0_flow reads the prefix K/V from context.past_key_values; use a backbone that returns "
                             "them (e.g. 'paligemma')")
        if len(kv) != c.depth:
            raise ValueError(f"pi0_flow: the backbone returned K/V for {len(kv)} layers but the expert has depth "
                             f"{c.depth}; expert layer i attends to prefix layer i")
        k = kv[0][0]
        if k.dim() != 4 or k.shape[1] != c.num_kv_heads or k.shape[3] != c.head_dim:
            raise ValueError(f"pi0_flow: prefix keys have shape {tuple(k.shape)}; expected (B, {c.num_kv_heads}, P, "
                             f"{c.head_dim}) (num_kv_heads, head_dim)")
        return tuple(kv)

    def _pad(self, x: Tensor, dim: int) -> Tensor:
        return F.pad(x, (0, dim - x.shape[-1])) if x.shape[-1] < dim else x

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

    def suffix_inputs(self, context: BackboneOutput) -> tuple[Tensor, Tensor, Tensor]:
        """Everything that stays fixed across denoising steps: rotary tables cos, sin (B, S, d) and the
        attention bias (B, 1, S, P + S), in the context's dtype (the expert computes in it)."""
        c = self.config
        prefix_mask = context.attention_mask
        dtype = context.features.dtype
        positions = prefix_mask.sum(dim=1, keepdim=True) + torch.arange(1 + c.horizon, device=prefix_mask.device)
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta, dtype)
        return cos, sin, attention_bias(prefix_mask, self.suffix_allowed, dtype)

    def velocity(self, x_t: Tensor, time: Tensor, state_tok: Tensor, kv, suffix: tuple) -> Tensor:
        """Predicted velocity (B, H, A_max), float32, at noisy actions x_t (B, H, A_max) and time (B,)."""
        cos, sin, bias = suffix
        x = torch.cat([state_tok, self.action_tokens(x_t.to(cos.dtype), time)], dim=1)
        for layer, (k, v) in zip(self.layers, kv):
            x = layer(x, cos, sin, k, v, bias)
        return self.action_out_proj(self.norm(x)[:, 1:]).float()

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
            raise ValueError(f"batch key {ACTION!r}: pi0_flow needs the full chunk of {c.horizon} steps, "
                             f"received {action.shape[1]}")
        target = self._pad(action.float(), c.max_action_dim)
        bsz = target.shape[0]
        noise = torch.randn_like(target) if noise is None else self._pad(noise.to(target), c.max_action_dim)
        if time is None:
            time = sample_time(bsz, target.device, alpha=c.time_beta_alpha, beta=c.time_beta_beta,
                               scale=c.time_scale, offset=c.time_offset)
        x_t, u_t = interpolate(target, noise, time.to(target))
        suffix = self.suffix_inputs(context)
        v_t = self.velocity(x_t, time.to(target), self.state_token(batch, suffix[0].dtype), self.prefix_kv(context), suffix)
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

        The state token, rotary tables and attention bias are computed once; the prefix K/V are the
        backbone's, unchanged, at every step. ``noise`` (B, H, A) is zero-padded to ``max_action_dim``;
        without it, noise for all ``max_action_dim`` dims is drawn. Euler on this field is pi0's Euler
        from t = 1 to 0 (``t = 1 - k / steps``), bit for bit: negating both ``dt`` and ``v`` is exact.
        """
        c = self.config
        kv = self.prefix_kv(context)
        suffix = self.suffix_inputs(context)
        state_tok = self.state_token(batch, suffix[0].dtype)
        bsz, device = state_tok.shape[0], state_tok.device
        if noise is None:
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(bsz, c.horizon, c.max_action_dim, generator=generator, device=gen_device).to(device)
        noise = self._pad(noise.float().to(device), c.max_action_dim)
        dt = -1.0 / c.num_inference_steps

        def velocity(x: Tensor, k: int) -> Tensor:
            t = torch.full((bsz,), 1.0 + k * dt, dtype=torch.float32, device=device)
            return -self.velocity(x, t, state_tok, kv, suffix)

        return FlowField(noise=noise, steps=c.num_inference_steps, velocity=velocity)
