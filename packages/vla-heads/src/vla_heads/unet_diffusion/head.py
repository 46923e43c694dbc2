"""The ``unet_diffusion`` action head: Diffusion Policy's conditional 1D UNet with diffusers' DDPM / DDIM."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from vla_core import HEADS, ActionHead, BackboneOutput, ConfigError, ContextNeeds, ContextSpec, HeadOutput
from vla_core.features import ACTION, ACTION_IS_PAD, OBS_ENV_STATE, OBS_STATE
from vla_core.interfaces import Batch

from vla_heads.unet_diffusion.config import UNetDiffusionConfig
from vla_heads.unet_diffusion.layers import ResidualBlock1d
from vla_heads.unet_diffusion.unet import ConditionalUnet1d


def make_scheduler(kind: str, **kwargs: Any):
    """A diffusers ``DDPMScheduler`` (``kind="DDPM"``) or ``DDIMScheduler`` (``"DDIM"``) from ``kwargs``."""
    from diffusers import DDIMScheduler, DDPMScheduler

    schedulers = {"DDPM": DDPMScheduler, "DDIM": DDIMScheduler}
    if kind not in schedulers:
        raise ConfigError(f"noise_scheduler_type: expected one of {sorted(schedulers)}, received {kind!r}")
    return schedulers[kind](**kwargs)


@HEADS.register("unet_diffusion")
class UNetDiffusionHead(ActionHead):
    """Denoises an action chunk (B, H, A) conditioned on context tokens (B, T, D) and the state.

    Training: MSE between the UNet output and the noise (``prediction_type="epsilon"``) or the clean
    chunk (``"sample"``) at a random diffusion step; optionally masked by ``action_is_pad``.
    Inference: the diffusers scheduler's reverse process from ``noise`` (B, H, A) or a fresh draw
    from ``generator``. The FiLM parameters of all steps are computed once per call
    (:meth:`ConditionalUnet1d.film_table`) and the loop runs under ``torch.no_grad``.
    """

    config_class = UNetDiffusionConfig
    training_defaults: ClassVar[dict[str, Any]] = {"ema": True}

    def __init__(self, config: UNetDiffusionConfig) -> None:
        super().__init__()
        self.config = config
        self.horizon, self.action_dim = config.horizon, config.action_dim
        if (
            config.context_dim is not None
            and config.pooling == "flatten"
            and config.tokens_per_sample is None
        ):
            raise ConfigError(
                "UNetDiffusionConfig.num_context_tokens: flatten pooling needs the number of context tokens; "
                "set "
                "it, declare image_keys, or use context_pooling='mean'"
            )
        self.unet = ConditionalUnet1d(
            config.action_dim,
            config.global_cond_dim,
            down_dims=tuple(config.down_dims),
            kernel_size=config.kernel_size,
            n_groups=config.n_groups,
            step_embed_dim=config.diffusion_step_embed_dim,
            scale_modulation=config.use_film_scale_modulation,
            final_n_groups=config.final_n_groups,
        )
        self.use_scheduler(config.noise_scheduler_type, config.num_inference_steps)

    def use_scheduler(self, kind: str, num_inference_steps: int | None = None) -> None:
        """Switch the sampler (``"DDPM"`` / ``"DDIM"``) and its step count; the weights are shared."""
        c = self.config
        self.noise_scheduler = make_scheduler(
            kind,
            num_train_timesteps=c.num_train_timesteps,
            beta_start=c.beta_start,
            beta_end=c.beta_end,
            beta_schedule=c.beta_schedule,
            clip_sample=c.clip_sample,
            clip_sample_range=c.clip_sample_range,
            prediction_type=c.prediction_type,
        )
        self.num_inference_steps = num_inference_steps or c.num_train_timesteps

    @classmethod
    def context_needs(cls, config: UNetDiffusionConfig) -> ContextNeeds:
        """Any width (``context_dim`` when set); a fixed token count when flattening the tokens."""
        return ContextNeeds(width=config.context_dim, fixed_tokens=config.context_pooling == "flatten")

    @classmethod
    def configure_for(cls, config: UNetDiffusionConfig, context: ContextSpec) -> UNetDiffusionConfig:
        """``context_dim`` and the pooling from the context: ``flatten`` over a fixed token count
        (``num_context_tokens`` filled in), ``mean`` over a varying one."""
        pooling = config.context_pooling or ("flatten" if context.num_tokens is not None else "mean")
        fields: dict[str, Any] = {"context_pooling": pooling}
        if config.context_dim is None:
            fields["context_dim"] = context.width
        if pooling == "flatten":
            if context.num_tokens is None:
                raise ConfigError(
                    "head.context_pooling: 'flatten' needs a fixed number of context tokens, but the backbone "
                    "gives a number that varies with the input; set it to 'mean' or leave it unset"
                )
            if config.num_context_tokens not in (None, context.num_tokens):
                raise ConfigError(
                    f"head.num_context_tokens: the backbone gives {context.num_tokens} tokens but the head spec "
                    f"says {config.num_context_tokens}; drop the field"
                )
            fields["num_context_tokens"] = context.num_tokens
        return dataclasses.replace(config, **fields)

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second.

        The pooling is left to the pair: flatten behind a fixed token count, mean behind a varying one.
        """
        return {
            "horizon": 8,
            "down_dims": [8, 16],
            "kernel_size": 3,
            "n_groups": 2,
            "diffusion_step_embed_dim": 8,
            "num_train_timesteps": 20,
            "num_inference_steps": 4,
        }

    def fsdp_units(self) -> set[type[torch.nn.Module]]:
        return {ResidualBlock1d}

    # ------------------------------------------------------------------ conditioning
    def _per_step(self, batch: Batch, key: str, dim: int | None, bsz: int) -> Tensor | None:
        """batch[key] as (B, n_obs_steps, dim) (a single step (B, dim) is repeated), or None if unused."""
        if not dim:
            return None
        if key not in batch:
            raise ValueError(
                f"missing batch key {key!r}: the unet_diffusion head conditions on it (dim {dim})"
            )
        value = batch[key]
        if value.dim() == 2:
            value = value.unsqueeze(1).expand(-1, self.config.n_obs_steps, -1)
        want = (bsz, self.config.n_obs_steps, dim)
        if tuple(value.shape) != want:
            raise ValueError(f"batch key {key!r}: expected shape {want}, received {tuple(value.shape)}")
        return value

    def global_conditioning(self, context: BackboneOutput, batch: Batch) -> Tensor:
        """(B, G) conditioning vector from the context tokens (B, T, D), the state and the env state."""
        c = self.config
        feats = context.features
        bsz = feats.shape[0]
        state = self._per_step(batch, OBS_STATE, c.state_dim, bsz)
        env = self._per_step(batch, OBS_ENV_STATE, c.env_state_dim, bsz)
        steps: list[Tensor] = [] if state is None else [state]
        pooled = None
        if c.context_dim is not None:
            if c.pooling == "flatten":
                tokens = c.tokens_per_sample
                if feats.shape[1] != tokens:
                    raise ValueError(
                        f"context: flatten pooling expects {tokens} tokens (num_context_tokens), received "
                        f"{feats.shape[1]}; use context_pooling='mean' for a varying count"
                    )
                steps.append(feats.reshape(bsz, c.n_obs_steps, -1))
            else:
                mask = context.attention_mask.unsqueeze(-1).to(feats.dtype)
                pooled = (feats * mask).sum(1) / mask.sum(1).clamp(min=1)
        if env is not None:
            steps.append(env)
        parts = [torch.cat([s.to(feats.dtype) for s in steps], dim=-1).flatten(1)] if steps else []
        if pooled is not None:
            parts.append(pooled)
        return torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ training
    def forward(self, context: BackboneOutput, batch: Batch) -> HeadOutput:
        """Diffusion loss for the normalized target ``batch["action"]`` (B, H, A)."""
        target = batch[ACTION]
        if target.shape[1] != self.horizon:
            raise ValueError(
                f"batch key {ACTION!r}: expected horizon {self.horizon}, received {target.shape[1]}"
            )
        global_cond = self.global_conditioning(context, batch)
        noise = torch.randn_like(target)
        timesteps = torch.randint(
            0, self.config.num_train_timesteps, (target.shape[0],), device=target.device
        )
        noisy = self.noise_scheduler.add_noise(target, noise, timesteps)
        pred = self.unet(noisy, timesteps, global_cond)
        goal = noise if self.config.prediction_type == "epsilon" else target
        err = F.mse_loss(pred, goal, reduction="none")
        if self.config.do_mask_loss_for_padding and ACTION_IS_PAD in batch:
            keep = (~batch[ACTION_IS_PAD]).unsqueeze(-1).to(err.dtype)
            loss = (err * keep).sum() / (keep.sum() * err.shape[-1]).clamp(min=1)
        else:
            loss = err.mean()
        return HeadOutput(loss=loss, metrics={"mse": loss.detach()})

    # ------------------------------------------------------------------ inference
    def predict_action(
        self,
        context: BackboneOutput,
        batch: Batch,
        *,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Normalized action chunk (B, H, A) by the scheduler's reverse process from ``noise`` (B, H, A).

        DDIM is deterministic given ``noise``. DDPM also draws noise (B, H, A) at every step: from
        ``generator`` when given, else from the global RNG (as diffusers and LeRobot do), so a
        reproducible DDPM chunk needs both ``noise`` and a seeded ``generator``. ``noise=None`` draws
        the initial noise from ``generator`` (or the global RNG) too.
        """
        with torch.no_grad():  # not inference_mode: FSDP reuses its all-gather buffers outside it
            global_cond = self.global_conditioning(context, batch)
            bsz = global_cond.shape[0]
            dtype, device = global_cond.dtype, global_cond.device
            if noise is None:
                sample = torch.randn(
                    bsz, self.horizon, self.action_dim, generator=generator, device=device, dtype=dtype
                )
            else:
                sample = noise.to(device=device, dtype=dtype)
            scheduler = self.noise_scheduler
            scheduler.set_timesteps(self.num_inference_steps, device=device)
            films = self.unet.film_table(scheduler.timesteps, global_cond)
            for i, t in enumerate(scheduler.timesteps):
                out = self.unet(sample, films=films.at(i))
                sample = scheduler.step(out, t, sample, generator=generator).prev_sample
        return sample.clone()
