"""The decoder-only transformer of the Llama / Qwen2 / Qwen2.5 / Qwen3 family, in Flax Linen.

One definition serves the trainer (full sequences) and the sampler (prefill, then one token at a
time against a KV cache). For training, layers are scanned (`nn.scan`): parameters carry a leading
layer axis and a 28-layer model compiles as fast as a 1-layer one. For sampling, `unstack_layers`
gives each layer its own arrays and the layers run as a plain loop over a per-layer KV cache, so
a decode step reads every weight and cache entry once, in place, with no per-layer slice copies.
Everything is a pure function of (params, inputs, cache): the cache goes in and comes out, it is
never hidden module state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from redjax import sharding
from redjax.models import attention

Array = jax.Array
# k, v: one [batch, kv_heads, slots, head_dim] array per layer (heads-major: see
# attention.cached); mask: [batch, slots]; index: [], the next slot to write
Cache = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of a Llama/Qwen-family model (hashable: used as a static jit argument)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    arch: str = "llama"  # llama | qwen2 | qwen3: only changes the Hugging Face config written back
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted items of the HF rope dict
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_position_embeddings: int = 32768
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots: activation rematerialisation in the train step
    attention: str = "auto"  # auto | xla | cudnn | splash | chunked (see models/attention.py)
    decode_attention: str = "xla"  # xla | pallas: a decode step's attention.cached kernel
    lora_alpha: float = 0.0  # adapters in the parameters add (lora_alpha / r) x A B (redjax.lora)
    extra: tuple[tuple[str, Any], ...] = ()  # HF config fields kept for the round trip
    # The ids a generation ends at: generation_config.json's eos_token_id (else config.json's);
    # written back as generation_config.json
    generation_eos: tuple[int, ...] = ()

    def replace(self, **kw: Any) -> ModelConfig:
        return dataclasses.replace(self, **kw)

    @property
    def num_params(self) -> int:
        """Parameter count, embeddings included."""
        d, h, kv, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = d * hd * (h + 2 * kv) + h * hd * d
        attn += hd * (h + 2 * kv) if self.qkv_bias else 0
        attn += d if self.o_bias else 0
        attn += 2 * hd if self.qk_norm else 0
        mlp = 3 * d * self.intermediate_size
        mlp += 2 * self.intermediate_size + d if self.mlp_bias else 0
        per_layer = attn + mlp + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.num_layers * per_layer + embed + d


def rope_frequencies(cfg: ModelConfig) -> Array:
    """Inverse frequencies [head_dim // 2], with linear or Llama-3 scaling when configured."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    scaling = dict(cfg.rope_scaling or ())
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = jnp.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return jnp.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type {kind!r}: redjax supports default, linear and llama3")


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotary embedding, Hugging Face 'rotate_half' layout. x [B, T, H, D], positions [B, T]."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def matmul_t(x: Array, w_t: Array) -> Array:
    """x [..., in] @ w_t.T for a weight stored [out, in]. At a decode step's few rows (<= 32) it
    runs as (w_t @ x.T).T, the small transpose kept apart by an optimization barrier (XLA folds
    it back into the dot otherwise): XLA's CPU matmul streams the weight 1.1 to 1.9x faster that
    way round (bench/RESULTS.md); at a prefill's many rows, the plain dot stays."""
    rows = math.prod(x.shape[:-1])
    if rows > 32:
        return jnp.einsum("...i,oi->...o", x, w_t)
    y = jax.lax.optimization_barrier(w_t @ x.reshape(rows, -1).T)
    return y.T.reshape(*x.shape[:-1], w_t.shape[0])


class Dense(nn.Module):
    """x @ kernel [in, out] (+ bias); with `transposed`, x @ kernel_t.T for a kernel_t stored
    [out, in] (`transpose_kernels`). Same parameter names, shapes and init as flax's nn.Dense.
    Where the parameters hold an adapter (lora_a [in, r], lora_b [r, out]: redjax.lora.join),
    it adds (lora_alpha / r) x A B: a frozen kernel trained through its low-rank update."""

    features: int
    use_bias: bool
    dtype: Any
    param_dtype: Any
    transposed: bool = False
    lora_alpha: float = 0.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init, d = nn.initializers.normal(0.02), x.shape[-1]
        if self.transposed:
            w = self.param("kernel_t", init, (self.features, d), self.param_dtype)
        else:
            w = self.param("kernel", init, (d, self.features), self.param_dtype)
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        y = matmul_t(x, w) if self.transposed else jnp.dot(x, w)
        if self.has_variable("params", "lora_a"):  # an adapter (redjax.lora): + (alpha/r) x A B
            a = self.get_variable("params", "lora_a").astype(self.dtype)
            b = self.get_variable("params", "lora_b").astype(self.dtype)
            y = y + (self.lora_alpha / a.shape[-1]) * jnp.dot(jnp.dot(x, a), b)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    eps: float
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * x32.astype(self.dtype)


class Attention(nn.Module):
    cfg: ModelConfig
    mesh: Mesh | None = None
    fused: bool = False  # q, k, v in one "qkv" matmul (the sampler's layout: fuse_projections)
    transposed: bool = False  # kernels stored [out, in] (the sampler's CPU layout)

    @nn.compact
    def __call__(self, x, positions, kv_mask, cache, index):
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        b, t, _ = x.shape
        h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        dense = lambda n, bias, name: Dense(
            n, bias, dtype, pdtype, self.transposed, cfg.lora_alpha, name=name
        )
        if self.fused:
            qkv = dense((h + 2 * kv) * hd, cfg.qkv_bias, "qkv")(x)
            q, k, v = jnp.split(qkv, [h * hd, (h + kv) * hd], axis=-1)
            q, k, v = q.reshape(b, t, h, hd), k.reshape(b, t, kv, hd), v.reshape(b, t, kv, hd)
        else:
            q = dense(h * hd, cfg.qkv_bias, "q")(x).reshape(b, t, h, hd)
            k = dense(kv * hd, cfg.qkv_bias, "k")(x).reshape(b, t, kv, hd)
            v = dense(kv * hd, cfg.qkv_bias, "v")(x).reshape(b, t, kv, hd)
        if cfg.qk_norm:
            q = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="q_norm")(q)
            k = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="k_norm")(k)
        inv_freq = rope_frequencies(cfg)
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)

        if cache is not None:  # write the new keys at slots [index, index + t), in place
            put = lambda c, x: jax.lax.dynamic_update_slice(
                c, x.transpose(0, 2, 1, 3).astype(c.dtype), (0, 0, index, 0)
            )
            cache = (put(cache[0], k), put(cache[1], v))
        # Self-attention for a full sequence, and for new tokens that fill the whole cache (a
        # prefill); otherwise the new tokens attend over the cache, from slot `index` on.
        if cache is None or t == cache[0].shape[2]:
            out = attention.attend(q, k, v, kv_mask, impl=cfg.attention, mesh=self.mesh)
        else:
            keys, values = (c.astype(dtype) for c in cache)
            out = attention.cached(q, keys, values, kv_mask, index, kernel=cfg.decode_attention)
        out = dense(cfg.hidden_size, cfg.o_bias, "o")(out.reshape(b, t, h * hd))
        return out, cache


class MLP(nn.Module):
    cfg: ModelConfig
    fused: bool = False  # gate and up in one "gate_up" matmul (see fuse_projections)
    transposed: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        dense = lambda n, name: Dense(
            n, cfg.mlp_bias, dtype, pdtype, self.transposed, cfg.lora_alpha, name=name
        )
        if self.fused:
            gate, up = jnp.split(dense(2 * cfg.intermediate_size, "gate_up")(x), 2, axis=-1)
        else:
            gate = dense(cfg.intermediate_size, "gate")(x)
            up = dense(cfg.intermediate_size, "up")(x)
        return dense(cfg.hidden_size, "down")(nn.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm decoder layer: (residual stream, this layer's (k, v) cache or None) in and
    out, in the shape of a scan carry."""

    cfg: ModelConfig
    mesh: Mesh | None = None
    fused: bool = False
    transposed: bool = False

    @nn.compact
    def __call__(self, carry, positions, kv_mask, index):
        x, cache = carry
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        y = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="attn_norm")(x)
        attn = Attention(cfg, self.mesh, self.fused, self.transposed, name="attn")
        y, cache = attn(y, positions, kv_mask, cache, index)
        x = x + y
        y = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="mlp_norm")(x)
        x = x + MLP(cfg, self.fused, self.transposed, name="mlp")(y)
        return (x, cache), None


REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class Transformer(nn.Module):
    """tokens [B, T] -> logits [B, T, V] (or final hidden states [B, T, D] with hidden=True).

    scan=True: stacked layer parameters under "layers", no cache. scan=False: parameters
    "layers_0" ... "layers_{L-1}" (see `unstack_layers`), with or without a cache.
    mesh: the train step's device mesh. With fsdp > 1, each layer's weights are all-gathered
    over fsdp as the layer runs and activations stay split by rows (FSDP proper); without it XLA
    may leave the weights split and move activations instead, at many times the traffic.
    """

    cfg: ModelConfig
    scan: bool = True
    mesh: Mesh | None = None
    fused: bool = False  # per-layer parameters with fused projections (`fuse_projections`)
    transposed: bool = False  # kernels stored [out, in] (`transpose_kernels`)

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        positions: Array | None = None,
        mask: Array | None = None,
        cache: Cache | None = None,
        hidden: bool = False,
    ) -> tuple[Array, Cache | None]:
        cfg = self.cfg
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
        if positions is None:  # count valid tokens, continuing after those already cached
            seen = 0 if cache is None else jnp.sum(cache["mask"], axis=-1, keepdims=True)
            positions = jnp.maximum(seen + jnp.cumsum(mask, axis=-1) - 1, 0)
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=pdtype,
            name="embed",
            embedding_init=nn.initializers.normal(0.02),
        )
        x = embed(tokens)

        x, new_cache = self._layers(x, positions, mask, cache)
        x = RMSNorm(cfg.rms_norm_eps, dtype, pdtype, name="norm")(x)

        if hidden:
            return x, new_cache
        if cfg.tie_embeddings and self.transposed:  # the embedding is [out, in] already
            logits = matmul_t(x.astype(dtype), embed.embedding.astype(dtype))
        elif cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            head = Dense(cfg.vocab_size, False, dtype, pdtype, self.transposed, name="lm_head")
            logits = head(x)
        return logits, new_cache

    def _layers(self, x, positions, mask, cache):
        """The decoder layers: scanned (stacked parameters), a loop, or a loop over the cache
        (called from __call__, so its submodules are __call__'s)."""
        cfg = self.cfg
        block = Block
        gather = sharding.layer_gather(self.mesh)
        if gather is not None:  # the embedding's rows come split over fsdp by model dim: move
            # them to the rows' split in two steps, each an all-to-all / all-gather both ways
            x = jax.lax.with_sharding_constraint(
                x, NamedSharding(self.mesh, P("data", None, "fsdp"))
            )
            x = jax.lax.with_sharding_constraint(x, sharding.batch_sharding(self.mesh, 3))
            block = nn.map_variables(Block, "params", trans_in_fn=gather)
        if cfg.remat != "none" and cache is None:
            block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        new_cache = None
        if cache is None and self.scan:
            layers = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
            )(cfg, self.mesh, name="layers")
            (x, _), _ = layers((x, None), positions, mask, 0)
        elif cache is None:
            for i in range(cfg.num_layers):
                layer = block(cfg, self.mesh, self.fused, self.transposed, name=f"layers_{i}")
                (x, _), _ = layer((x, None), positions, mask, 0)
        else:
            if self.scan:
                raise ValueError("a KV cache needs per-layer parameters: see unstack_layers")
            index = cache["index"]
            kv_mask = jax.lax.dynamic_update_slice(cache["mask"], mask, (0, index))
            ks, vs = [], []
            for i, kv in enumerate(zip(cache["k"], cache["v"], strict=True)):
                layer = block(cfg, self.mesh, self.fused, self.transposed, name=f"layers_{i}")
                (x, (k, v)), _ = layer((x, kv), positions, kv_mask, index)
                ks.append(k)
                vs.append(v)
            new_cache = {
                "k": tuple(ks),
                "v": tuple(vs),
                "mask": kv_mask,
                "index": index + x.shape[1],
            }
        return x, new_cache


def unembedding(params: dict, cfg: ModelConfig) -> Array:
    """The [D, V] matrix that maps final hidden states to logits (the embedding when tied)."""
    if cfg.tie_embeddings:
        return params["embed"]["embedding"].T
    head = params["lm_head"]
    return head["kernel_t"].T if "kernel_t" in head else head["kernel"]


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype: Any = None) -> Cache:
    """An empty KV cache with `slots` positions per row: one k and one v array per layer."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return {
        "k": zeros(),
        "v": zeros(),
        "mask": jnp.zeros((batch, slots), bool),
        "index": jnp.zeros((), jnp.int32),
    }


def unstack_layers(params: dict, dtype: Any = None) -> dict:
    """Per-layer parameters "layers_0" ... in place of the stacked "layers" (cast to `dtype`).

    The sampler calls this once per batch, so that its decode loop reads each layer's weights in
    place instead of slicing (copying) them out of the stack at every step; casting to the compute
    dtype there also saves the per-step cast of float32 weights.
    """
    cast = (lambda x: x) if dtype is None else (lambda x: x.astype(dtype))
    out = {k: jax.tree.map(cast, v) for k, v in params.items() if k != "layers"}
    if "layers" in params:
        n = jax.tree.leaves(params["layers"])[0].shape[0]
        for i in range(n):
            out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: cast(x[i]), params["layers"])
    return out


def fuse_projections(params: dict) -> dict:
    """Per-layer parameters with q, k, v as one "qkv" kernel (and bias) and gate, up as one
    "gate_up": two matmuls per layer fewer at each decode step. For the sampler only: the trained
    layout and the Hugging Face name map keep them apart."""
    cat = lambda *xs: jnp.concatenate(xs, axis=-1)
    out = dict(params)
    for name, layer in params.items():
        if not name.startswith("layers_") or "qkv" in layer["attn"]:
            continue
        attn, mlp = dict(layer["attn"]), dict(layer["mlp"])
        attn["qkv"] = jax.tree.map(cat, attn.pop("q"), attn.pop("k"), attn.pop("v"))
        mlp["gate_up"] = jax.tree.map(cat, mlp.pop("gate"), mlp.pop("up"))
        out[name] = {**layer, "attn": attn, "mlp": mlp}
    return out


def transpose_kernels(params: dict) -> dict:
    """Per-layer parameters with every matmul kernel stored [out, in] ("kernel_t"), each
    output's weights contiguous: at a few rows a step, XLA's CPU matmul (as `matmul_t`) reads
    weights 1.5 to 2.6x faster in that layout than in [in, out] (bench/RESULTS.md). For the
    sampler only, like `fuse_projections`."""

    def walk(tree: dict) -> dict:
        out = {}
        for name, x in tree.items():
            if isinstance(x, dict):
                out[name] = walk(x)
            elif name == "kernel":
                out["kernel_t"] = x.T
            else:
                out[name] = x
        return out

    return {k: walk(v) if k.startswith("layers_") or k == "lm_head" else v
            for k, v in params.items()}  # fmt: skip


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random parameters (normal(0.02) weights, unit norms) for training from scratch or tests."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(cfg).init(jax.random.key(seed), tokens)["params"]


def param_shapes(cfg: ModelConfig) -> dict:
    """The parameter tree as jax.ShapeDtypeStructs, without allocating anything."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    init = lambda: Transformer(cfg).init(jax.random.key(0), tokens)["params"]
    return jax.eval_shape(init)


def forward(
    params: dict,
    cfg: ModelConfig,
    tokens: Array,
    *,
    mask: Array | None = None,
    positions: Array | None = None,
    cache: Cache | None = None,
    hidden: bool = False,
    mesh: Mesh | None = None,
) -> tuple[Array, Cache | None]:
    """Pure forward pass: (logits or hidden states, updated cache or None).

    params: stacked (as trained) or per-layer (`unstack_layers`, maybe `fuse_projections`); a
    cache needs per-layer parameters, so stacked ones are unstacked here (the sampler does it
    once, outside its loop).
    mesh: the train step's mesh (see Transformer).
    """
    if cache is not None:
        params = unstack_layers(params)
    fused = "layers_0" in params and "qkv" in params["layers_0"]["attn"]
    transposed = "layers_0" in params and "kernel_t" in params["layers_0"]["attn"]["o"]
    model = Transformer(cfg, "layers" in params, mesh=mesh, fused=fused, transposed=transposed)
    with precision(cfg.dtype):
        return model.apply({"params": params}, tokens, positions, mask, cache, hidden)


def precision(dtype: Any) -> contextlib.AbstractContextManager:
    """Trace-time scope for matmuls: float32 compute means float32 on every backend (HIGHEST
    precision, not TF32 on GPUs or bfloat16 passes on TPUs); other dtypes keep the default."""
    if attention.matmul_precision(dtype) is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision("highest")
