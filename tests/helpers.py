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
