"""The model families redjax runs, as one table: what each fixes in the model's options, and
the ModelConfig of a model trained from scratch."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from redjax.models.transformer import ModelConfig

if TYPE_CHECKING:
    from redjax.config import ModelCfg


@dataclasses.dataclass(frozen=True)
class Arch:
    """One family's Hugging Face config class and the options the family fixes."""

    hf_config: str  # the transformers config class
    qkv_bias: bool | None  # q/k/v projection bias (None: the checkpoint's attention_bias)
    qk_norm: bool  # RMSNorm on queries and keys per head


ARCHS = {
    "llama": Arch("LlamaConfig", qkv_bias=None, qk_norm=False),
    "qwen2": Arch("Qwen2Config", qkv_bias=True, qk_norm=False),  # no bias on o
    "qwen3": Arch("Qwen3Config", qkv_bias=None, qk_norm=True),
}


def arch(name: str | None) -> Arch:
    """The family `name`; ValueError naming the supported ones."""
    if name not in ARCHS:
        raise ValueError(f"unsupported architecture {name!r}: redjax supports {', '.join(ARCHS)}")
    return ARCHS[name]


def scratch_config(m: ModelCfg, vocab_size: int, extra: tuple = ()) -> ModelConfig:
    """The ModelConfig of a model trained from scratch: the model section's shape, in its
    family's style, tied embeddings, no biases beyond the family's own."""
    a = arch(m.arch)
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.hidden_size // m.num_heads,
        arch=m.arch,
        qkv_bias=bool(a.qkv_bias),
        qk_norm=a.qk_norm,
        tie_embeddings=True,
        max_position_embeddings=m.max_position_embeddings,
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        attention=m.attention,
        extra=extra,
    )
