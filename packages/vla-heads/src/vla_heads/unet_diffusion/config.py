"""Config of the ``unet_diffusion`` head (architecture and noise schedule only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vla_core import ConfigError
from vla_core.config import ComponentConfig, check_choice, check_positive


@dataclass(frozen=True, kw_only=True)
class UNetDiffusionConfig(ComponentConfig):
    """Diffusion Policy head: conditional 1D UNet + diffusers DDPM / DDIM.

    Derived fields (filled by ``VLAPolicy`` from the features when left out): ``action_dim``,
    ``context_dim`` (the backbone's width D), ``state_dim``, ``env_state_dim``, ``n_obs_steps``,
    ``image_keys``.

    Global conditioning ``(B, G)``:

    - ``context_pooling="flatten"`` (LeRobot / Diffusion Policy layout): the context holds a fixed
      number of tokens, ``num_context_tokens`` (default ``len(image_keys) * n_obs_steps``: one per
      camera and step, step-major, as ``resnet_spatial_softmax`` emits them). Per observation step,
      ``[state, tokens of the step (flattened), env_state]`` are concatenated, then the steps are
      flattened: ``G = n_obs_steps * (S + (T / n_obs_steps) * D + E)``.
    - ``context_pooling="mean"``: any number of tokens (e.g. language tokens of varying length) are
      averaged under the attention mask, ``G = n_obs_steps * (S + E) + D``.
    - ``context_pooling=None`` (the default): ``flatten`` when the backbone gives a fixed number of
      tokens, ``mean`` when it varies (chosen when the policy is built; see :attr:`pooling`).
    """

    action_dim: int
    horizon: int = 16
    context_dim: int | None = None
    state_dim: int | None = None
    env_state_dim: int | None = None
    n_obs_steps: int = 1
    image_keys: tuple[str, ...] = ()
    num_context_tokens: int | None = None
    context_pooling: Literal["flatten", "mean"] | None = None
    # UNet
    down_dims: tuple[int, ...] = (512, 1024, 2048)
    kernel_size: int = 5
    n_groups: int = 8
    # GroupNorm groups of the final Conv-GroupNorm-Mish block; None: ``n_groups``. LeRobot's UNet builds
    # that block with 8 groups whatever its ``n_groups`` (its converter sets 8 here).
    final_n_groups: int | None = None
    diffusion_step_embed_dim: int = 128
    use_film_scale_modulation: bool = True
    # Noise schedule (diffusers)
    noise_scheduler_type: Literal["DDPM", "DDIM"] = "DDPM"
    num_train_timesteps: int = 100
    num_inference_steps: int | None = None  # None: num_train_timesteps
    beta_schedule: str = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    # Loss
    do_mask_loss_for_padding: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(
            name,
            action_dim=self.action_dim,
            horizon=self.horizon,
            n_obs_steps=self.n_obs_steps,
            kernel_size=self.kernel_size,
            n_groups=self.n_groups,
            diffusion_step_embed_dim=self.diffusion_step_embed_dim,
            num_train_timesteps=self.num_train_timesteps,
            clip_sample_range=self.clip_sample_range,
        )
        for field in (
            "context_dim",
            "state_dim",
            "env_state_dim",
            "num_context_tokens",
            "num_inference_steps",
            "final_n_groups",
        ):
            value = getattr(self, field)
            if value is not None:
                check_positive(name, **{field: value})
        check_choice(name, "context_pooling", self.context_pooling, ("flatten", "mean", None))
        check_choice(name, "noise_scheduler_type", self.noise_scheduler_type, ("DDPM", "DDIM"))
        check_choice(name, "prediction_type", self.prediction_type, ("epsilon", "sample"))
        check_choice(
            name, "beta_schedule", self.beta_schedule, ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
        )
        if self.beta_schedule == "sigmoid" and self.noise_scheduler_type == "DDIM":
            raise ConfigError(f"{name}.beta_schedule: diffusers' DDIMScheduler has no 'sigmoid' schedule (DDPM has)")
        if not self.down_dims or any(d <= 0 or d % self.n_groups for d in self.down_dims):
            raise ConfigError(
                f"{name}.down_dims: expected positive widths divisible by n_groups={self.n_groups}, "
                f"received {self.down_dims}"
            )
        final = self.final_n_groups or self.n_groups
        if self.down_dims[0] % final:
            raise ConfigError(
                f"{name}.final_n_groups: the final block's width down_dims[0]={self.down_dims[0]} must be "
                f"divisible by its {final} GroupNorm groups"
            )
        if self.kernel_size % 2 == 0:
            raise ConfigError(
                f"{name}.kernel_size: expected an odd size ('same' padding), received {self.kernel_size}"
            )
        factor = 2 ** (len(self.down_dims) - 1)
        if self.horizon % factor:
            raise ConfigError(
                f"{name}.horizon: the UNet halves the horizon {len(self.down_dims) - 1} times, so it must "
                "be a "
                f"multiple of {factor}; received {self.horizon}"
            )
        if self.diffusion_step_embed_dim % 2 or self.diffusion_step_embed_dim < 4:
            raise ConfigError(
                f"{name}.diffusion_step_embed_dim: expected an even number >= 4, "
                f"received {self.diffusion_step_embed_dim}"
            )
        if self.num_inference_steps is not None and self.num_inference_steps > self.num_train_timesteps:
            raise ConfigError(
                f"{name}.num_inference_steps: expected <= num_train_timesteps={self.num_train_timesteps}, "
                f"received {self.num_inference_steps}"
            )
        tokens = self.tokens_per_sample
        if self.pooling == "flatten" and tokens is not None and tokens % self.n_obs_steps:
            raise ConfigError(
                f"{name}.num_context_tokens: flatten pooling splits the tokens over "
                f"n_obs_steps={self.n_obs_steps} "
                f"steps, so it must be a multiple of it; received {tokens}"
            )

    @property
    def pooling(self) -> str:
        """The pooling in use: ``context_pooling``, or when unset ``flatten`` if the token count is
        known and ``mean`` otherwise."""
        if self.context_pooling is not None:
            return self.context_pooling
        return "flatten" if self.tokens_per_sample is not None else "mean"

    @property
    def tokens_per_sample(self) -> int | None:
        """Context tokens the flatten pooling expects (None when unknown: no cameras, no count)."""
        if self.num_context_tokens is not None:
            return self.num_context_tokens
        return len(self.image_keys) * self.n_obs_steps or None

    @property
    def global_cond_dim(self) -> int:
        """Width G of the global conditioning vector."""
        low_dim = (self.state_dim or 0) + (self.env_state_dim or 0)
        context = 0
        if self.context_dim is not None:
            if self.pooling == "mean":
                context = self.context_dim
            elif self.tokens_per_sample is not None:
                context = self.tokens_per_sample * self.context_dim
        return self.n_obs_steps * low_dim + context
