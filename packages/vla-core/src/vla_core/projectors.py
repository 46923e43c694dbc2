"""The built-in projectors: ``linear`` and ``mlp`` (2-layer GELU).

Both map context tokens (B, T, in_dim) -> (B, T, out_dim) and the backbone's positions with them,
so a head that adds ``pos_embed`` to its queries and keys sees positions of its own width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_core.config import ComponentConfig, check_positive
from vla_core.interfaces import Projector
from vla_core.registry import PROJECTORS


@dataclass(frozen=True, kw_only=True)
class LinearProjectorConfig(ComponentConfig):
    in_dim: int
    out_dim: int

    def __post_init__(self) -> None:
        check_positive(type(self).__name__, in_dim=self.in_dim, out_dim=self.out_dim)


@dataclass(frozen=True, kw_only=True)
class MLPProjectorConfig(LinearProjectorConfig):
    hidden_dim: int | None = None  # defaults to out_dim
    pos_embed: bool = False  # the backbone gives positions: project them (filled by the policy)


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    """(B, T, in_dim) -> (B, T, out_dim) by ``x W^T + b``; positions by ``pos W^T`` (no bias), so that
    projected features plus projected positions equal the projection of their sum."""

    config_class = LinearProjectorConfig

    def __init__(self, config: LinearProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        self.weight = nn.Parameter(torch.empty(config.out_dim, config.in_dim))
        self.bias = nn.Parameter(torch.empty(config.out_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        bound = 1 / math.sqrt(config.in_dim)
        nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def tiny_config(cls, workdir) -> dict:
        return {"in_dim": 8, "out_dim": 4}

    def forward(self, features: Tensor, pos_embed: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        projected = F.linear(features, self.weight, self.bias)
        return projected, None if pos_embed is None else F.linear(pos_embed, self.weight)


@PROJECTORS.register("mlp")
class MLPProjector(Projector):
    """(B, T, in_dim) -> (B, T, out_dim) by Linear -> GELU -> Linear; positions (when the backbone
    gives them) by a bias-free linear map of their own."""

    config_class = MLPProjectorConfig

    def __init__(self, config: MLPProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        hidden = config.hidden_dim or config.out_dim
        self.net = nn.Sequential(nn.Linear(config.in_dim, hidden), nn.GELU(), nn.Linear(hidden, config.out_dim))
        self.pos_proj = nn.Linear(config.in_dim, config.out_dim, bias=False) if config.pos_embed else None

    @classmethod
    def tiny_config(cls, workdir) -> dict:
        return {"in_dim": 8, "out_dim": 4, "hidden_dim": 6}

    def forward(self, features: Tensor, pos_embed: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if pos_embed is not None and self.pos_proj is None:
            raise ValueError("mlp projector: the context carries pos_embed but the projector was built with "
                             "pos_embed=False; build it with pos_embed=True")
        return self.net(features), None if pos_embed is None else self.pos_proj(pos_embed)
