"""Helpers shared by test modules: tiny random Hugging Face checkpoints, bench/ modules by path,
Verifier settings."""

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

# Verifier settings as a run's reward section has them (redjax.config.RewardCfg); each test
# passes the reward and workers, and overrides one of these with dict(VERIFIER, key=value).
VERIFIER = dict(timeout=5.0, format_weight=0.0, think_format=False, extract="boxed")


def tiny_hf_config(kind: str, **overrides):
    """A tiny transformers config of one family (llama, qwen2, qwen3) with its typical options."""
    import transformers

    kw = {**TINY, **overrides}
    if kind == "llama":
        kw.setdefault(
            "rope_parameters",
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
                "rope_theta": 500000.0,
            },
        )
        return transformers.LlamaConfig(**kw)
    if kind == "qwen2":
        kw.setdefault("tie_word_embeddings", True)
        return transformers.Qwen2Config(**kw)
    if kind == "qwen3":
        kw.setdefault("head_dim", 32)
        return transformers.Qwen3Config(**kw)
    raise ValueError(kind)


def make_hf_checkpoint(path, kind: str, seed: int = 0, **overrides):
    """Build a tiny random transformers model, save it to `path`, return the torch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = tiny_hf_config(kind, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model = model.float().eval()
    model.save_pretrained(str(path))
    return model


def bench_module(name: str):
    """bench/<name>.py as a module (bench/ is not an installed package)."""
    key = f"redjax_bench_{name}"
    if key not in sys.modules:
        path = os.path.join(ROOT, "bench", f"{name}.py")
        spec = importlib.util.spec_from_file_location(key, path)
        sys.modules[key] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[key]


# A ChatML template in the style of Qwen2.5-Instruct's: a default system turn when the messages
# have none. Written for these tests.
DEFAULT_SYSTEM = "You are a helpful assistant."
QWEN_STYLE_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set rest = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- set rest = messages %}"
    "{%- endif %}"
    "{%- for m in rest %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen2's pre-tokenizer split (letters, single digits, punctuation runs, whitespace).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BPE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _bpe_corpus():
    words = ["What is", "the answer", "Let's think step by step.", "\\boxed{", "café", "naïve",
             "résumé", "Übung", "größer", "Natalia sold clips", "Therefore", "total"]  # fmt: skip
    for i in range(400):
        yield f"{words[i % len(words)]} {i} + {i * 7 % 100} = {i + i * 7 % 100}. {words[i * 5 % 12]}"


def make_bpe_tokenizer(path, *, bos: bool = False):
    """A small byte-level BPE tokenizer built like Qwen2.5-Instruct's (Qwen2's split, byte-level
    pieces, NFC; <|im_end|> the eos and end of turn, <|endoftext|> the pad), trained here on a
    few hundred lines, with QWEN_STYLE_TEMPLATE, saved to `path` as a Qwen2Tokenizer; returns
    it as AutoTokenizer loads it. Characters rare in the corpus stay split into their bytes.
    `bos`: Llama 3's way instead, a <|begin_of_text|> that encoding adds and the template writes."""
    import json

    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    specials = [*BPE_SPECIALS, *(["<|begin_of_text|>"] if bos else [])]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_bpe_corpus(), trainer)
    names = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if bos:
        first = ("<|begin_of_text|>", core.token_to_id("<|begin_of_text|>"))
        core.post_processor = processors.TemplateProcessing(
            single=f"{first[0]} $A", pair=f"{first[0]} $A $B", special_tokens=[first]
        )
        names["bos_token"] = first[0]
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **names)
    tok.chat_template = ("{{- bos_token }}" if bos else "") + QWEN_STYLE_TEMPLATE
    tok.save_pretrained(str(path))
    config_file = os.path.join(str(path), "tokenizer_config.json")
    with open(config_file) as f:
        config = json.load(f)
    # as a Qwen checkpoint names it; Llama 3's name the generic class
    config["tokenizer_class"] = "PreTrainedTokenizerFast" if bos else "Qwen2Tokenizer"
    with open(config_file, "w") as f:
        json.dump(config, f, indent=2)
    return AutoTokenizer.from_pretrained(str(path))


def make_chat_model(path, seed: int = 0, **overrides):
    """A Hugging Face folder like a small Qwen2.5-Instruct checkpoint: the BPE tokenizer above, a
    tiny random qwen2 model over its vocabulary (padded to a multiple of 16, as Qwen pads), and a
    generation_config.json ending at <|im_end|> and <|endoftext|>. Returns (tokenizer, torch model)."""
    import transformers

    tok = make_bpe_tokenizer(path)
    ids = {t: tok.convert_tokens_to_ids(t) for t in BPE_SPECIALS}
    kw = dict(
        vocab_size=-(-len(tok) // 16) * 16,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    model = make_hf_checkpoint(path, "qwen2", seed=seed, **{**kw, **overrides})
    model.generation_config = transformers.GenerationConfig(  # kept by later save_pretrained
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.generation_config.save_pretrained(str(path))
    return tok, model


def write_hub_repo(cache, repo_id: str, files: dict, repo_type: str = "model") -> str:
    """Copy files ({path in repo: local file}) into a Hugging Face cache folder as huggingface_hub
    lays a download out (TYPEs--OWNER--NAME/snapshots/COMMIT/..., refs/main); returns the
    snapshot folder."""
    import hashlib
    import shutil

    repo = os.path.join(str(cache), f"{repo_type}s--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = os.path.join(repo, "snapshots", commit)
    for name, src in files.items():
        os.makedirs(os.path.dirname(os.path.join(snapshot, name)), exist_ok=True)
        shutil.copy(src, os.path.join(snapshot, name))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    return snapshot


def write_hub_model(cache, repo_id: str, folder) -> str:
    """A model folder's files as the hub cache holds repo_id; returns the snapshot folder."""
    names = sorted(os.listdir(str(folder)))
    return write_hub_repo(cache, repo_id, {n: os.path.join(str(folder), n) for n in names})


def tiny_run(prompts: int, group_size: int, *more: str) -> list[str]:
    """Overrides of a run small enough for a test: a one-layer model on the built-in task, 16
    new tokens, little evaluation; then `more`."""
    return [
        "model.hidden_size=32",
        "model.intermediate_size=64",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.num_kv_heads=1",
        f"rollout.prompts={prompts}",
        f"rollout.group_size={group_size}",
        "rollout.max_new_tokens=16",
        "data.max_prompt_len=64",
        "data.builtin_train=200",
        "eval.every=0",
        "eval.problems=4",
        *more,
    ]
