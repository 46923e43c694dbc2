"""The built-in projectors: ``linear`` and ``mlp`` (2-layer GELU)."""

from __future__ import annotations

from dataclasses import dataclass

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


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    """(B, T, in_dim) -> (B, T, out_dim) by one linear layer."""

    config_class = LinearProjectorConfig

    def __init__(self, config: LinearProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        self.proj = nn.Linear(config.in_dim, config.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@PROJECTORS.register("mlp")
class MLPProjector(Projector):
    """(B, T, in_dim) -> (B, T, out_dim) by Linear -> GELU -> Linear."""

    config_class = MLPProjectorConfig

    def __init__(self, config: MLPProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        hidden = config.hidden_dim or config.out_dim
        self.net = nn.Sequential(nn.Linear(config.in_dim, hidden), nn.GELU(), nn.Linear(hidden, config.out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
