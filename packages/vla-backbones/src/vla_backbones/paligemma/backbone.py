"""``paligemma``: the pi0 prefix. SigLIP image tokens and Gemma language tokens, one bidirectional pass.

The prefix (every camera's 256 image tokens, then the language tokens) runs through the Gemma
decoder once. Besides the tokens and their mask, the output carries every layer's post-RoPE K/V for
an expert head (pi0) that attends to the prefix layer by layer:

``BackboneOutput.past_key_values``: a tuple with one ``(k, v)`` pair per decoder layer, each of
shape (B, Hkv, T, d) (K/V heads, prefix tokens, head dim), positions ``cumsum(mask) - 1``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import (
    SiglipEncoder,
    SiglipEncoderLayer,
    SiglipVisionEmbeddings,
)
from vla_core import (
    BACKBONES,
    Backbone,
    BackboneOutput,
    ComponentConfig,
    ConfigError,
    ContextNeeds,
    ContextSpec,
    KVGeometry,
)
from vla_core.config import check_positive
from vla_core.features import OBS_STATE, TASK
from vla_core.gemma import GemmaDecoderLayer, RMSNorm, init_linear, rope_cos_sin

from vla_backbones.paligemma.images import to_siglip_range
from vla_backbones.paligemma.layers import prefix_attention_bias
from vla_backbones.paligemma.prompt import pi05_prompts
from vla_backbones.paligemma.tokenizer import TaskTokenizer

# Pre-tokenized language, as LeRobot's processors write it; used when present, else ``task`` is tokenized.
LANGUAGE_TOKENS = "observation.language.tokens"
LANGUAGE_MASK = "observation.language.attention_mask"


@dataclass(frozen=True, kw_only=True)
class PaliGemmaBackboneConfig(ComponentConfig):
    """PaliGemma 3B (SigLIP So400m/14 at 224 px + Gemma 2B) by default.

    ``return_hidden_states``: False (what pi0 needs) returns the prefix embeddings as ``features``
    and skips the last decoder layer's attention output and MLP, which feed nothing the expert
    reads; True returns the final normed hidden states (B, T, width) of a full pass.

    ``discrete_state_bins`` (pi0.5: 256): write the normalized ``observation.state`` into the prompt
    as integer bins over [-1, 1] (see :func:`vla_backbones.paligemma.prompt.pi05_prompts`) instead of
    the plain task; ``None`` (pi0) keeps ``task + "\n"``.
    """

    image_keys: tuple[str, ...] = ()
    image_size: int = 224
    vision_width: int = 1152
    vision_depth: int = 27
    vision_mlp_dim: int = 4304
    vision_num_heads: int = 16
    patch_size: int = 14
    vision_eps: float = 1e-6
    width: int = 2048
    depth: int = 18
    mlp_dim: int = 16384
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    vocab_size: int = 257152
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    tokenizer: str | None = None  # local tokenizer directory for ``task`` strings
    max_token_len: int = 48
    discrete_state_bins: int | None = None
    freeze_vision: bool = False
    return_hidden_states: bool = False
    pretrained: str | None = None  # local PaliGemma directory (transformers' save_pretrained) to load

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(
            name, image_size=self.image_size, vision_width=self.vision_width, vision_depth=self.vision_depth,
            vision_mlp_dim=self.vision_mlp_dim, vision_num_heads=self.vision_num_heads, patch_size=self.patch_size,
            width=self.width, depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, vocab_size=self.vocab_size,
            max_token_len=self.max_token_len,
        )
        if self.discrete_state_bins is not None:
            check_positive(name, discrete_state_bins=self.discrete_state_bins)
        if not self.image_keys:
            raise ConfigError(f"{name}.image_keys: expected at least one camera key, received ()")
        if self.image_size % self.patch_size:
            raise ConfigError(f"{name}.image_size: expected a multiple of patch_size {self.patch_size}, received {self.image_size}")
        if self.vision_width % self.vision_num_heads:
            raise ConfigError(f"{name}.vision_num_heads: must divide vision_width {self.vision_width}, received {self.vision_num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{name}.num_kv_heads: must divide num_heads {self.num_heads}, received {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"{name}.head_dim: rotary positions need an even head dim, received {self.head_dim}")

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SiglipTower(nn.Module):
    """SigLIP vision transformer without pooling head: (N, 3, S, S) in [-1, 1] -> (N, image_tokens, Dv).

    Built from transformers' SigLIP embeddings and encoder; the container is ours so the parameter
    names (``embeddings``, ``encoder``, ``post_layernorm``) do not move between transformers releases.
    """

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: Tensor) -> Tensor:
        hidden = self.encoder(inputs_embeds=self.embeddings(pixel_values)).last_hidden_state
        return self.post_layernorm(hidden)


class VisionTower(nn.Module):
    """Holds the SigLIP tower as ``vision_model`` (PaliGemma's ``vision_tower.vision_model.*`` names)."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.vision_model = SiglipTower(config)

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.vision_model(pixel_values)


class MultiModalProjector(nn.Module):
    """SigLIP width -> Gemma width, (B, N, Dv) -> (B, N, D); named as in transformers' PaliGemma."""

    def __init__(self, vision_width: int, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(vision_width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)


class GemmaPrefixModel(nn.Module):
    """Gemma embedding, decoder layers and final norm (the ``language_model`` of PaliGemma)."""

    def __init__(self, c: PaliGemmaBackboneConfig) -> None:
        super().__init__()
        self.head_dim, self.rope_theta = c.head_dim, c.rope_theta
        self.embed_tokens = nn.Embedding(c.vocab_size, c.width)
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(
                width=c.width, mlp_dim=c.mlp_dim, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                head_dim=c.head_dim, eps=c.rms_eps,
            )
            for _ in range(c.depth)
        )
        self.norm = RMSNorm(c.width, eps=c.rms_eps)

    def embed(self, ids: Tensor) -> Tensor:
        """(B, L) ids -> (B, L, D), scaled by sqrt(D) in the embedding's dtype (transformers 5 / LeRobot)."""
        x = self.embed_tokens(ids)
        return x * torch.tensor(x.shape[-1] ** 0.5, dtype=x.dtype)

    def forward(self, x: Tensor, pad_mask: Tensor, *, full: bool) -> tuple[Tensor | None, tuple[tuple[Tensor, Tensor], ...]]:
        """x (B, T, D), pad_mask (B, T) bool -> (normed hidden (B, T, D) or None, per-layer (k, v)).

        ``full=False`` stops the last layer after its K/V (the hidden output is then None).
        """
        position_ids = pad_mask.long().cumsum(dim=1) - 1
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta, x.dtype)
        bias = prefix_attention_bias(pad_mask, x.dtype)
        kv = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out, k, v = layer(x, cos, sin, bias, kv_only=i == last and not full)
            kv.append((k, v))
            x = out if out is not None else x
        return (self.norm(x) if full else None), tuple(kv)


def _init_weights(module: nn.Module) -> None:
    """Gemma's initializer for a model trained without a checkpoint: embeddings normal with std 0.02,
    linear layers :func:`vla_core.gemma.init_linear` (std 0.02, wider for narrow layers)."""
    if isinstance(module, nn.Linear):
        init_linear(module)
    elif isinstance(module, (nn.Conv2d, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def _init_siglip(tower: SiglipTower) -> None:
    """SigLIP's own initializer for a vision tower trained without a checkpoint (what big_vision and
    transformers' SigLIP use): LeCun-normal patch projection, position embeddings with std
    ``1 / sqrt(width)``, Xavier-uniform attention and MLP weights, zero biases (LayerNorms keep torch's
    ones and zeros). It redraws the tower after ``_init_weights``; the order of draws is kept so that a
    seed gives the initial weights the recorded pi05_toy run started from.

    Gemma's std 0.02 everywhere leaves the position embeddings about ten times below the patch
    content, and a tower trained from scratch then learns where things are only slowly."""
    width = tower.embeddings.position_embedding.weight.shape[1]
    nn.init.normal_(tower.embeddings.position_embedding.weight, std=width**-0.5)
    patch = tower.embeddings.patch_embedding
    nn.init.trunc_normal_(patch.weight, std=(patch.in_channels * patch.kernel_size[0] * patch.kernel_size[1]) ** -0.5)
    nn.init.zeros_(patch.bias)
    for module in tower.encoder.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)


@BACKBONES.register("paligemma")
class PaliGemmaBackbone(Backbone):
    """Cameras ``image_keys`` (B, 3, H, W) in [0, 1] and ``task`` strings -> the pi0 prefix.

    Returns features (B, T, D) with T = cameras * image_tokens + max_token_len, the mask (B, T)
    and per-layer K/V (see the module docstring).
    """

    config_class = PaliGemmaBackboneConfig
    weight_source_fields = ("pretrained",)
    # LoRA on the Gemma prefix's attention and MLP projections (openpi's gemma_2b_lora variant)
    lora_targets = ("language_model.layers.*.self_attn.*_proj", "language_model.layers.*.mlp.*_proj")

    def __init__(self, config: PaliGemmaBackboneConfig) -> None:
        super().__init__()
        self.config = c = config
        self.output_dim = c.width
        vision = SiglipVisionConfig(
            hidden_size=c.vision_width, intermediate_size=c.vision_mlp_dim, num_hidden_layers=c.vision_depth,
            num_attention_heads=c.vision_num_heads, image_size=c.image_size, patch_size=c.patch_size,
            layer_norm_eps=c.vision_eps, hidden_act="gelu_pytorch_tanh", attention_dropout=0.0,
        )
        vision._attn_implementation = "sdpa"
        self.vision_tower = VisionTower(vision)
        self.multi_modal_projector = MultiModalProjector(c.vision_width, c.width)
        self.language_model = GemmaPrefixModel(c)
        self.tokenizer = TaskTokenizer(c.tokenizer, c.max_token_len) if c.tokenizer else None
        self.apply(_init_weights)
        _init_siglip(self.vision_tower.vision_model)
        if c.pretrained:
            from vla_backbones.paligemma.pretrained import load_paligemma_weights

            load_paligemma_weights(self, c.pretrained)
        if c.freeze_vision:
            self.vision_tower.requires_grad_(False)
            self.vision_tower.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> PaliGemmaBackbone:
        """Build from a local PaliGemma directory written by transformers' ``save_pretrained``.

        Widths and depths come from its ``config.json``; ``overrides`` set the other fields
        (``image_keys``, ``tokenizer``, ``freeze_vision`` ...).
        """
        from vla_backbones.paligemma.pretrained import config_from_pretrained

        return cls(PaliGemmaBackboneConfig.from_dict({**config_from_pretrained(path), **overrides}))

    def train(self, mode: bool = True) -> PaliGemmaBackbone:
        super().train(mode)
        if self.config.freeze_vision:
            self.vision_tower.eval()
        return self

    def fsdp_units(self) -> set[type[nn.Module]]:
        return {SiglipEncoderLayer, GemmaDecoderLayer}

    @classmethod
    def tiny_config(cls, workdir: Path) -> dict[str, Any]:
        """Config fields of a tiny instance for the contract suite; builds in well under a second.

        2 SigLIP layers at 32 px (patch 16: 4 tokens per camera), a 2-layer Gemma of width 64 with 8
        query heads sharing 1 K/V head of dim 8, and a word-level tokenizer in ``workdir / "tokenizer"``.
        """
        from vla_backbones.word_tokenizer import TINY_TASK_WORDS, save_word_tokenizer

        directory = Path(workdir) / "tokenizer"
        vocab = save_word_tokenizer(directory, TINY_TASK_WORDS, bos_token="<bos>")
        return {
            "image_size": 32, "patch_size": 16, "vision_width": 32, "vision_depth": 2, "vision_mlp_dim": 64,
            "vision_num_heads": 2, "width": 64, "depth": 2, "mlp_dim": 128, "num_heads": 8, "num_kv_heads": 1,
            "head_dim": 8, "vocab_size": len(vocab), "max_token_len": 8, "tokenizer": str(directory),
        }

    @classmethod
    def configure_for(cls, config: PaliGemmaBackboneConfig, needs: ContextNeeds) -> PaliGemmaBackboneConfig:
        """A head that reads only the features gets the final hidden states (``return_hidden_states``);
        an expert that reads the K/V keeps the cheaper K/V-only pass."""
        if not needs.kv and not config.return_hidden_states:
            return dataclasses.replace(config, return_hidden_states=True)
        return config

    def context_spec(self) -> ContextSpec:
        """Width D, a token count that varies with the language input, and the per-layer K/V geometry."""
        c = self.config
        return ContextSpec(width=c.width, num_tokens=None,
                           kv=KVGeometry(num_layers=c.depth, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim))

    # ------------------------------------------------------------------ inputs
    def language_inputs(self, batch: Any, device: torch.device) -> tuple[Tensor, Tensor]:
        """Token ids (B, L) and mask (B, L) bool: LeRobot's pre-tokenized keys if present (with
        ``discrete_state_bins`` they already hold the state, as LeRobot's pi05 processor writes them),
        else ``task`` (and the discretized state)."""
        if LANGUAGE_TOKENS in batch:
            ids = batch[LANGUAGE_TOKENS].to(device=device, dtype=torch.long)
            mask = batch.get(LANGUAGE_MASK)
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device=device, dtype=torch.bool)
            return ids, mask
        c = self.config
        if TASK not in batch:
            raise ValueError(f"missing batch key {TASK!r} (list of B strings) or {LANGUAGE_TOKENS!r} (B, L) token ids")
        if self.tokenizer is None:
            raise ConfigError(
                f"{type(self.config).__name__}.tokenizer: set a local tokenizer directory to tokenize {TASK!r} "
                f"strings, or pass pre-tokenized {LANGUAGE_TOKENS!r}"
            )
        tasks = list(batch[TASK])
        if c.discrete_state_bins is None:
            return self.tokenizer(tasks, device)
        if OBS_STATE not in batch:
            raise ValueError(f"missing batch key {OBS_STATE!r}: discrete_state_bins={c.discrete_state_bins} writes "
                             "the normalized state into the prompt")
        state = batch[OBS_STATE]
        state = state[:, -1] if state.dim() == 3 else state
        return self.tokenizer(pi05_prompts(tasks, state, c.discrete_state_bins), device, newline=False)

    def embed_images(self, images: Tensor) -> Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, image_tokens, D): SigLIP last hidden state, projected.

        (SigLIP's embeddings cast the pixels to their own dtype.)"""
        return self.multi_modal_projector(self.vision_tower(images))

    def embed_prefix(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Prefix embeddings (B, T, D) and mask (B, T) bool: image tokens per camera, then language."""
        c = self.config
        cams = []
        for key in c.image_keys:
            img = batch[key]
            cams.append(to_siglip_range(img[:, -1] if img.dim() == 5 else img, c.image_size))
        bsz, device = cams[0].shape[0], cams[0].device
        image_tokens = self.embed_images(torch.cat(cams))  # all cameras in one pass
        ids, lang_mask = self.language_inputs(batch, device)
        language = self.language_model.embed(ids)
        parts = [*image_tokens.to(language.dtype).split(bsz), language]
        mask = torch.cat(
            [torch.ones(bsz, len(c.image_keys) * c.image_tokens, dtype=torch.bool, device=device), lang_mask], dim=1
        )
        return torch.cat(parts, dim=1), mask

    def forward(self, batch: Any) -> BackboneOutput:
        prefix, mask = self.embed_prefix(batch)
        full = self.config.return_hidden_states
        hidden, kv = self.language_model(prefix, mask, full=full)
        return BackboneOutput(features=hidden if full else prefix, attention_mask=mask, past_key_values=kv)
