"""Tokenizer helpers: the char tokenizer round trip, loading, prompt formatting, stop ids."""

import json
import os
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from redjax.tokenizer import (
    CHAR_SPECIALS,
    end_id,
    eos_ids,
    format_prompt,
    load_tokenizer,
    make_char_tokenizer,
)

PRINTABLE = "".join(chr(i) for i in range(32, 127)) + "\n\t"


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("char"))
    make_char_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def tok(char_dir):
    return AutoTokenizer.from_pretrained(char_dir)


def test_char_tokenizer_is_tiny_and_loads_from_folder(char_dir, tok):
    assert os.path.exists(os.path.join(char_dir, "tokenizer.json"))
    assert 100 <= len(tok) <= 110
    assert tok.pad_token == "<|pad|>" and tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    # Every printable character is its own token, distinct from the others.
    ids = tok.encode(PRINTABLE, add_special_tokens=False)
    assert len(ids) == len(PRINTABLE) == len(set(ids))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=PRINTABLE, max_size=200))
def test_char_tokenizer_round_trips_printable_text(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok(text)["input_ids"] == ids  # nothing added around the text
    if not any(s in text for s in CHAR_SPECIALS):
        assert len(ids) == len(text)


def test_char_tokenizer_keeps_spaces_case_and_special_tokens(tok):
    text = "  Hello World \n\n<|im_start|>user\nA b<|im_end|>\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 1
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 1


def test_format_prompt_chat_template_and_raw(tok):
    q, suffix = "What is 2 + 3?", "\nAnswer in \\boxed{}."
    chat = format_prompt(tok, q, suffix=suffix, system=None, chat=True)
    assert chat == f"<|im_start|>user\n{q}{suffix}<|im_end|>\n<|im_start|>assistant\n"
    with_system = format_prompt(tok, q, suffix="", system="Be brief.", chat=True)
    assert with_system == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert format_prompt(tok, q, suffix=suffix, system=None, chat=False) == q + suffix


def test_format_prompt_without_template_is_raw(char_dir):
    tok = load_tokenizer(char_dir)
    tok.chat_template = None
    assert format_prompt(tok, "1 + 1?", suffix=" ok", system=None, chat=True) == "1 + 1? ok"
    assert end_id(tok, chat=True) == tok.eos_token_id


def test_eos_ids_and_end_id(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert eos_ids(tok)[0] == tok.eos_token_id
    assert set(eos_ids(tok)) == {tok.eos_token_id, im_end}
    assert end_id(tok, chat=True) == im_end
    assert end_id(tok, chat=False) == tok.eos_token_id


def test_load_tokenizer_errors_name_the_folder(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no tokenizer files"):
        load_tokenizer(str(empty))


def test_load_tokenizer_falls_back_to_eos_for_pad(char_dir, tmp_path):
    path = tmp_path / "nopad"
    path.mkdir()
    for name in os.listdir(char_dir):
        shutil.copy(os.path.join(char_dir, name), path / name)
    config = json.loads((path / "tokenizer_config.json").read_text())
    del config["pad_token"]
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(str(path)).pad_token is None
    tok = load_tokenizer(str(path))
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
