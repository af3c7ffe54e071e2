"""LoRA: low-rank adapters on the projections of a frozen base model (docs/design.md, LoRA).

An adapted projection computes y = x W + (alpha / r) (x A) B with A [in, r], B [r, out]; W
stays frozen. The adapters are a parameter tree of their own, {"layers": {"attn": {"q":
{"lora_a", "lora_b"}}}} with the base's leading layer axis, so the optimizer, its state and
the checkpoints hold only them. `join` puts them beside the base weights (the model applies
them on the fly: the train step and the scorer); `merge` folds them into the weights (the
sampler, once per step; export).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

# The projections an adapter can sit on: config name -> the module's path in a layer.
TARGETS = {
    "q": ("attn", "q"),
    "k": ("attn", "k"),
    "v": ("attn", "v"),
    "o": ("attn", "o"),
    "gate": ("mlp", "gate"),
    "up": ("mlp", "up"),
    "down": ("mlp", "down"),
}
LEAVES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Rank, scale numerator and adapted projections of a run's adapters (from `lora`)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]  # in TARGETS order

    @classmethod
    def from_config(cls, lora: Any) -> LoraSpec | None:
        """The spec of the config's lora section; None when lora.rank is 0 (full fine-tuning)."""
        if not lora.rank:
            return None
        targets = tuple(t for t in TARGETS if t in lora.targets)
        return cls(rank=lora.rank, alpha=float(lora.alpha), targets=targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _dims(cfg: Any, target: str) -> tuple[int, int]:
    """(in, out) features of one projection of the model `cfg` (a ModelConfig)."""
    d, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, i), "up": (d, i),
            "down": (i, d)}[target]  # fmt: skip


def adapter_shapes(cfg: Any, spec: LoraSpec) -> dict:
    """The adapter tree as float32 ShapeDtypeStructs, a leading layer axis on every leaf."""
    out: dict = {}
    for t in spec.targets:
        (group, name), (n_in, n_out) = TARGETS[t], _dims(cfg, t)
        leaves = {
            "lora_a": jax.ShapeDtypeStruct((cfg.num_layers, n_in, spec.rank), jnp.float32),
            "lora_b": jax.ShapeDtypeStruct((cfg.num_layers, spec.rank, n_out), jnp.float32),
        }
        out.setdefault(group, {})[name] = leaves
    return {"layers": out}


def init_adapters(cfg: Any, spec: LoraSpec, seed: int) -> dict:
    """Adapters at the start of training: A uniform in +-1/sqrt(in) (PEFT's default, Kaiming
    uniform with a = sqrt(5)), B zero, so the adapted model starts as the base model."""
    shapes = adapter_shapes(cfg, spec)
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    out = []
    for (kp, s), key in zip(leaves, keys, strict=True):
        if kp[-1].key == "lora_b":
            out.append(jnp.zeros(s.shape, s.dtype))
        else:
            bound = 1.0 / s.shape[-2] ** 0.5
            out.append(jax.random.uniform(key, s.shape, s.dtype, -bound, bound))
    return jax.tree_util.tree_unflatten(tree, out)


def placed_adapters(cfg: Any, spec: LoraSpec, seed: int, mesh: Any) -> dict:
    """init_adapters made straight onto the mesh, each leaf sharded by its base kernel's rule."""
    from redjax import sharding

    shardings = sharding.param_shardings(adapter_shapes(cfg, spec), mesh)
    return jax.jit(lambda: init_adapters(cfg, spec, seed), out_shardings=shardings)()


def join(base: Any, adapters: Any) -> Any:
    """The base parameters with the adapters beside the weights they adapt (no copy): the
    model applies them on the fly. `base` None: `adapters` are the whole model (no LoRA)."""
    if base is None:
        return adapters
    out = dict(base)
    for key, sub in adapters.items():
        out[key] = join(base[key], sub) if isinstance(sub, dict) and key in base else sub
    return out


def has_adapters(params: Any) -> bool:
    """Whether a parameter tree holds adapter leaves."""
    paths = (kp for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    return any(getattr(kp[-1], "key", None) in LEAVES for kp in paths if kp)


def merge(params: Any, alpha: float) -> Any:
    """A joined tree with every adapter folded into its weight, W + (alpha / r) A B, in
    float32 at full precision, the result in W's dtype; stacked or per-layer leaves alike."""
    if not isinstance(params, dict):
        return params
    if "lora_a" not in params:
        return {k: merge(v, alpha) for k, v in params.items()}
    a, b = params["lora_a"], params["lora_b"]
    w = params["kernel"]
    delta = jnp.matmul(a.astype(jnp.float32), b.astype(jnp.float32), precision="highest")
    merged = (w.astype(jnp.float32) + (alpha / a.shape[-1]) * delta).astype(w.dtype)
    return {**{k: v for k, v in params.items() if k not in LEAVES}, "kernel": merged}
