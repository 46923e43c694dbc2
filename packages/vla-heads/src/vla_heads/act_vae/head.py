"""The ACT head: a conditional VAE whose decoder is a DETR-style transformer.

Training: a BERT-style VAE encoder over [CLS, state, action chunk] gives the latent's mean and
log-variance; a reparameterised sample z becomes the first encoder token. Inference, eval-mode loss
(or ``use_vae=False``): z = 0. The transformer encoder fuses [latent, state, env state, context
tokens] (context = the backbone's image tokens with their ``pos_embed``); ``horizon`` learned
queries cross-attend to it and a linear layer gives the (B, H, A) chunk.
Loss: L1 over the non-padded steps + ``kl_weight`` x KL(q(z | s, a) || N(0, I)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from vla_core import (
    ACTION,
    ACTION_IS_PAD,
    HEADS,
    OBS_ENV_STATE,
    OBS_STATE,
    ActionHead,
    BackboneOutput,
    ComponentConfig,
    ConfigError,
    ContextNeeds,
    HeadOutput,
)
from vla_core.config import check_choice, check_positive
from vla_core.interfaces import Batch

from vla_heads.act_vae.transformer import (
    ACTIVATIONS,
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    init_xavier,
    sine_table_1d,
)


@dataclass(frozen=True, kw_only=True)
class ACTVAEConfig(ComponentConfig):
    """ACT's architecture; defaults are LeRobot 0.6.1's ``ACTConfig`` (original ACT except 1 decoder layer).

    context_dim, action_dim, state_dim, env_state_dim and n_obs_steps are filled by the policy.
    ``horizon`` is ACT's ``chunk_size``.
    """

    action_dim: int
    context_dim: int | None = None
    state_dim: int | None = None
    env_state_dim: int | None = None
    n_obs_steps: int = 1
    horizon: int = 100
    dim_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    activation: str = "relu"
    pre_norm: bool = False
    n_encoder_layers: int = 4
    n_decoder_layers: int = 1
    use_vae: bool = True
    latent_dim: int = 32
    n_vae_encoder_layers: int = 4
    dropout: float = 0.1
    kl_weight: float = 10.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(name, action_dim=self.action_dim, horizon=self.horizon, dim_model=self.dim_model,
                       n_heads=self.n_heads, dim_feedforward=self.dim_feedforward,
                       n_encoder_layers=self.n_encoder_layers, n_decoder_layers=self.n_decoder_layers,
                       latent_dim=self.latent_dim)
        check_choice(name, "activation", self.activation, ACTIVATIONS)
        if self.dim_model % self.n_heads:
            raise ConfigError(f"{name}.n_heads: must divide dim_model {self.dim_model}, received {self.n_heads}")
        if self.context_dim is not None and self.context_dim != self.dim_model:
            raise ConfigError(f"{name}.context_dim: ACT attends to context tokens of width dim_model "
                              f"({self.dim_model}), received {self.context_dim}; leave context_dim unset (the "
                              "policy projects the backbone's tokens to dim_model)")
        if self.n_obs_steps != 1:
            raise ConfigError(f"{name}.n_obs_steps: ACT takes one observation step, received {self.n_obs_steps}")
        for field in ("state_dim", "env_state_dim"):
            value = getattr(self, field)
            if value is not None and value <= 0:
                raise ConfigError(f"{name}.{field}: expected a positive int or None, received {value!r}")
        if self.use_vae and self.n_vae_encoder_layers < 1:
            raise ConfigError(f"{name}.n_vae_encoder_layers: expected >= 1 with use_vae, "
                              f"received {self.n_vae_encoder_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout: expected a value in [0, 1), received {self.dropout}")
        if self.kl_weight < 0:
            raise ConfigError(f"{name}.kl_weight: expected >= 0, received {self.kl_weight}")


def _vector(batch: Batch, key: str, dim: int) -> Tensor:
    """batch[key] as (B, dim); a one-step window (B, 1, dim) is squeezed."""
    if key not in batch:
        raise ValueError(f"missing batch key {key!r}: act_vae expects a tensor of shape (B, {dim})")
    x = batch[key]
    if x.dim() == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"batch key {key!r}: expected shape (B, {dim}), received {tuple(x.shape)}")
    return x


@HEADS.register("act_vae")
class ACTVAEHead(ActionHead):
    """ACT: context (B, T, D) + state -> action chunk (B, H, A). Deterministic at inference (noise ignored)."""

    config_class = ACTVAEConfig

    def __init__(self, config: ACTVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.horizon, self.action_dim = c.horizon, c.action_dim
        d = c.dim_model
        layer_args = (d, c.n_heads, c.dim_feedforward, c.dropout, c.activation, c.pre_norm)
        if c.use_vae:
            self.vae_encoder = Encoder(c.n_vae_encoder_layers, *layer_args)
            self.vae_cls_embed = nn.Embedding(1, d)
            self.vae_state_proj = nn.Linear(c.state_dim, d) if c.state_dim else None
            self.vae_action_proj = nn.Linear(c.action_dim, d)
            self.vae_latent_proj = nn.Linear(d, 2 * c.latent_dim)
            n_vae_tokens = 1 + (1 if c.state_dim else 0) + c.horizon
            self.register_buffer("vae_pos_embed", sine_table_1d(n_vae_tokens, d)[None])
        self.latent_proj = nn.Linear(c.latent_dim, d)
        self.state_proj = nn.Linear(c.state_dim, d) if c.state_dim else None
        self.env_state_proj = nn.Linear(c.env_state_dim, d) if c.env_state_dim else None
        self.token_pos_embed = nn.Embedding(1 + bool(c.state_dim) + bool(c.env_state_dim), d)
        self.encoder = Encoder(c.n_encoder_layers, *layer_args)
        self.decoder = Decoder(c.n_decoder_layers, *layer_args)
        self.query_pos_embed = nn.Embedding(c.horizon, d)
        self.action_proj = nn.Linear(d, c.action_dim)
        init_xavier(self.encoder)
        init_xavier(self.decoder)

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {EncoderLayer, DecoderLayer}

    @classmethod
    def context_needs(cls, config: ACTVAEConfig) -> ContextNeeds:
        """Context tokens of width ``dim_model`` (the policy projects other widths, positions too)."""
        return ContextNeeds(width=config.dim_model)

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second."""
        return {"horizon": 4, "dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 1,
                "n_decoder_layers": 1, "n_vae_encoder_layers": 1, "latent_dim": 8}

    # ------------------------------------------------------------------ pieces
    def encode_latent(self, state: Tensor | None, action: Tensor, is_pad: Tensor) -> tuple[Tensor, Tensor]:
        """VAE posterior: state (B, S), action (B, H, A), is_pad (B, H) -> mu, log_var, each (B, latent).

        The VAE encoder reads out its CLS token only: its last layer computes that one row.
        """
        bsz = action.shape[0]
        cls = self.vae_cls_embed(action.new_zeros(bsz, 1, dtype=torch.long))  # (B, 1, D)
        tokens = [cls]
        if self.vae_state_proj is not None:
            tokens.append(self.vae_state_proj(state)[:, None])
        tokens.append(self.vae_action_proj(action))
        x = torch.cat(tokens, dim=1)  # (B, n_fixed + H, D), n_fixed = 1 (+1 with a state)
        n_fixed = x.shape[1] - action.shape[1]
        valid = torch.cat([is_pad.new_ones(bsz, n_fixed), ~is_pad], dim=1)  # (B, n_fixed + H)
        cls = self.vae_encoder(x, self.vae_pos_embed, valid, first_only=True)[:, 0]
        mu, log_var = self.vae_latent_proj(cls).chunk(2, dim=-1)
        return mu, log_var

    def decode(self, latent: Tensor, context: BackboneOutput, batch: Batch) -> Tensor:
        """latent (B, latent_dim) + context tokens + state -> action chunk (B, H, A)."""
        c, feats = self.config, context.features
        if feats.shape[-1] != c.dim_model:
            raise ValueError(f"act_vae: context features have width {feats.shape[-1]}, expected dim_model {c.dim_model}")
        tokens = [self.latent_proj(latent)]
        if self.state_proj is not None:
            tokens.append(self.state_proj(_vector(batch, OBS_STATE, c.state_dim)))
        if self.env_state_proj is not None:
            tokens.append(self.env_state_proj(_vector(batch, OBS_ENV_STATE, c.env_state_dim)))
        n_1d = len(tokens)
        x = torch.cat([torch.stack(tokens, dim=1), feats], dim=1)  # (B, n_1d + T, D)
        ctx_pos = context.pos_embed
        if ctx_pos is None:
            ctx_pos = feats.new_zeros(1, feats.shape[1], c.dim_model)
        elif ctx_pos.shape[-1] != c.dim_model:
            raise ValueError(f"act_vae: pos_embed has width {ctx_pos.shape[-1]}, expected dim_model {c.dim_model}")
        one_d = self.token_pos_embed(torch.arange(n_1d, device=feats.device))[None]  # (1, n_1d, D)
        pos = torch.cat([one_d.expand(ctx_pos.shape[0], -1, -1), ctx_pos], dim=1)  # (1 or B, n_1d + T, D)
        mask = context.attention_mask  # (B, T) True = valid; the 1D tokens are always valid
        if mask is not None:
            mask = torch.cat([mask.new_ones(mask.shape[0], n_1d), mask], dim=1)
        memory = self.encoder(x, pos, mask)
        query_pos = self.query_pos_embed(torch.arange(self.horizon, device=feats.device))[None]  # (1, H, D)
        out = self.decoder(query_pos, memory, pos, mask)
        return self.action_proj(out)

    def _target(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(action (B, H, A), is_pad (B, H)); a chunk shorter than ``horizon`` is padded (marked as padding)."""
        if ACTION not in batch:
            raise ValueError(f"missing batch key {ACTION!r}: act_vae training needs the chunk (B, {self.horizon}, "
                             f"{self.action_dim})")
        action = batch[ACTION]
        if action.dim() != 3 or action.shape[2] != self.action_dim or action.shape[1] > self.horizon:
            raise ValueError(f"batch key {ACTION!r}: expected shape (B, H<={self.horizon}, {self.action_dim}), "
                             f"received {tuple(action.shape)}")
        bsz, h = action.shape[:2]
        is_pad = batch.get(ACTION_IS_PAD)
        if is_pad is None:
            is_pad = torch.zeros(bsz, h, dtype=torch.bool, device=action.device)
        if h < self.horizon:
            action = torch.cat([action, action.new_zeros(bsz, self.horizon - h, self.action_dim)], dim=1)
            is_pad = torch.cat([is_pad, is_pad.new_ones(bsz, self.horizon - h)], dim=1)
        return action, is_pad

    # ------------------------------------------------------------------ API
    def forward(self, context: BackboneOutput, batch: Batch) -> HeadOutput:
        """Training loss: L1 over non-padded steps + kl_weight * KL; metrics ``l1`` and ``kl``.

        In eval mode (a validation loss) the latent is zero, as at inference, and the KL term is 0,
        as in LeRobot's ``ACT.forward`` (the original ACT ran the VAE encoder whenever actions were given).
        """
        c = self.config
        action, is_pad = self._target(batch)
        bsz = action.shape[0]
        if c.use_vae and self.training:
            state = _vector(batch, OBS_STATE, c.state_dim) if c.state_dim else None
            mu, log_var = self.encode_latent(state, action, is_pad)
            latent = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
            kl = (-0.5 * (1 + log_var - mu.square() - log_var.exp())).sum(-1).mean()
        else:
            latent = action.new_zeros(bsz, c.latent_dim)
            kl = action.new_zeros(())
        pred = self.decode(latent, context, batch)
        valid = (~is_pad)[..., None].to(pred.dtype)
        l1 = ((pred - action).abs() * valid).sum() / (valid.sum() * self.action_dim).clamp(min=1)
        loss = l1 + c.kl_weight * kl
        return HeadOutput(loss=loss, metrics={"l1": l1.detach(), "kl": kl.detach()})

    def predict_action(self, context: BackboneOutput, batch: Batch, *, noise: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """(B, H, A) normalized chunk from the zero latent (the prior's mean); ``noise`` is not used."""
        feats = context.features
        latent = feats.new_zeros(feats.shape[0], self.config.latent_dim)
        return self.decode(latent, context, batch)
