"""The toy task's word-level tokenizer: every instruction and every pi0.5 prompt tokenizes without <unk>."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer
from vla_backbones.paligemma import pi05_prompts
from vla_train.cli import main
from vla_train.toy.tokenizer import save_toy_tokenizer, toy_instructions


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy_tokenizer")
    save_toy_tokenizer(directory)
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def test_the_instructions_are_the_envs():
    assert toy_instructions() == ["reach the red target", "reach the blue target"]


@settings(max_examples=40, deadline=None)
@given(state=st.lists(st.floats(-1.5, 1.5, allow_nan=False), min_size=1, max_size=6),
       task=st.sampled_from(toy_instructions()))
def test_every_pi05_prompt_of_the_toy_task_is_known_words(tokenizer, state, task):
    tok = tokenizer
    prompt = pi05_prompts([task], torch.tensor([state]), 256)[0]
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.unk_token_id not in ids, tok.convert_ids_to_tokens(ids)
    words = tok.convert_ids_to_tokens(ids)
    assert task.split()[2] in words  # the colour reaches the model


def test_the_colours_get_different_ids(tokenizer):
    red, blue = (tokenizer(t)["input_ids"] for t in toy_instructions())
    assert red != blue and len(red) == len(blue)


def test_the_command_writes_it(tmp_path, capsys):
    assert main(["convert", "toy-tokenizer", str(tmp_path / "tok"), "--state-bins", "16"]) == 0
    vocab = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"red", "blue", "State", "15"} <= set(vocab) and "16" not in vocab
    assert "wrote" in capsys.readouterr().out


def test_a_bad_bin_count_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="state_bins must be >= 1, received 0"):
        save_toy_tokenizer(tmp_path / "tok", state_bins=0)
    assert not (tmp_path / "tok").exists()
