"""DiTFlowMatchingHead: GR00T N1.5's flow-matching action head, registered as ``dit_flow_matching``.

Token sequence fed to the DiT: ``[state (1), future tokens (F), actions (H)]`` of width D; the DiT
cross-attends to the context (after the VL LayerNorm + self-attention stack). Shapes: ``B`` batch,
``S`` context tokens, ``H`` horizon, ``A`` action dim, ``Ap`` padded action dim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vla_core import (
    ACTION,
    ACTION_IS_PAD,
    EMBODIMENT_ID,
    HEADS,
    OBS_STATE,
    BackboneOutput,
    ConfigError,
    FlowActionHead,
    FlowField,
    HeadOutput,
    RTCGuide,
)

from vla_heads.dit_flow_matching.config import DiTFlowMatchingConfig
from vla_heads.dit_flow_matching.dit import DiT, DiTCache, TransformerBlock, VLSelfAttention
from vla_heads.dit_flow_matching.embodiment import ActionEncoder, CategorySpecificMLP, EmbodimentSelect
from vla_heads.dit_flow_matching.flow import inference_buckets, interpolate, sample_time, time_buckets


@HEADS.register("dit_flow_matching")
class DiTFlowMatchingHead(FlowActionHead):
    """Flow-matching head with a cross-attention DiT and per-embodiment encoders (GR00T N1.5)."""

    config_class = DiTFlowMatchingConfig
    # LoRA on the DiT blocks' attention (to_q/k/v/out) and feed-forward projections
    lora_targets = ("dit.blocks.*.attn1.to_*", "dit.blocks.*.ff.net.*")

    def __init__(self, config: DiTFlowMatchingConfig) -> None:
        super().__init__()
        if config.context_dim is None:
            raise ConfigError("DiTFlowMatchingConfig.context_dim: not set (the policy fills it from the backbone)")
        self.config = c = config
        self.horizon, self.action_dim = c.horizon, c.action_dim
        rows, width = c.embodiment_rows, c.width
        self.state_encoder = (
            CategorySpecificMLP(rows, c.padded_state_dim, c.hidden_dim, width) if c.state_dim is not None else None
        )
        self.action_encoder = ActionEncoder(rows, c.padded_action_dim, width)
        self.action_decoder = CategorySpecificMLP(rows, c.hidden_dim, c.hidden_dim, c.padded_action_dim)
        self.future_tokens = nn.Embedding(c.num_future_tokens, width) if c.num_future_tokens else None
        self.pos_embed = nn.Embedding(c.max_seq_len, width) if c.add_pos_embed else None
        for emb in (self.future_tokens, self.pos_embed):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        self.vl_norm = nn.LayerNorm(c.context_dim) if c.use_vlln else None
        self.vl_self_attention = (
            VLSelfAttention(c.context_dim, num_layers=c.vl_self_attention_layers, heads=c.vl_num_heads, dropout=c.dropout)
            if c.use_vlln and c.vl_self_attention_layers
            else None
        )
        self.dit = DiT(
            num_layers=c.num_layers,
            heads=c.num_heads,
            head_dim=c.head_dim,
            context_dim=c.context_dim,
            out_dim=c.hidden_dim,
            interleave_self_attention=c.interleave_self_attention,
            dropout=c.dropout,
        )

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {TransformerBlock}

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second.

        A 4-block DiT of width 16 (cross- and self-attention interleaved) over 2 future tokens, a
        2-block VL stack with 2 heads (any even context width), 2 embodiment rows.
        """
        return {
            "horizon": 4, "max_state_dim": 8, "max_action_dim": 6, "num_embodiments": 2,
            "embodiments": {"new_embodiment": 1}, "hidden_dim": 32, "num_future_tokens": 2, "max_seq_len": 8,
            "num_layers": 4, "num_heads": 2, "head_dim": 8, "dropout": 0.1, "vl_self_attention_layers": 2,
            "vl_num_heads": 2,
        }

    # ----------------------------------------------------------------- pieces
    def embodiment_select(self, batch: Any, batch_size: int, device: torch.device) -> EmbodimentSelect:
        """Rows of the per-embodiment weights: ``batch["embodiment_id"]`` (B,) or the default embodiment."""
        ids = batch.get(EMBODIMENT_ID) if hasattr(batch, "get") else None
        if ids is None:
            return EmbodimentSelect.constant(self.config.embodiments[self.config.default_embodiment], batch_size, device)
        select = EmbodimentSelect.of(torch.as_tensor(ids).long().reshape(batch_size))
        return EmbodimentSelect(select.ids.to(device), select.single)

    def encode_context(self, context: BackboneOutput) -> tuple[Tensor, Tensor | None]:
        """VL LayerNorm + self-attention: features (B, S, Dc) -> (B, S, Dc), and the key mask or None."""
        mask = context.attention_mask[:, None, None, :].bool() if self.config.mask_context else None
        x = context.features
        if self.vl_norm is not None:
            x = self.vl_norm(x)
        if self.vl_self_attention is not None:
            x = self.vl_self_attention(x, mask)
        return x, mask

    def prefix_tokens(self, batch: Any, select: EmbodimentSelect, batch_size: int, like: Tensor) -> Tensor | None:
        """``[state, future tokens]`` (B, 1 + F, D), or None when there are neither."""
        parts = []
        if self.state_encoder is not None:
            state = batch[OBS_STATE]
            state = state[:, -1] if state.dim() == 3 else state
            state = F.pad(state.to(like.dtype), (0, self.config.padded_state_dim - state.shape[-1]))
            parts.append(self.state_encoder(state.unsqueeze(1), select))
        if self.future_tokens is not None:
            ids = torch.arange(self.config.num_future_tokens, device=like.device)
            parts.append(self.future_tokens(ids).to(like.dtype).unsqueeze(0).expand(batch_size, -1, -1))
        return torch.cat(parts, dim=1) if parts else None

    def velocity(
        self,
        x_t: Tensor,
        timesteps: Tensor,
        ctx: Tensor | None,
        prefix: Tensor | None,
        select: EmbodimentSelect,
        mask: Tensor | None = None,
        cache: DiTCache | None = None,
    ) -> Tensor:
        """Noisy actions (B, H, Ap) at timesteps (B,) -> velocity (B, H, Ap).

        ``ctx`` (B, S, Dc) is the encoded context; with an inference ``cache`` (this step's rows of
        :meth:`DiT.precompute`) the DiT reads its K/V and modulations instead (ctx may be None).
        """
        tokens = self.action_encoder(x_t, timesteps, select)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed(torch.arange(tokens.shape[1], device=tokens.device)).to(tokens.dtype)
        if prefix is not None:
            tokens = torch.cat([prefix, tokens], dim=1)
        out = self.dit(tokens, timesteps, ctx, mask=mask, out_rows=x_t.shape[1], cache=cache)
        return self.action_decoder(out, select)

    def predict_velocity(self, context: BackboneOutput, batch: Any, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """Velocity (B, H, Ap) for noisy actions x_t (B, H, Ap) at integer timestep buckets (B,)."""
        bsz = x_t.shape[0]
        select = self.embodiment_select(batch, bsz, x_t.device)
        ctx, mask = self.encode_context(context)
        prefix = self.prefix_tokens(batch, select, bsz, ctx)
        return self.velocity(x_t.to(ctx.dtype), timesteps, ctx, prefix, select, mask)

    # ----------------------------------------------------------------- training
    def forward(self, context: BackboneOutput, batch: Any) -> HeadOutput:
        """Masked MSE between predicted and target velocity; padded dims and ``action_is_pad`` steps are ignored."""
        c = self.config
        action = batch[ACTION]
        bsz, horizon, real = action.shape
        action = F.pad(action, (0, c.padded_action_dim - real))
        noise = torch.randn(action.shape, device=action.device, dtype=action.dtype)
        t = sample_time(bsz, alpha=c.noise_beta_alpha, beta=c.noise_beta_beta, s=c.noise_s).to(action.device)
        x_t, target = interpolate(noise, action, t)
        pred = self.predict_velocity(context, batch, x_t, time_buckets(t, c.num_timestep_buckets))
        keep = torch.zeros(bsz, horizon, c.padded_action_dim, dtype=torch.float32, device=action.device)
        keep[..., :real] = 1.0
        if ACTION_IS_PAD in batch:
            keep = keep * (~batch[ACTION_IS_PAD].bool()).unsqueeze(-1).float()
        err = F.mse_loss(pred.float(), target.float(), reduction="none") * keep
        loss = err.sum() / keep.sum()
        return HeadOutput(loss=loss, metrics={"mse": loss.detach()})

    # ----------------------------------------------------------------- inference
    def _initial_noise(self, noise: Tensor | None, bsz: int, like: Tensor, generator) -> Tensor:
        shape = (bsz, self.horizon, self.config.padded_action_dim)
        if noise is None:
            return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
        noise = noise.to(device=like.device, dtype=like.dtype)
        extra = shape[-1] - noise.shape[-1]
        if extra > 0:  # noise for the real dims only: the padded dims come from a seeded draw
            gen = generator or torch.Generator(device=like.device).manual_seed(0)
            fill = torch.randn((*shape[:-1], extra), generator=gen, device=like.device, dtype=like.dtype)
            noise = torch.cat([noise, fill], dim=-1)
        return noise

    def flow_field(
        self,
        context: BackboneOutput,
        batch: Any,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> FlowField:
        """The velocity field (GR00T's time already runs from noise, t = 0, to actions, t = 1) and its
        start noise (B, H, Ap). Step k feeds timestep bucket ``int(k / N * buckets)`` (N1.5: 0, 250, ...).

        With ``use_cache`` (the default) the VL stack, every cross-attention K/V and all steps' timestep
        conditioning are computed once; without it they are recomputed in every step (the reference's
        way; same result).
        """
        c = self.config
        bsz = context.features.shape[0]
        select = self.embodiment_select(batch, bsz, context.features.device)
        ctx, mask = self.encode_context(context)
        prefix = self.prefix_tokens(batch, select, bsz, ctx)
        x = self._initial_noise(noise, bsz, ctx, generator)
        buckets = inference_buckets(c.num_inference_timesteps, c.num_timestep_buckets)
        steps = torch.tensor(buckets, device=ctx.device).repeat_interleave(bsz)  # (N * B,)
        cache = self.dit.precompute(ctx, steps) if use_cache else None

        def velocity(x_t: Tensor, k: int) -> Tensor:
            rows = steps[k * bsz : (k + 1) * bsz]
            if cache is None:  # the reference's way: the VL stack and the whole DiT conditioning in every step
                step_ctx, step_mask = self.encode_context(context)
                return self.velocity(x_t, rows, step_ctx, prefix, select, step_mask)
            return self.velocity(x_t, rows, ctx, prefix, select, mask, cache=cache.rows(k * bsz, (k + 1) * bsz))

        return FlowField(noise=x, steps=len(buckets), velocity=velocity)

    @torch.no_grad()
    def predict_action(
        self,
        context: BackboneOutput,
        batch: Any,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        guide: RTCGuide | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Euler integration from noise (t = 0) to actions (t = 1): (B, H, A); RTC-guided with ``guide``.

        ``noise`` is (B, H, A) or (B, H, Ap); ``use_cache``: see :meth:`flow_field`.
        """
        field = self.flow_field(context, batch, noise=noise, generator=generator, use_cache=use_cache)
        return field.integrate(guide)[..., : self.action_dim]
