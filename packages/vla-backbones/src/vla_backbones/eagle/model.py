"""EagleBackbone: an Eagle 2 / 2.5 style VLM composed from transformers blocks (no remote code).

Shapes: ``B`` batch, ``L`` text tokens, ``N`` images (all cameras of all samples), ``P`` vision patches,
``Q`` tokens per image after the connector, ``Dv`` vision width, ``D`` LLM width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model, SiglipVisionConfig
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer
from transformers.models.siglip.modeling_siglip import (
    SiglipEncoder,
    SiglipEncoderLayer,
    SiglipVisionEmbeddings,
)
from vla_core import BACKBONES, Backbone, BackboneOutput

from vla_backbones.eagle.config import EagleConfig

INPUT_IDS, ATTENTION_MASK, PIXEL_VALUES = "eagle_input_ids", "eagle_attention_mask", "eagle_pixel_values"
_LLM = {"qwen3": (Qwen3Config, Qwen3Model, Qwen3DecoderLayer), "qwen2": (Qwen2Config, Qwen2Model, Qwen2DecoderLayer)}


class VisionTower(nn.Module):
    """SigLIP patch embedding + encoder, without the final norm: (N, 3, H, W) -> (N, P, Dv)."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)

    def forward(self, pixel_values: Tensor) -> Tensor:
        # (SigLIP's embeddings cast the pixels to their own dtype)
        return self.encoder(inputs_embeds=self.embeddings(pixel_values)).last_hidden_state


def pixel_shuffle(x: Tensor, ratio: float) -> Tensor:
    """(N, P, C) on a square grid -> (N, P * ratio^2, C / ratio^2), Eagle 2's space-to-depth order."""
    n, p, c = x.shape
    side = int(p**0.5)
    x = x.reshape(n, side, side, c)  # read as (n, w, h, c)
    x = x.reshape(n, side, int(side * ratio), int(c / ratio)).permute(0, 2, 1, 3)
    x = x.reshape(n, int(side * ratio), int(side * ratio), int(c / ratio**2)).permute(0, 2, 1, 3)
    return x.reshape(n, -1, x.shape[-1])


def build_connector(kind: str, vision_dim: int, llm_dim: int, ratio: float) -> nn.Sequential:
    """``linear``: Linear(Dv -> D). ``pixel_shuffle_mlp``: LayerNorm-Linear-GELU-Linear on the shuffled width."""
    if kind == "linear":
        return nn.Sequential(nn.Linear(vision_dim, llm_dim))
    wide = vision_dim * round(1 / ratio) ** 2
    return nn.Sequential(nn.LayerNorm(wide), nn.Linear(wide, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))


@BACKBONES.register("eagle")
class EagleBackbone(Backbone):
    """Eagle VLM prefix encoder: images and text -> LLM hidden states at ``select_layer`` (B, L, D)."""

    config_class = EagleConfig
    # LoRA on the LLM's attention and MLP projections
    lora_targets = ("llm.layers.*.self_attn.*_proj", "llm.layers.*.mlp.*_proj")

    def __init__(self, config: EagleConfig) -> None:
        super().__init__()
        self.config = c = config
        vcfg = SiglipVisionConfig(**c.vision)
        vcfg._attn_implementation = c.attn_implementation
        config_cls, model_cls, _ = _LLM[c.llm_type]
        lcfg = config_cls(**{**c.llm, "num_hidden_layers": c.select_layer})  # layers past select_layer: never built
        lcfg._attn_implementation = c.attn_implementation
        self.vision = VisionTower(vcfg)
        self.connector = build_connector(c.connector, vcfg.hidden_size, lcfg.hidden_size, c.downsample_ratio)
        self.llm = model_cls(lcfg)
        self.projector = nn.Linear(lcfg.hidden_size, c.project_to_dim) if c.project_to_dim else None
        self.output_dim = c.width
        self._processor = None
        self.set_trainable(tune_llm=c.tune_llm, tune_visual=c.tune_visual)

    # ----------------------------------------------------------------- freezing
    def set_trainable(self, *, tune_llm: bool, tune_visual: bool) -> None:
        """Freeze the LLM (``tune_llm=False``) and/or the vision tower + connector (``tune_visual=False``)."""
        self.tune_llm, self.tune_visual = tune_llm, tune_visual
        self.llm.requires_grad_(tune_llm)
        self.vision.requires_grad_(tune_visual)
        self.connector.requires_grad_(tune_visual)
        self.train(self.training)

    def train(self, mode: bool = True) -> EagleBackbone:
        """Frozen parts stay in eval mode (no dropout) while training."""
        super().train(mode)
        if not self.tune_llm:
            self.llm.eval()
        if not self.tune_visual:
            self.vision.eval()
            self.connector.eval()
        return self

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {SiglipEncoderLayer, _LLM[self.config.llm_type][2]}

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second.

        A 2-layer SigLIP at 32 px (patch 16: 4 tokens per image), a 2-layer Qwen3 of width 32, all
        trainable, and a word-level tokenizer with the prompt tokens written to ``workdir / "tokenizer"``.
        """
        from vla_backbones.eagle.processor import IMAGE_TOKEN, PROMPT_TOKENS
        from vla_backbones.word_tokenizer import TINY_TASK_WORDS, save_word_tokenizer

        directory = Path(workdir) / "tokenizer"
        vocab = save_word_tokenizer(directory, [*TINY_TASK_WORDS, "user assistant [' ']"],  # the prompt's words
                                    special_tokens=[*PROMPT_TOKENS, IMAGE_TOKEN])
        return {
            "vision": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
            "llm": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 8, "vocab_size": len(vocab), "max_position_embeddings": 256},
            "select_layer": 2,
            "image_token_id": vocab[IMAGE_TOKEN],
            "tune_llm": True,
            "tune_visual": True,
            "tokenizer_path": str(directory),
        }

    # ----------------------------------------------------------------- forward
    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(N, 3, H, W) normalized pixels -> (N, Q, D) image tokens for the LLM."""
        x = self.vision(pixel_values)
        if self.config.connector == "pixel_shuffle_mlp":
            x = pixel_shuffle(x, self.config.downsample_ratio)
        return self.connector(x)

    def processor(self):
        """The text + image processor built on ``tokenizer_path`` (for ``task`` strings and camera images)."""
        if self._processor is None:
            from vla_backbones.eagle.processor import EagleProcessor

            self._processor = EagleProcessor.from_config(self.config)
        return self._processor

    def _inputs(self, batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        if INPUT_IDS in batch:
            ids = batch[INPUT_IDS]
            mask = batch.get(ATTENTION_MASK)
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
            return ids, mask, batch.get(PIXEL_VALUES)
        enc = self.processor()(batch)  # token ids on the CPU: move them to the batch's tensors
        device = next((v.device for v in batch.values() if isinstance(v, Tensor)), None)
        pixels = enc[PIXEL_VALUES]
        return enc[INPUT_IDS].to(device), enc[ATTENTION_MASK].to(device), None if pixels is None else pixels.to(device)

    def forward(self, batch: Any) -> BackboneOutput:
        """Pre-tokenized ``eagle_input_ids`` (B, L), ``eagle_attention_mask`` (B, L), ``eagle_pixel_values``
        (N, 3, H, W); or ``task`` + camera images through :meth:`processor`. Images fill the
        ``image_token_id`` positions in batch order -> features (B, L, D), attention_mask (B, L) bool."""
        ids, mask, pixels = self._inputs(batch)
        embeds = self.llm.embed_tokens(ids)
        is_image = ids == self.config.image_token_id
        if pixels is not None:
            images = self.encode_images(pixels)
            n_slots, n_tokens = int(is_image.sum()), images.shape[0] * images.shape[1]
            if n_slots != n_tokens:
                raise ValueError(
                    f"{INPUT_IDS}: {n_slots} image-token positions (id {self.config.image_token_id}) but the "
                    f"{images.shape[0]} images give {n_tokens} tokens ({images.shape[1]} each)"
                )
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), images.to(embeds.dtype))
        elif bool(is_image.any()):
            raise ValueError(f"{INPUT_IDS} holds image tokens but the batch has no {PIXEL_VALUES}")
        # position ids default to arange(L), ignoring left padding, as GR00T N1.5 does. No KV cache: a
        # cache would be written again when activation checkpointing recomputes a layer.
        hidden = self.llm(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False).last_hidden_state
        if self.projector is not None:
            hidden = self.projector(hidden)
        return BackboneOutput(features=hidden, attention_mask=mask.bool())

    @classmethod
    def from_pretrained(cls, directory, **overrides: Any) -> EagleBackbone:
        """A local Eagle checkpoint directory (reference key names) -> backbone; ``overrides`` are config fields."""
        from vla_backbones.eagle.convert import from_pretrained

        return from_pretrained(directory, **overrides)
