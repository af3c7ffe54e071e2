"""Llama / Qwen-family models in Flax, and Hugging Face checkpoint folders in and out."""

from redjax.models.arch import ARCHS, scratch_config
from redjax.models.hf import from_pretrained, read_config, save_pretrained
from redjax.models.model import Model
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
    "ARCHS",
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
    "scratch_config",
    "unembedding",
    "unstack_layers",
]
