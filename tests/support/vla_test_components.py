"""Test-only components (fixtures, not product code): a linear backbone and an MLP regression head.

Importing this module registers them as backbone ``test_linear`` and head ``test_mlp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vla_core import BACKBONES, HEADS, ActionHead, Backbone, BackboneOutput, ComponentConfig, HeadOutput
from vla_core.features import ACTION, ACTION_IS_PAD, OBS_STATE


@dataclass(frozen=True, kw_only=True)
class LinearBackboneConfig(ComponentConfig):
    image_keys: tuple[str, ...] = ()
    image_shape: tuple[int, int, int] | None = None
    state_dim: int | None = None
    n_obs_steps: int = 1
    dim: int = 16
    pool: int = 4
    pretrained_weights: str | None = None  # a safetensors file with this backbone's initial weights


class TokenLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


@BACKBONES.register("test_linear")
class LinearBackbone(Backbone):
    """One token per camera (pooled pixels -> linear) plus one state token; (B, T, dim)."""

    config_class = LinearBackboneConfig
    weight_source_fields = ("pretrained_weights",)

    def __init__(self, config: LinearBackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.output_dim = config.dim
        c = config.image_shape[0] if config.image_shape else 3
        self.image_proj = nn.Linear(c * config.pool * config.pool, config.dim)
        self.state_proj = nn.Linear(config.state_dim, config.dim) if config.state_dim else None
        self.block = TokenLayer(config.dim)
        if config.pretrained_weights:
            from vla_core import load_checkpoint

            load_checkpoint(self, config.pretrained_weights)

    @classmethod
    def tiny_config(cls, workdir):
        return {"dim": 8, "pool": 2}

    def forward(self, batch) -> BackboneOutput:
        tokens = []
        for key in self.config.image_keys:
            img = batch[key]
            if img.dim() == 5:
                img = img[:, -1]
            pooled = F.adaptive_avg_pool2d(img, self.config.pool).flatten(1)
            tokens.append(self.image_proj(pooled))
        if self.state_proj is not None:
            state = batch[OBS_STATE]
            tokens.append(self.state_proj(state[:, -1] if state.dim() == 3 else state))
        x = self.block(torch.stack(tokens, dim=1))
        return BackboneOutput(features=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))

    def fsdp_units(self):
        return {TokenLayer}


@dataclass(frozen=True, kw_only=True)
class MLPHeadConfig(ComponentConfig):
    context_dim: int | None = None
    action_dim: int
    horizon: int = 4
    hidden_dim: int = 32


@HEADS.register("test_mlp")
class MLPHead(ActionHead):
    """Mean-pooled context -> MLP -> (B, H, A); MSE over non-padded steps. Noise is ignored."""

    config_class = MLPHeadConfig

    def __init__(self, config: MLPHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.horizon, self.action_dim = config.horizon, config.action_dim
        self.net = nn.Sequential(
            nn.Linear(config.context_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.horizon * config.action_dim),
        )

    @classmethod
    def tiny_config(cls, workdir):
        return {"hidden_dim": 8}

    def _predict(self, context):
        mask = context.attention_mask.unsqueeze(-1).to(context.features.dtype)
        pooled = (context.features * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.net(pooled).view(-1, self.horizon, self.action_dim)

    def forward(self, context, batch) -> HeadOutput:
        pred = self._predict(context)
        target = batch[ACTION]
        err = (pred[:, : target.shape[1]] - target).square()
        if ACTION_IS_PAD in batch:
            keep = (~batch[ACTION_IS_PAD]).unsqueeze(-1).to(err.dtype)
            loss = (err * keep).sum() / (keep.sum() * err.shape[-1]).clamp(min=1)
        else:
            loss = err.mean()
        return HeadOutput(loss=loss, metrics={"mse": loss.detach()})

    def predict_action(self, context, batch, *, noise=None, generator=None):
        return self._predict(context)


FEATURES = {
    "input_features": {
        "observation.images.top": {"type": "VISUAL", "shape": [3, 8, 8]},
        "observation.state": {"type": "STATE", "shape": [3]},
    },
    "output_features": {"action": {"type": "ACTION", "shape": [2]}},
}


def policy_config(**overrides):
    """A tiny policy config of the test components."""
    cfg = {**FEATURES, "backbone": {"type": "test_linear"}, "head": {"type": "test_mlp", "horizon": 4}}
    cfg.update(overrides)
    return cfg


def set_unit_stats(policy):
    """Give every normalized feature stats from a fixed random draw."""
    g = torch.Generator().manual_seed(0)
    stats = {}
    for key, feature in {**policy.input_features, **policy.output_features}.items():
        shape = feature.shape if feature.type.value != "VISUAL" else (feature.shape[0], 1, 1)
        lo = torch.randn(shape, generator=g)
        stats[key] = {"mean": lo, "std": torch.rand(shape, generator=g) + 0.5, "min": lo - 1, "max": lo + 1,
                      "q01": lo - 0.9, "q99": lo + 0.9}
    policy.normalizer.set_stats(stats)
    return policy
