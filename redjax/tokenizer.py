"""Tokenizer helpers: load a Hugging Face tokenizer (a folder or hub id), format prompts, stop
tokens.

Also builds the tiny character-level tokenizer the embedded default run trains on, so that
run needs no download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redjax import hub

if TYPE_CHECKING:
    from redjax.models import ModelConfig

# Files any one of which marks a folder as holding a Hugging Face tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
)
# End-of-turn tokens of common chat templates (Qwen/ChatML, Llama 3, Phi, Gemma).
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# End-of-text tokens that also stop generation when they are in the vocabulary.
TEXT_END_TOKENS = ("<|endoftext|>", "<|end_of_text|>")

CHAR_SPECIALS = ("<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>")
CHAR_ALPHABET = tuple(chr(i) for i in range(32, 127)) + ("\n", "\t")
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


GENERIC_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str) -> Any:
    """Loads the tokenizer in a folder (or of a hub id) and makes sure it has a pad token."""
    from transformers import AutoTokenizer

    path = hub.model_folder(os.fspath(path), weights=False)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"folder {path!r} has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    # A tokenizer without a model-specific class (the built-in character tokenizer) must load
    # as that generic class: next to a config.json of model_type qwen2, AutoTokenizer in
    # transformers v5 would pick Qwen2Tokenizer instead, which encodes the text differently.
    cls = AutoTokenizer
    config_path = os.path.join(path, "tokenizer_config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            if json.load(f).get("tokenizer_class") in GENERIC_CLASSES:
                from transformers import PreTrainedTokenizerFast as cls
    try:
        tokenizer = cls.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load the tokenizer in {path!r}: {e}") from e
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer in {path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(
    tokenizer: Any,
    question: str,
    *,
    suffix: str,
    system: str | None,
    chat: bool,
) -> str:
    """Returns the prompt text: question + suffix, in the chat template when asked and present."""
    content = question + suffix
    if chat and has_chat_template(tokenizer):
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{content}" if system else content


def eos_ids(tokenizer: Any, model: ModelConfig | None = None) -> list[int]:
    """Token ids that end a generation: the tokenizer's eos, the model's own end ids
    (generation_config.json's eos_token_id, one or several), and the chat end-of-turn and
    end-of-text tokens in the vocabulary; with a model, only ids inside its vocabulary."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    vocab = tokenizer.get_vocab()
    turn_ends = [vocab.get(t) for t in TURN_END_TOKENS + TEXT_END_TOKENS]
    model_ids: Sequence[int] = () if model is None else model.generation_eos
    for i in [*model_ids, *turn_ends]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    if model is not None:
        ids = [i for i in ids if 0 <= i < model.vocab_size]
    if not ids:
        raise ValueError("tokenizer has no eos token and no known end-of-turn token")
    return ids


def end_id(tokenizer: Any, *, chat: bool = True) -> int:
    """The token that closes a response: the chat end-of-turn token when templated, else eos."""
    if chat and has_chat_template(tokenizer):
        vocab = tokenizer.get_vocab()
        for token in TURN_END_TOKENS:
            i = vocab.get(token)
            if i is not None:
                return int(i)
    return eos_ids(tokenizer)[0]


def make_char_tokenizer(path: str) -> Any:
    """Saves a ~100-token character-level tokenizer (ChatML template) to `path` and returns it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(CHAR_SPECIALS + CHAR_ALPHABET)}
    # BPE without merges splits text into single characters; Fuse joins them back as is.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|unk|>"))
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHAR_SPECIALS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    os.makedirs(path, exist_ok=True)
    tokenizer.save_pretrained(path)
    _set_tokenizer_class(path)
    return load_tokenizer(path)


def _set_tokenizer_class(path: str) -> None:
    """Names the class transformers v4 and v5 both know in the saved tokenizer_config.json."""
    config_path = os.path.join(path, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
