"""Config of the Eagle 2 / 2.5 style VLM backbone (GR00T N1.5's), architecture only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vla_core import ComponentConfig, ConfigError
from vla_core.config import check_choice, check_positive

# GR00T N1.5's Eagle 2.5: SigLIP-so400m-shaped vision tower, Qwen3-1.7B LLM.
N15_VISION = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
N15_LLM = {
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "vocab_size": 151680,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True, kw_only=True)
class EagleConfig(ComponentConfig):
    """Eagle VLM: SigLIP vision -> connector -> image tokens written into a Qwen LLM cut at ``select_layer``.

    ``vision`` holds ``SiglipVisionConfig`` fields and ``llm`` ``Qwen3Config`` / ``Qwen2Config`` fields
    (``llm_type``). Only the first ``select_layer`` LLM layers are built; the output is their last
    hidden state after the final norm (B, T, D) with D = the LLM width, or ``project_to_dim``.
    Vision features are taken before the tower's final norm. ``connector``: ``linear`` (GR00T N1.5)
    or ``pixel_shuffle_mlp`` (Eagle 2: pixel shuffle by ``downsample_ratio``, then
    LayerNorm-Linear-GELU-Linear). ``tune_visual=False`` freezes the vision tower and the connector.
    ``tokenizer_path`` (a local directory) is needed only for ``task`` strings + camera images;
    pre-tokenized batches bring ``eagle_input_ids``, ``eagle_attention_mask``, ``eagle_pixel_values``.
    """

    image_keys: tuple[str, ...] = ()  # cameras, in the order their images enter the prompt
    vision: dict[str, Any] = field(default_factory=lambda: dict(N15_VISION))
    llm: dict[str, Any] = field(default_factory=lambda: dict(N15_LLM))
    llm_type: str = "qwen3"
    connector: str = "linear"
    downsample_ratio: float = 0.5
    select_layer: int = 12
    image_token_id: int = 151669
    project_to_dim: int | None = None
    tune_llm: bool = False
    tune_visual: bool = True
    tokenizer_path: str | None = None
    max_text_length: int | None = None  # pad/truncate the text to this many tokens (None: longest)
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_choice(name, "llm_type", self.llm_type, ("qwen3", "qwen2"))
        check_choice(name, "connector", self.connector, ("linear", "pixel_shuffle_mlp"))
        check_choice(name, "attn_implementation", self.attn_implementation, ("sdpa", "eager"))
        check_positive(name, select_layer=self.select_layer, downsample_ratio=self.downsample_ratio)
        if self.project_to_dim is not None:
            check_positive(name, project_to_dim=self.project_to_dim)
        layers = self.llm.get("num_hidden_layers")
        if layers is not None and self.select_layer > layers:
            raise ConfigError(f"{name}.select_layer: {self.select_layer} exceeds llm.num_hidden_layers {layers}")
        for key in ("hidden_size", "image_size", "patch_size"):
            if key not in self.vision:
                raise ConfigError(f"{name}.vision: missing {key!r} (SiglipVisionConfig fields)")
        if "hidden_size" not in self.llm:
            raise ConfigError(f"{name}.llm: missing 'hidden_size'")
        if self.connector == "pixel_shuffle_mlp":
            side = self.vision["image_size"] // self.vision["patch_size"]
            inv = round(1 / self.downsample_ratio)
            if abs(1 / self.downsample_ratio - inv) > 1e-6 or side % inv:
                raise ConfigError(
                    f"{name}.downsample_ratio: 1/{self.downsample_ratio} must be an integer dividing the "
                    f"{side}x{side} patch grid"
                )

    @property
    def width(self) -> int:
        return self.project_to_dim or int(self.llm["hidden_size"])

    @property
    def tokens_per_image(self) -> int:
        side = self.vision["image_size"] // self.vision["patch_size"]
        if self.connector == "pixel_shuffle_mlp":
            side = int(side * self.downsample_ratio)
        return side * side
