"""``paligemma`` backbone: the pi0 prefix (SigLIP + Gemma) with per-layer K/V for an expert head."""

from vla_backbones.paligemma.backbone import (
    LANGUAGE_MASK,
    LANGUAGE_TOKENS,
    PaliGemmaBackbone,
    PaliGemmaBackboneConfig,
)
from vla_backbones.paligemma.prompt import discretize_state, pi05_prompts, prompt_words
from vla_backbones.paligemma.tokenizer import TaskTokenizer

__all__ = [
    "LANGUAGE_MASK", "LANGUAGE_TOKENS", "PaliGemmaBackbone", "PaliGemmaBackboneConfig", "TaskTokenizer",
    "discretize_state", "pi05_prompts", "prompt_words",
]
