"""KV-cached sampling: G completions per prompt from one jitted prefill and a jitted decode loop.

The prompt batch (left-padded) is prefilled once into a KV cache; the cache and the last logits
are then repeated G times along the batch, so the G samples of a prompt share its prefill. The
decode loop runs on device inside `lax.while_loop`, in chunks of steps; between chunks the host
grows the cache to the chunk's last position (a step attends over the filled part, bucketed,
not the whole generation budget), moves the running rows into a smaller batch once they fit one
(finished rows cost nothing), and ends rows whose text hit a stop string. A step's rows can be
sampled in several passes, as many as the device memory needs (`rows_per_pass`). Shapes are
bucketed, so a run compiles a bounded number of programs. Each sampled token uses the key
fold_in(fold_in(key(seed), row), step): results depend only on the seed, the row and the step,
not on the batch layout, the mesh, the passes, the compaction or the decode chunking.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from redjax import distributed, lora
from redjax.models import attention
from redjax.models.transformer import (
    ModelConfig,
    forward,
    fuse_projections,
    init_cache,
    precision,
    transpose_kernels,
    unembedding,
    unstack_layers,
)
from redjax.shapes import pad_cols
from redjax.shapes import sampler_bucket as bucket
from redjax.sharding import batch_axes, data_shards, to_host

STOP_CHUNK = 32  # decode steps between host checks (stop strings, compaction, cache growth):
# every chunk with stop strings, the first one otherwise (later ones grow, see _next_layout)
SEGMENTED = True  # decode against a cache sized to the longest position so far, not the budget
COMPACT = True  # move the running rows into a smaller batch once they fit one


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to sample: temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    # No defaults: a run's come from its rollout section (train.sampling_params).
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
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

    tokens: np.ndarray  # int32 [R, N], 0 after the end; N = the longest completion
    mask: np.ndarray  # bool [R, N], generated tokens up to and including the stop token
    logp: np.ndarray  # float32 [R, N], log-prob under the sampling distribution (0 if greedy)
    logp_model: np.ndarray  # float32 [R, N], log-prob under the model at temperature 1
    lengths: np.ndarray  # int32 [R]
    finish: np.ndarray  # str [R], "stop" (eos id or stop string) or "length"
    text: list[str] | None = None  # decoded completions, cut before any stop string


def concat_rollouts(parts: list[Rollouts]) -> Rollouts:
    """The rollouts of `parts`, one after the other, right-padded to the widest (token 0, no
    mask, log-prob 0 after the end, as in each part)."""
    width = max(p.tokens.shape[1] for p in parts)
    wide = lambda name: np.concatenate([pad_cols(getattr(p, name), width) for p in parts])
    texts = [p.text for p in parts]
    return Rollouts(
        tokens=wide("tokens"),
        mask=wide("mask"),
        logp=wide("logp"),
        logp_model=wide("logp_model"),
        lengths=np.concatenate([p.lengths for p in parts]),
        finish=np.concatenate([p.finish for p in parts]),
        text=None if any(t is None for t in texts) else [x for t in texts for x in t],
    )


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


@flax.struct.dataclass
class DecodeState:
    """What the decode loop carries. Arrays with a rows axis have it first (split over the mesh's
    data axes); `index` and `step` are scalars. Its shardings derive from it (`_shardings`)."""

    k: tuple  # per layer [rows, kv_heads, slots, head_dim]: keys of the prompt and tokens so far
    v: tuple  # per layer, same layout: the values
    kv_mask: jax.Array  # bool [rows, slots]: the slot holds a token (not padding, not unwritten)
    index: jax.Array  # int32 []: the next cache slot to write, the same for every row
    tokens: jax.Array  # int32 [rows, width]: the token of each step, 0 after a row's end
    logp: jax.Array  # float32 [rows, width]: log-prob under the sampling distribution
    logp_model: jax.Array  # float32 [rows, width]: log-prob under the model at temperature 1
    keys: jax.Array  # PRNG key [rows]: fold_in(key(seed), row); step t samples with fold_in(., t)
    length: jax.Array  # int32 [rows]: tokens generated so far
    done: jax.Array  # bool [rows]: the row has stopped (an eos id, a stop string, or padding)
    step: jax.Array  # int32 []: the next step to sample

    @property
    def cache(self) -> dict:
        """The KV cache in the layout `forward` takes."""
        return {"k": self.k, "v": self.v, "mask": self.kv_mask, "index": self.index}

    def with_cache(self, cache: dict) -> DecodeState:
        return self.replace(k=cache["k"], v=cache["v"], kv_mask=cache["mask"], index=cache["index"])


def _record(state: DecodeState, token, logp, logp_model, eos) -> DecodeState:
    """Write step `state.step` of every row that is still running; mark rows that hit eos."""
    live = ~state.done
    col = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(
        buf, jnp.where(live, x, 0).astype(buf.dtype)[:, None], state.step, axis=1
    )
    return state.replace(
        tokens=col(state.tokens, token),
        logp=col(state.logp, logp),
        logp_model=col(state.logp_model, logp_model),
        length=state.length + live.astype(jnp.int32),
        done=state.done | jnp.any(token[:, None] == eos[None, :], axis=-1),
        step=state.step + 1,
    )


# ----------------------------------------------------------------------------- sharding
def _shardings(state: DecodeState, mesh: Mesh, cfg: ModelConfig) -> DecodeState:
    """NamedShardings of a decode state, from each array's rank: scalars replicated, the rows
    axis (first) over (data, fsdp), and the kv-heads axis (second) of the 4-d cache over tensor."""
    rows = batch_axes(mesh)
    t = mesh.shape.get("tensor", 1)
    heads = "tensor" if t > 1 and cfg.num_kv_heads % t == 0 else None

    def spec(x) -> NamedSharding:
        if x.ndim == 0:
            return NamedSharding(mesh, P())
        if x.ndim == 4:
            return NamedSharding(mesh, P(rows, heads, None, None))
        return NamedSharding(mesh, P(rows, *(None,) * (x.ndim - 1)))

    return jax.tree.map(spec, state)


def _constrain(state: DecodeState, mesh: Mesh | None, cfg: ModelConfig) -> DecodeState:
    if mesh is None:
        return state
    return jax.lax.with_sharding_constraint(state, _shardings(state, mesh, cfg))


# ----------------------------------------------------------------------------- jitted programs
@functools.partial(
    jax.jit, static_argnames=("cfg", "mode", "group", "rows", "live", "slots", "width", "mesh")
)
def _prefill(
    params, tokens, mask, seed, row0, knobs, *, cfg, mode, group, rows, live, slots, width, mesh
):
    """Prefill the prompts once, repeat each G times into a cache of `slots`, sample step 0.

    Row r of this batch is row row0 + r of the whole call (its key); rows from `live` on only
    pad the batch to a multiple of the data shards: they start done.
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
        jnp.pad(expand(x, 0), ((0, 0), (0, 0), (0, slots - p), (0, 0))) for x in xs
    )
    base = jax.random.key(seed)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base, row0 + jnp.arange(rows))
    state = DecodeState(
        k=kv(cache["k"]),
        v=kv(cache["v"]),
        kv_mask=jnp.pad(expand(cache["mask"], 0), ((0, 0), (0, slots - p))),
        index=cache["index"],
        tokens=jnp.zeros((rows, width), jnp.int32),
        logp=jnp.zeros((rows, width), jnp.float32),
        logp_model=jnp.zeros((rows, width), jnp.float32),
        keys=keys,
        length=jnp.zeros((rows,), jnp.int32),
        done=jnp.arange(rows) >= live,
        step=jnp.zeros((), jnp.int32),
    )
    state = _constrain(state, mesh, cfg)
    token, logp, logp_model = _choose(expand(logits, 0), keys, 0, mode, knobs)
    return _constrain(_record(state, token, logp, logp_model, knobs["eos"]), mesh, cfg)


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "mesh"), donate_argnames=("state",))
def _decode(params, state, stop, knobs, *, cfg, mode, mesh):
    """Decode steps [state.step, stop) on device, stopping early once every row is done."""

    def cond(s):
        return (s.step < stop) & ~jnp.all(s.done)

    def body(s):
        prev = jax.lax.dynamic_slice_in_dim(s.tokens, s.step - 1, 1, axis=1)
        logits, cache = forward(params, cfg, prev, cache=s.cache)
        token, logp, logp_model = _choose(logits[:, 0], s.keys, s.step, mode, knobs)
        step = _record(s.with_cache(cache), token, logp, logp_model, knobs["eos"])
        return _constrain(step, mesh, cfg)

    return jax.lax.while_loop(cond, body, _constrain(state, mesh, cfg))


@functools.partial(jax.jit, static_argnames=("slots", "cfg", "mesh"))
def _reshape(state, take, pad, *, slots, cfg, mesh):
    """Rows `take` of the state (those where `pad` is set marked done), cache grown to `slots`.

    Compaction (fewer rows once many have finished) and cache growth (decode attends over a
    cache sized to the current longest position, not the whole generation budget).
    """
    if take is not None:
        state = jax.tree.map(lambda x: x if x.ndim == 0 else x[take], state)
        state = state.replace(done=state.done | pad)
    extra = slots - state.kv_mask.shape[1]
    grow = lambda x, axis: jnp.pad(x, [(0, extra if i == axis else 0) for i in range(x.ndim)])
    kv = lambda xs: tuple(grow(x, 2) for x in xs)  # [rows, kv_heads, slots, head_dim]
    state = state.replace(k=kv(state.k), v=kv(state.v), kv_mask=grow(state.kv_mask, 1))
    return _constrain(state, mesh, cfg)


# ----------------------------------------------------------------------------- host side
@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _unstack(params: Any, dtype: str, fuse: bool, transpose: bool, alpha: float) -> Any:
    if lora.has_adapters(params):  # each layer's adapters folded in as that layer is copied
        params = lora.merge(unstack_layers(params), alpha)
    params = unstack_layers(params, dtype)
    params = fuse_projections(params) if fuse else params
    return transpose_kernels(params) if transpose else params


def fuse_on(mesh: Mesh | None) -> bool:
    """Whether to fuse projections for this mesh: not when the tensor axis splits them (the
    fused output is split at q/k/v boundaries, not at the shards')."""
    return mesh is None or mesh.shape.get("tensor", 1) == 1


def decode_params(
    params: Any, cfg: ModelConfig, *, fuse: bool = True, transpose: bool | None = None
) -> Any:
    """The parameters as the decode loop reads them: one array per layer, in the compute dtype,
    LoRA adapters merged into their weights (W + (alpha / r) A B, redjax.lora.merge), with
    q/k/v and gate/up fused into one matmul each when `fuse`, kernels stored [out, in] when
    `transpose` (None: on CPU, where that layout streams faster; see `transpose_kernels`).

    `sample` makes this copy itself (once per call, not per step); call it once beforehand to
    share one copy across many `sample` calls with the same parameters (an evaluation).
    """
    dtype = jnp.dtype(cfg.dtype)
    same = all(x.dtype == dtype for x in jax.tree.leaves(params))
    if "layers" not in params and same and not lora.has_adapters(params):
        return params
    if transpose is None:
        transpose = jax.default_backend() == "cpu"
    return _unstack(params, dtype.name, fuse, transpose, cfg.lora_alpha)


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


@dataclasses.dataclass
class _Out:
    """Host copies of one pass's results, a row per rollout of the pass (`where` maps the
    device rows, which compaction reorders, to these rows; -1: padding)."""

    tokens: np.ndarray
    logp: np.ndarray
    logp_model: np.ndarray
    length: np.ndarray
    done: np.ndarray
    stop_len: np.ndarray  # tokens kept up to a stop string (-1: none)
    checked: np.ndarray  # searched for stop strings after the row ended: nothing more to find

    @classmethod
    def empty(cls, rows: int, width: int) -> _Out:
        z = lambda dtype: np.zeros((rows, width), dtype)
        return cls(z(np.int32), z(np.float32), z(np.float32), np.zeros(rows, np.int32),
                   np.zeros(rows, bool), np.full(rows, -1), np.zeros(rows, bool))  # fmt: skip

    def harvest(self, state: DecodeState, where: np.ndarray) -> None:
        """Copy the device rows that map to a result row."""
        keep = where >= 0
        for name in ("tokens", "logp", "logp_model", "length", "done"):
            getattr(self, name)[where[keep]] = to_host(getattr(state, name))[keep]


@dataclasses.dataclass(frozen=True)
class _Pass:
    """What every chunk of one pass needs besides the state."""

    params: Any
    cfg: ModelConfig
    mode: _Mode
    knobs: dict
    mesh: Mesh | None
    n: int  # max new tokens
    p_pad: int  # prompt slots
    n_pad: int  # generation slots (and width of the token buffers)
    live: int  # rows of this pass that are real rollouts (the rest pad to the data shards)
    stops: tuple[str, ...]
    tokenizer: Any

    def put(self, host: np.ndarray, *spec) -> jax.Array:
        return _put(host, self.mesh and NamedSharding(self.mesh, P(*spec)))


def _check_stops(out: _Out, tokenizer, stops: tuple[str, ...], final: bool) -> np.ndarray:
    """Rows whose text now contains a stop string and that had not stopped (bool per row)."""
    new = np.zeros(len(out.done), bool)
    for r in np.flatnonzero(~out.checked):
        cut = _stop_length(tokenizer, out.tokens[r, : out.length[r]], stops)
        out.stop_len[r] = -1 if cut is None else cut
        out.checked[r] = out.done[r] or cut is not None or final
        new[r] = cut is not None and not out.done[r]
    return new


def _compaction(done: np.ndarray, where: np.ndarray, shards: int):
    """(take, pad, where) that keep the running rows in a smaller bucket, or None."""
    live = np.flatnonzero(~done)
    rows = min(len(done), -(-bucket(max(len(live), 1), 8) // shards) * shards)
    if rows >= len(done):
        return None
    take = np.zeros(rows, np.int32)
    take[: len(live)] = live
    pad = np.arange(rows) >= len(live)
    return take, pad, np.where(pad, -1, where[take])


def _next_layout(state, out, where, done, step, ctx: _Pass):
    """The state for the next chunk of steps, its last step + 1, and the row map: running rows
    compacted when they fit a smaller bucket, the cache grown to the chunk's last position."""
    # Stop strings are looked for every STOP_CHUNK steps; otherwise chunks grow with the step
    # (a quarter of it), so that a long rollout costs few host round trips.
    chunk = STOP_CHUNK if ctx.stops else max(STOP_CHUNK, step // 4)
    stop = min(ctx.n, step + chunk) if ctx.stops or SEGMENTED or COMPACT else ctx.n
    full = ctx.p_pad + ctx.n_pad
    slots = min(bucket(ctx.p_pad + stop - 1), full) if SEGMENTED else full
    plan = _compaction(done, where, data_shards(ctx.mesh)) if COMPACT else None
    take = pad = None
    if plan is not None:
        out.harvest(state, where)  # the rows dropped here keep their results
        take, pad, where = plan
        take, pad = ctx.put(take), ctx.put(pad)
    if plan is not None or slots > state.kv_mask.shape[1]:
        state = _reshape(state, take, pad, slots=slots, cfg=ctx.cfg, mesh=ctx.mesh)
    return state, stop, where


def _decode_pass(state: DecodeState, ctx: _Pass) -> _Out:
    """Decode a prefilled pass to the end in chunks of steps (_next_layout); between chunks, end
    rows whose text hit a stop string, compact the running rows and grow the cache."""
    rows = state.done.shape[0]
    out = _Out.empty(ctx.live, ctx.n_pad)
    where = np.where(np.arange(rows) < ctx.live, np.arange(rows), -1)
    step = 1
    while True:
        done = to_host(state.done)
        if ctx.stops:
            out.harvest(state, where)
            new = _check_stops(out, ctx.tokenizer, ctx.stops, final=step >= ctx.n)
            hit = (where >= 0) & new[np.maximum(where, 0)]
            if hit.any():
                done = done | hit
                rows_axes = ctx.mesh and batch_axes(ctx.mesh)
                state = state.replace(done=ctx.put(done, rows_axes))
        if done.all() or step >= ctx.n:
            break
        state, stop, where = _next_layout(state, out, where, done, step, ctx)
        state = _decode(
            ctx.params, state, np.int32(stop), ctx.knobs, cfg=ctx.cfg, mode=ctx.mode, mesh=ctx.mesh
        )
        step = int(to_host(state.step))
    out.harvest(state, where)
    return out


def _sample_pass(ids, mask, row0: int, seed: int, group: int, ctx: _Pass) -> _Out:
    """Prefill and decode the prompts ids [b, p_pad] of one pass; rows row0 ... of the call."""
    b = len(ids)
    shards = data_shards(ctx.mesh)
    rows = -(-b * group // shards) * shards
    pick = np.minimum(np.arange(-(-b // shards) * shards), b - 1)  # pad with the last prompt
    slots = ctx.p_pad + ctx.n_pad
    if SEGMENTED:  # the cache of the first chunk only
        slots = min(bucket(ctx.p_pad + min(ctx.n, 1 + STOP_CHUNK) - 1), slots)
    state = _prefill(
        ctx.params,
        ctx.put(ids[pick], ctx.mesh and batch_axes(ctx.mesh), None),
        ctx.put(mask[pick], ctx.mesh and batch_axes(ctx.mesh), None),
        np.uint32(seed % 2**32),
        np.int32(row0),
        ctx.knobs,
        cfg=ctx.cfg,
        mode=ctx.mode,
        group=group,
        rows=rows,
        live=ctx.live,
        slots=slots,
        width=ctx.n_pad,
        mesh=ctx.mesh,
    )
    return _decode_pass(state, ctx)


def rows_per_pass(
    cfg: ModelConfig,
    rows: int,
    slots: int,
    free_bytes: int | None,
    *,
    prompt_len: int = 0,
    shards: int = 1,
    safety: float = 0.8,
) -> int:
    """Rollouts to sample at once so that one pass fits in `free_bytes` of each device (None:
    unknown, so all `rows`). `slots` = prompt + generation cache slots (bucketed), rows split
    over `shards` devices. Counts, per row: the KV cache twice (growing it copies), the token
    buffers, the float32 logits of a step, and one layer's prefill activations."""
    if free_bytes is None:
        return rows
    per_device = int(free_bytes * safety) // pass_row_bytes(cfg, slots, prompt_len)
    return max(1, min(rows, per_device * shards))


def prompts_per_pass(rows: int, group: int) -> int:
    """Prompts a pass takes when it may hold `rows` rollouts: whole prompts, at least one."""
    return max(1, rows // group)


def pass_row_bytes(cfg: ModelConfig, slots: int, prompt_len: int) -> int:
    """Device bytes one rollout row holds while sampling (see rows_per_pass); the prefill's
    attention scores count [prompt, prompt] only on the xla path (the fused and blockwise
    kernels never hold them)."""
    item = jnp.dtype(cfg.dtype).itemsize
    kv = 2 * cfg.num_layers * slots * cfg.num_kv_heads * cfg.head_dim * item
    buffers = 3 * 4 * (slots - prompt_len)
    logits = 4 * 4 * cfg.vocab_size  # logits, log-softmax, sampling distribution, sort
    d, f, h = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads
    impl = attention.resolve(cfg.attention, cfg.dtype, prompt_len, prompt_len)
    scores = 4 * h * prompt_len**2 if impl == "xla" else 4 * h * prompt_len
    prefill = prompt_len * (4 * d + 3 * f * item) + scores
    return 2 * kv + buffers + logits + prefill


def _free_bytes() -> int | None:
    """Device memory free on the first local device, the least over hosts (None on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "bytes_limit" not in stats:
        return None
    free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return -distributed.global_max(-free)


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
    sub_batch: int = 0,
) -> Rollouts:
    """G = num_samples completions of each left-padded prompt in [B, P] prompt_ids.

    Rows of the result are prompt-major: row b * G + g is sample g of prompt b. With a mesh,
    rows are split over its (data, fsdp) axes (padded to a multiple of the shards, dropped after).
    A tokenizer is needed for `text` and for `sp.stop_strings`. sub_batch: rollouts per pass
    (whole prompts, at least one), 0 = as many as the free device memory holds
    (`rows_per_pass`); the tokens do not depend on it.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if sub_batch < 0:
        raise ValueError(f"sub_batch must be >= 0 (0 = from device memory), got {sub_batch}")
    if sp.stop_strings and tokenizer is None:
        raise ValueError("SamplingParams.stop_strings needs a tokenizer to decode completions")
    bad = [i for i in sp.eos_ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise ValueError(f"eos_ids {bad} are outside the vocabulary [0, {cfg.vocab_size})")
    ids, mask = _check_prompts(prompt_ids, prompt_mask, cfg)
    b, p = ids.shape
    g, n = num_samples, sp.max_new_tokens
    p_pad, n_pad = bucket(p), bucket(n)
    ids, mask = np.pad(ids, ((0, 0), (p_pad - p, 0))), np.pad(mask, ((0, 0), (p_pad - p, 0)))
    mode, knobs = _split(sp, cfg.vocab_size)
    if mesh is not None:
        params = _on_mesh(params, mesh)
    params = decode_params(params, cfg, fuse=fuse_on(mesh))
    cfg = cfg.replace(param_dtype=cfg.dtype)
    if mesh is not None and mesh.size > 1:  # the Pallas kernel takes whole arrays: on a mesh
        cfg = cfg.replace(decode_attention="xla")  # it would gather every layer's cache
    if not sub_batch:
        free = _free_bytes()
        sub_batch = rows_per_pass(
            cfg, b * g, p_pad + n_pad, free, prompt_len=p_pad, shards=data_shards(mesh)
        )
    per = prompts_per_pass(sub_batch, g)
    outs = []
    for lo in range(0, b, per):
        live = min(per, b - lo) * g
        ctx = _Pass(params, cfg, mode, knobs, mesh, n, p_pad, n_pad, live, sp.stop_strings,
                    tokenizer)  # fmt: skip
        outs.append(_sample_pass(ids[lo : lo + per], mask[lo : lo + per], lo * g, seed, g, ctx))
    return _rollouts(outs, n, sp.stop_strings, tokenizer)


def _rollouts(outs: list[_Out], n: int, stops: tuple[str, ...], tokenizer) -> Rollouts:
    """The passes' host results as Rollouts, cut at stop strings and to the longest completion
    (a batch of short answers is as wide as its answers, not the budget)."""
    cat = lambda name: np.concatenate([getattr(o, name) for o in outs])
    lengths, done, cut = cat("length"), cat("done"), cat("stop_len")
    lengths = np.where(cut >= 0, np.minimum(lengths, cut), lengths).astype(np.int32)
    n = max(1, min(n, int(lengths.max(initial=0))))
    tokens, logp, logp_model = cat("tokens")[:, :n], cat("logp")[:, :n], cat("logp_model")[:, :n]
    keep = np.arange(n)[None, :] < lengths[:, None]
    text = None
    if tokenizer is not None:
        text = [
            _cut_text(tokenizer.decode(tokens[i, : lengths[i]], skip_special_tokens=True), stops)
            for i in range(len(tokens))
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
