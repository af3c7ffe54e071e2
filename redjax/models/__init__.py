"""Llama / Qwen-family models in Flax, and Hugging Face checkpoint folders in and out."""

from redjax.models.hf import Model, from_pretrained, read_config, save_pretrained
from redjax.models.transformer import (
    ModelConfig,
    Transformer,
    forward,
    init_cache,
    init_params,
    param_shapes,
    unembedding,
    unstack_layers,
)

__all__ = [
    "Model",
    "ModelConfig",
    "Transformer",
    "forward",
    "from_pretrained",
    "init_cache",
    "init_params",
    "param_shapes",
    "read_config",
    "save_pretrained",
    "unembedding",
    "unstack_layers",
]
