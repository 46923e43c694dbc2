"""A tiny local tokenizer for Eagle tests (built with the `tokenizers` library; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

WORDS = ["[UNK]", "<pad>", "pick", "up", "the", "cube", "open", "drawer", "[", "]", "'"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<image 1>", "<image 2>"]


def make_tiny_tokenizer(directory: str | Path, image_token_id: int = 60) -> str:
    """Save a WordLevel tokenizer with the Eagle prompt tokens (``<IMG_CONTEXT>`` = ``image_token_id``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS + SPECIALS)}
    vocab["<IMG_CONTEXT>"] = image_token_id
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([*SPECIALS, "<IMG_CONTEXT>"])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="<pad>").save_pretrained(directory)
    return str(directory)
