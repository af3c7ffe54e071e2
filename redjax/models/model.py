"""A model definition with its parameters: what loading returns and exporting takes."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from redjax.models.transformer import ModelConfig, forward


@dataclasses.dataclass
class Model:
    """A model definition with its parameters; `model(input_ids)` gives logits [B, T, V]."""

    cfg: ModelConfig
    params: dict

    def __call__(self, input_ids: Any, mask: Any = None) -> jax.Array:
        tokens = jnp.asarray(input_ids, jnp.int32)
        return _logits(self.params, self.cfg, tokens, None if mask is None else jnp.asarray(mask))


@functools.partial(jax.jit, static_argnames="cfg")
def _logits(params, cfg, tokens, mask):
    return forward(params, cfg, tokens, mask=mask)[0]
