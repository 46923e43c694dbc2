"""vla_backbones.word_tokenizer: the tiny local tokenizers the language backbones' tiny configs write."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer
from vla_backbones.word_tokenizer import save_word_tokenizer


def test_ids_words_and_special_tokens(tmp_path):
    vocab = save_word_tokenizer(tmp_path, ["pick up the cube", "open the drawer"], special_tokens=["<img>", "<x y>"])
    assert [vocab[t] for t in ("<pad>", "<unk>")] == [0, 1]
    words = ["cube", "drawer", "open", "pick", "the", "up"]
    assert [vocab[w] for w in words] == list(range(2, 8)) and vocab["<img>"] == 8 and vocab["<x y>"] == 9
    tok = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert tok.pad_token_id == 0 and tok.unk_token_id == 1 and tok.bos_token is None
    ids = tok("<img>open the<x y>box", add_special_tokens=True)["input_ids"]
    assert ids == [8, vocab["open"], vocab["the"], 9, 1]  # special tokens matched whole, unknown word -> <unk>


def test_bos_prefix_and_right_padding(tmp_path):
    vocab = save_word_tokenizer(tmp_path, ["pick up"], bos_token="<bos>")
    assert [vocab[t] for t in ("<pad>", "<bos>", "<unk>", "pick", "up")] == [0, 1, 2, 3, 4]
    tok = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    out = tok(["pick", "pick up"], padding="longest", padding_side="right")
    assert out["input_ids"] == [[1, 3, 0], [1, 3, 4]] and out["attention_mask"] == [[1, 1, 0], [1, 1, 1]]


def test_special_tokens_may_not_repeat_the_fixed_ones(tmp_path):
    with pytest.raises(ValueError, match="<pad>"):
        save_word_tokenizer(tmp_path, ["a"], special_tokens=["<pad>"])
