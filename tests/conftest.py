"""Shared test set-up: 8 virtual CPU devices for sharding tests, tiny random HF checkpoints."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


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


@pytest.fixture(params=["llama", "qwen2", "qwen3"])
def family(request):
    return request.param


@pytest.fixture
def hf_checkpoint(tmp_path, family):
    """(folder, torch model) of a tiny random checkpoint of each family."""
    path = tmp_path / family
    return str(path), make_hf_checkpoint(path, family)
