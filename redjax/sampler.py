"""KV-cached sampling: G completions per prompt from one jitted prefill and a jitted decode loop.

The prompt batch (left-padded) is prefilled once into a KV cache; the cache and the last logits
are then repeated G times along the batch, so the G samples of a prompt share its prefill. The
decode loop runs on device inside `lax.while_loop` and stops as soon as every row has finished.
Prompt and completion lengths are bucketed, so a run compiles a bounded number of programs.
Each sampled token uses the key fold_in(fold_in(key(seed), row), step): results depend only on
the seed, the row and the step, not on the batch layout, the mesh or the decode chunking.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from redjax.models.transformer import (
    ModelConfig,
    forward,
    init_cache,
    precision,
    unembedding,
    unstack_layers,
)
from redjax.shapes import sampler_bucket as bucket
from redjax.sharding import batch_axes, data_shards, to_host

STOP_CHUNK = 32  # decode steps between host checks for stop strings


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample: temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 256
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        object.__setattr__(self, "top_k", int(self.top_k))


@dataclasses.dataclass
class Rollouts:
    """Sampled completions, rows prompt-major (row b * G + g is sample g of prompt b)."""

    tokens: np.ndarray  # int32 [R, N], 0 after the end
    mask: np.ndarray  # bool [R, N], generated tokens up to and including the stop token
    logp: np.ndarray  # float32 [R, N], log-prob under the sampling distribution (0 if greedy)
    logp_model: np.ndarray  # float32 [R, N], log-prob under the model at temperature 1
    lengths: np.ndarray  # int32 [R]
    finish: np.ndarray  # str [R], "stop" (eos id or stop string) or "length"
    text: list[str] | None = None  # decoded completions, cut before any stop string


# ----------------------------------------------------------------------------- sampling
def filtered_logprobs(
    logits: jax.Array, temperature: Any, top_k: int = 0, top_p: Any = 1.0, *, nucleus: bool = True
) -> jax.Array:
    """Log-probs of the sampling distribution: logits / T, then top-k, then top-p, renormalised.

    logits [..., V] float32; top_k is static (0 = off); top_p may be traced, and is applied only
    when `nucleus`. Ties at a threshold are kept, as in transformers' logits warpers.
    """
    z = logits / temperature
    vocab = z.shape[-1]
    if 0 < top_k < vocab:
        top = jax.lax.top_k(z, top_k)[0]  # descending
    elif nucleus:
        top = -jnp.sort(-z, axis=-1)
    else:
        return jax.nn.log_softmax(z)
    cut = top[..., -1:]
    if nucleus:  # keep the smallest head whose mass reaches top_p (mass before a token < p)
        probs = jax.nn.softmax(top, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.maximum(jnp.sum(before < top_p, axis=-1, keepdims=True), 1)
        cut = jnp.take_along_axis(top, kept - 1, axis=-1)
    return jax.nn.log_softmax(jnp.where(z < cut, -jnp.inf, z))


@dataclasses.dataclass(frozen=True)
class _Mode:
    """The static part of SamplingParams (one compiled program each); the rest is traced."""

    greedy: bool
    top_k: int
    nucleus: bool


def _split(sp: SamplingParams, vocab: int) -> tuple[_Mode, dict]:
    greedy = sp.temperature == 0
    mode = _Mode(
        greedy, 0 if greedy or sp.top_k >= vocab else sp.top_k, not greedy and sp.top_p < 1
    )
    eos = np.full(bucket(len(sp.eos_ids), 4), -1, np.int32)  # -1: never sampled
    eos[: len(sp.eos_ids)] = sp.eos_ids
    knobs = {
        "temperature": np.float32(max(sp.temperature, 1e-6)),
        "top_p": np.float32(sp.top_p),
        "eos": eos,
    }
    return mode, knobs


def _choose(logits, keys, step, mode: _Mode, knobs):
    """One token per row and its log-probs (sampling distribution, plain model)."""
    logits = logits.astype(jnp.float32)
    model = jax.nn.log_softmax(logits)
    if mode.greedy:
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logp = jnp.zeros(token.shape, jnp.float32)
    else:
        dist = filtered_logprobs(
            logits, knobs["temperature"], mode.top_k, knobs["top_p"], nucleus=mode.nucleus
        )
        step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
        token = jax.vmap(jax.random.categorical)(step_keys, dist).astype(jnp.int32)
        logp = jnp.take_along_axis(dist, token[:, None], axis=-1)[:, 0]
    logp_model = jnp.take_along_axis(model, token[:, None], axis=-1)[:, 0]
    return token, logp, logp_model


def _record(state, token, logp, logp_model, eos):
    """Write step `state['step']` of every row that is still running; mark rows that hit eos."""
    live = ~state["done"]
    col = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(
        buf, jnp.where(live, x, 0).astype(buf.dtype)[:, None], state["step"], axis=1
    )
    return {
        **state,
        "tokens": col(state["tokens"], token),
        "logp": col(state["logp"], logp),
        "logp_model": col(state["logp_model"], logp_model),
        "length": state["length"] + live.astype(jnp.int32),
        "done": state["done"] | jnp.any(token[:, None] == eos[None, :], axis=-1),
        "step": state["step"] + 1,
    }


# ----------------------------------------------------------------------------- sharding
def _state_shardings(mesh: Mesh, cfg: ModelConfig) -> dict:
    """NamedShardings of the decode state: rows over (data, fsdp), kv heads over tensor."""
    rows = batch_axes(mesh)
    t = mesh.shape.get("tensor", 1)
    heads = "tensor" if t > 1 and cfg.num_kv_heads % t == 0 else None
    s = lambda *spec: NamedSharding(mesh, P(*spec))
    kv = (s(rows, None, heads, None),) * cfg.num_layers
    return {
        "cache": {
            "k": kv,
            "v": kv,
            "mask": s(rows, None),
            "index": s(),
        },
        "tokens": s(rows, None),
        "logp": s(rows, None),
        "logp_model": s(rows, None),
        "keys": s(rows),
        "length": s(rows),
        "done": s(rows),
        "step": s(),
    }


def _constrain(state: dict, mesh: Mesh | None, cfg: ModelConfig) -> dict:
    if mesh is None:
        return state
    return jax.lax.with_sharding_constraint(state, _state_shardings(mesh, cfg))


# ----------------------------------------------------------------------------- jitted programs
@functools.partial(
    jax.jit, static_argnames=("cfg", "mode", "group", "rows", "live", "slots", "width", "mesh")
)
def _prefill(
    params, tokens, mask, seed, knobs, *, cfg, mode, group, rows, live, slots, width, mesh
):
    """Prefill the prompts once, repeat each G times into a cache of `slots`, sample step 0.

    Rows from `live` on only pad the batch to a multiple of the data shards: they start done.
    """
    b, p = tokens.shape
    # With fsdp, the prefill gathers each layer's weights (many tokens per row); the decode
    # steps keep them split and move the (one-token) activations instead.
    cache = init_cache(cfg, b, p)
    hidden, cache = forward(params, cfg, tokens, mask=mask, cache=cache, hidden=True, mesh=mesh)
    dtype = jnp.dtype(cfg.dtype)
    with precision(cfg.dtype):
        logits = hidden[:, -1].astype(dtype) @ unembedding(params, cfg).astype(dtype)

    def expand(x, axis):  # row r gets prompt r // G (the last prompt for padding rows)
        if rows == b * group:  # a repeat stays local to each data shard
            return jnp.repeat(x, group, axis=axis)
        return jnp.take(x, jnp.minimum(jnp.arange(rows) // group, b - 1), axis=axis)

    kv = lambda xs: tuple(
        jnp.pad(expand(x, 0), ((0, 0), (0, slots - p), (0, 0), (0, 0))) for x in xs
    )
    cache = {
        "k": kv(cache["k"]),
        "v": kv(cache["v"]),
        "mask": jnp.pad(expand(cache["mask"], 0), ((0, 0), (0, slots - p))),
        "index": cache["index"],
    }
    base = jax.random.key(seed)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, jnp.arange(rows))
    state = {
        "cache": cache,
        "tokens": jnp.zeros((rows, width), jnp.int32),
        "logp": jnp.zeros((rows, width), jnp.float32),
        "logp_model": jnp.zeros((rows, width), jnp.float32),
        "keys": keys,
        "length": jnp.zeros((rows,), jnp.int32),
        "done": jnp.arange(rows) >= live,
        "step": jnp.zeros((), jnp.int32),
    }
    state = _constrain(state, mesh, cfg)
    token, logp, logp_model = _choose(expand(logits, 0), keys, 0, mode, knobs)
    return _constrain(_record(state, token, logp, logp_model, knobs["eos"]), mesh, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "mesh"), donate_argnames=("state",))
def _decode(params, state, stop, knobs, *, cfg, mode, mesh):
    """Decode steps [state['step'], stop) on device, stopping early once every row is done."""

    def cond(s):
        return (s["step"] < stop) & ~jnp.all(s["done"])

    def body(s):
        prev = jax.lax.dynamic_slice_in_dim(s["tokens"], s["step"] - 1, 1, axis=1)
        logits, cache = forward(params, cfg, prev, cache=s["cache"])
        token, logp, logp_model = _choose(logits[:, 0], s["keys"], s["step"], mode, knobs)
        step = _record({**s, "cache": cache}, token, logp, logp_model, knobs["eos"])
        return _constrain(step, mesh, cfg)

    return jax.lax.while_loop(cond, body, _constrain(state, mesh, cfg))


# ----------------------------------------------------------------------------- host side
_unstack = jax.jit(unstack_layers, static_argnums=1)


def decode_params(params: Any, cfg: ModelConfig) -> Any:
    """The parameters as the decode loop reads them: one array per layer, in the compute dtype.

    `sample` makes this copy itself (once per call, not per step); call it once beforehand to
    share one copy across many `sample` calls with the same parameters (an evaluation).
    """
    dtype = jnp.dtype(cfg.dtype)
    if "layers" not in params and all(x.dtype == dtype for x in jax.tree.leaves(params)):
        return params
    return _unstack(params, dtype.name)


def _put(host: np.ndarray, sharding: NamedSharding | None) -> jax.Array:
    if sharding is None:
        return jnp.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])


def _on_mesh(params: Any, mesh: Mesh) -> Any:
    """Parameters already on the mesh stay as they are; others are replicated over it."""
    devices = set(mesh.devices.flat)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding.device_set == devices:
            return x
        return jax.device_put(x, NamedSharding(mesh, P()))

    return jax.tree.map(put, params)


def _check_prompts(prompt_ids, prompt_mask, cfg: ModelConfig):
    ids = np.asarray(prompt_ids)
    if ids.ndim != 2:
        raise ValueError(f"prompt_ids must be [batch, length], got shape {ids.shape}")
    mask = np.ones(ids.shape, bool) if prompt_mask is None else np.asarray(prompt_mask, bool)
    if mask.shape != ids.shape:
        raise ValueError(f"prompt_mask shape {mask.shape} differs from prompt_ids {ids.shape}")
    if ids.shape[0] == 0:
        raise ValueError("no prompts given")
    if not mask.any(axis=1).all():
        raise ValueError(f"prompts {np.flatnonzero(~mask.any(axis=1)).tolist()} are empty")
    if (np.diff(mask.astype(np.int8), axis=1) < 0).any():
        raise ValueError("prompts must be left-padded: prompt_mask is false, then true, per row")
    bad = mask & ((ids < 0) | (ids >= cfg.vocab_size))
    if bad.any():
        raise ValueError(f"prompt token ids must be in [0, {cfg.vocab_size}), got {ids[bad][0]}")
    return np.where(mask, ids, 0).astype(np.int32), mask


def _stop_length(tokenizer, ids: np.ndarray, stops: tuple[str, ...]) -> int | None:
    """Fewest tokens whose decoded text contains a stop string, or None if none appears."""
    hit = lambda n: any(s in tokenizer.decode(ids[:n], skip_special_tokens=False) for s in stops)
    if not hit(len(ids)):
        return None
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if hit(mid) else (mid + 1, hi)
    return lo


def _cut_text(text: str, stops: tuple[str, ...]) -> str:
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


def _decode_with_stops(run, state, n, live, stops, tokenizer, shardings):
    """Decode in chunks of STOP_CHUNK steps; between chunks, end rows whose text hit a stop string.

    Returns the final state and, per row, the tokens kept up to a stop string (-1: none).
    """
    rows = state["done"].shape[0]
    stop_len = np.full(rows, -1)
    checked = np.zeros(rows, bool)  # rows searched after they finished: nothing more to find
    step = 1
    while True:
        tokens, length = to_host(state["tokens"]), to_host(state["length"])
        done = to_host(state["done"])
        for r in np.flatnonzero(~checked[:live]):
            cut = _stop_length(tokenizer, tokens[r, : length[r]], stops)
            stop_len[r] = -1 if cut is None else cut
            checked[r] = done[r] or cut is not None or step >= n
        new = (stop_len >= 0) & ~done
        if new.any():
            done = done | new
            state["done"] = _put(done, shardings and shardings["done"])
        if done.all() or step >= n:
            return state, stop_len
        state = run(state, np.int32(min(step + STOP_CHUNK, n)))
        step = int(to_host(state["step"]))


def sample(
    params: Any,
    cfg: ModelConfig,
    prompt_ids: Any,
    prompt_mask: Any,
    *,
    num_samples: int,
    sp: SamplingParams,
    seed: int,
    tokenizer: Any = None,
    mesh: Mesh | None = None,
) -> Rollouts:
    """G = num_samples completions of each left-padded prompt in [B, P] prompt_ids.

    Rows of the result are prompt-major: row b * G + g is sample g of prompt b. With a mesh,
    rows are split over its (data, fsdp) axes (padded to a multiple of the shards, dropped after).
    A tokenizer is needed for `text` and for `sp.stop_strings`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if sp.stop_strings and tokenizer is None:
        raise ValueError("SamplingParams.stop_strings needs a tokenizer to decode completions")
    bad = [i for i in sp.eos_ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ValueError(f"eos_ids {bad} are outside the vocabulary [0, {cfg.vocab_size})")
    ids, mask = _check_prompts(prompt_ids, prompt_mask, cfg)
    b, p = ids.shape
    g, n = num_samples, sp.max_new_tokens
    shards = data_shards(mesh)
    rows = -(-b * g // shards) * shards
    b_pad = -(-b // shards) * shards
    p_pad, n_pad = bucket(p), bucket(n)
    # Left-pad to the bucket; padding prompts repeat the last one (their rows are dropped).
    ids = np.pad(ids, ((0, 0), (p_pad - p, 0)))[np.minimum(np.arange(b_pad), b - 1)]
    mask = np.pad(mask, ((0, 0), (p_pad - p, 0)))[np.minimum(np.arange(b_pad), b - 1)]

    mode, knobs = _split(sp, cfg.vocab_size)
    shardings = None
    row_sharding = None
    if mesh is not None:
        params = _on_mesh(params, mesh)
        shardings = _state_shardings(mesh, cfg)
        row_sharding = NamedSharding(mesh, P(batch_axes(mesh), None))
    params = decode_params(params, cfg)
    cfg = cfg.replace(param_dtype=cfg.dtype)
    state = _prefill(
        params,
        _put(ids, row_sharding),
        _put(mask, row_sharding),
        np.uint32(seed % 2**32),
        knobs,
        cfg=cfg,
        mode=mode,
        group=g,
        rows=rows,
        live=b * g,
        slots=p_pad + n_pad,
        width=n_pad,
        mesh=mesh,
    )

    run = functools.partial(_decode, params, knobs=knobs, cfg=cfg, mode=mode, mesh=mesh)
    stop_len = np.full(rows, -1)  # tokens kept up to a stop string, per row (-1: none)
    if sp.stop_strings:
        state, stop_len = _decode_with_stops(
            run, state, n, b * g, sp.stop_strings, tokenizer, shardings
        )
    elif n > 1:
        state = run(state, np.int32(n))

    r = b * g
    tokens = to_host(state["tokens"])[:r, :n]
    logp = to_host(state["logp"])[:r, :n]
    logp_model = to_host(state["logp_model"])[:r, :n]
    lengths = to_host(state["length"])[:r].astype(np.int32)
    done = to_host(state["done"])[:r]
    cut = stop_len[:r]
    lengths = np.where(cut >= 0, np.minimum(lengths, cut), lengths).astype(np.int32)
    keep = np.arange(n)[None, :] < lengths[:, None]
    text = None
    if tokenizer is not None:
        text = [
            _cut_text(
                tokenizer.decode(tokens[i, : lengths[i]], skip_special_tokens=True), sp.stop_strings
            )
            for i in range(r)
        ]
    return Rollouts(
        tokens=np.where(keep, tokens, 0).astype(np.int32),
        mask=keep,
        logp=np.where(keep, logp, 0).astype(np.float32),
        logp_model=np.where(keep, logp_model, 0).astype(np.float32),
        lengths=lengths,
        finish=np.where(done | (cut >= 0), "stop", "length"),
        text=text,
    )
