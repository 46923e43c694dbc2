"""Config of the GR00T N1.5 style flow-matching head (architecture only)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_core import ComponentConfig, ConfigError
from vla_core.config import check_positive


@dataclass(frozen=True, kw_only=True)
class DiTFlowMatchingConfig(ComponentConfig):
    """GR00T N1.5 action head: per-embodiment encoders, VL LayerNorm + self-attention, a DiT, flow matching.

    Defaults are the released GR00T-N1.5-3B values. ``context_dim``, ``state_dim`` and ``action_dim``
    are filled by the policy from the backbone and the features. State and action are zero-padded to
    ``max_state_dim`` / ``max_action_dim`` (the widths the per-embodiment layers are built with; None
    means no padding), and the loss ignores the padded action dims.

    ``embodiments`` names the rows of the per-embodiment weights (name -> row); ``num_embodiments``
    rows exist (default: the largest row + 1; N1.5 checkpoints hold 32, with ``new_embodiment`` at 31).
    A batch selects rows with ``embodiment_id`` (B,) long; without it, ``default_embodiment`` is used.
    """

    context_dim: int | None = None  # backbone width D_ctx (N1.5: 2048)
    state_dim: int | None = None  # real state dim; None = no state token
    action_dim: int  # real action dim A (<= max_action_dim)
    horizon: int = 16  # H
    max_state_dim: int | None = 64
    max_action_dim: int | None = 32
    embodiments: dict[str, int] = field(default_factory=lambda: {"new_embodiment": 31})
    num_embodiments: int | None = 32
    default_embodiment: str = "new_embodiment"
    # token widths
    hidden_dim: int = 1024  # encoder/decoder MLP width and DiT output width
    num_future_tokens: int = 32  # learned tokens between the state and the action tokens (0: none)
    add_pos_embed: bool = True  # learned positions on the action tokens
    max_seq_len: int = 1024
    # DiT: width num_heads * head_dim
    num_layers: int = 16
    num_heads: int = 32
    head_dim: int = 48
    interleave_self_attention: bool = True  # even blocks cross-attend, odd blocks self-attend
    dropout: float = 0.2
    # VL stack on the context (the N1.5 variant): LayerNorm + self-attention blocks of width context_dim
    use_vlln: bool = True
    vl_self_attention_layers: int = 4
    vl_num_heads: int = 32
    mask_context: bool = False  # N1.5 attends to padded context tokens; True masks them
    # flow matching (GR00T convention: t = 0 is noise, t = 1 is data)
    noise_beta_alpha: float = 1.5
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999
    num_timestep_buckets: int = 1000
    num_inference_timesteps: int = 4

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(
            name,
            action_dim=self.action_dim,
            horizon=self.horizon,
            hidden_dim=self.hidden_dim,
            max_seq_len=self.max_seq_len,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            vl_num_heads=self.vl_num_heads,
            noise_beta_alpha=self.noise_beta_alpha,
            noise_beta_beta=self.noise_beta_beta,
            noise_s=self.noise_s,
            num_timestep_buckets=self.num_timestep_buckets,
            num_inference_timesteps=self.num_inference_timesteps,
        )
        for key in ("context_dim", "state_dim", "max_state_dim", "max_action_dim", "num_embodiments"):
            value = getattr(self, key)
            if value is not None:
                check_positive(name, **{key: value})
        if self.num_future_tokens < 0 or self.vl_self_attention_layers < 0:
            raise ConfigError(f"{name}: num_future_tokens and vl_self_attention_layers must be >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name}.dropout: expected a value in [0, 1), received {self.dropout}")
        if self.max_action_dim is not None and self.action_dim > self.max_action_dim:
            raise ConfigError(f"{name}.action_dim: {self.action_dim} exceeds max_action_dim {self.max_action_dim}")
        if self.state_dim is not None and self.max_state_dim is not None and self.state_dim > self.max_state_dim:
            raise ConfigError(f"{name}.state_dim: {self.state_dim} exceeds max_state_dim {self.max_state_dim}")
        if self.horizon > self.max_seq_len:
            raise ConfigError(f"{name}.horizon: {self.horizon} exceeds max_seq_len {self.max_seq_len}")
        if not self.embodiments:
            raise ConfigError(f"{name}.embodiments: expected at least one name -> row entry")
        rows = list(self.embodiments.values())
        if any(not isinstance(r, int) or r < 0 for r in rows) or len(set(rows)) != len(rows):
            raise ConfigError(f"{name}.embodiments: rows must be distinct non-negative ints, received {self.embodiments}")
        if self.num_embodiments is not None and max(rows) >= self.num_embodiments:
            raise ConfigError(
                f"{name}.embodiments: row {max(rows)} does not fit num_embodiments={self.num_embodiments}"
            )
        if self.default_embodiment not in self.embodiments:
            raise ConfigError(
                f"{name}.default_embodiment: {self.default_embodiment!r} is not one of {sorted(self.embodiments)}"
            )
        if self.use_vlln and self.context_dim is not None and self.context_dim % self.vl_num_heads:
            raise ConfigError(
                f"{name}.vl_num_heads: {self.vl_num_heads} does not divide context_dim {self.context_dim}"
            )

    # Widths the layers are built with.
    @property
    def width(self) -> int:
        """Token width of the DiT (num_heads * head_dim; N1.5: 1536)."""
        return self.num_heads * self.head_dim

    @property
    def padded_state_dim(self) -> int | None:
        return None if self.state_dim is None else (self.max_state_dim or self.state_dim)

    @property
    def padded_action_dim(self) -> int:
        return self.max_action_dim or self.action_dim

    @property
    def embodiment_rows(self) -> int:
        return self.num_embodiments or max(self.embodiments.values()) + 1
