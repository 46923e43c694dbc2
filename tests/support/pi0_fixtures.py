"""Test-only helpers for the pi0 components (fixtures, not product code): tiny configs and a tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

CAMERA = "observation.images.top"
TASKS = ("pick up the red cube", "open the top drawer")

# A 2-layer PaliGemma at 28 px (4 image tokens per camera) and a matching 2-layer expert.
TINY_BACKBONE = {
    "type": "paligemma", "image_keys": [CAMERA], "image_size": 28, "vision_width": 32, "vision_depth": 2,
    "vision_mlp_dim": 48, "vision_num_heads": 2, "patch_size": 14, "width": 64, "depth": 2, "mlp_dim": 96,
    "num_heads": 8, "num_kv_heads": 1, "head_dim": 8, "vocab_size": 40, "max_token_len": 6,
}
TINY_HEAD = {
    "type": "pi0_flow", "action_dim": 3, "state_dim": 4, "horizon": 5, "max_action_dim": 6, "max_state_dim": 6,
    "width": 32, "depth": 2, "mlp_dim": 48, "num_heads": 8, "num_kv_heads": 1, "head_dim": 8,
    "num_inference_steps": 4,
}


def make_tokenizer(directory: Path, texts=TASKS) -> Path:
    """A word-level tokenizer (``<pad>`` 0, ``<bos>`` 1, ``<unk>`` 2, then the words) saved with save_pretrained."""
    from vla_backbones.word_tokenizer import save_word_tokenizer

    save_word_tokenizer(directory, texts, bos_token="<bos>")
    return directory
