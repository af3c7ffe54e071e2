"""Causal attention behind one call, with the implementation chosen per backend.

    xla      jax.nn.dot_product_attention: materialises [T, S] scores (the reference).
    chunked  blockwise online-softmax attention in plain JAX with a flash-style backward:
             memory linear in T, any backend, any dtype.
    splash   Pallas Splash attention (TPU; Pallas interpret mode elsewhere, for tests).
    cudnn    cuDNN fused attention (NVIDIA GPU, bfloat16 / float16).
    auto     cudnn on NVIDIA GPUs, splash on TPUs, chunked elsewhere (xla when the whole
             [T, S] block is no larger than one chunk, where both are the same computation).

A decode step's attention over the KV cache is `cached`: XLA einsums, or with kernel="pallas" a
Pallas (Triton) kernel that reads only the cache blocks holding keys the query may see
(`decode_kernel`; NVIDIA GPUs, Pallas interpret mode elsewhere, for tests).

Layout: q [B, T, H, D], k and v [B, S, K, D] (grouped-query: H a multiple of K), `kv_mask`
[B, S] marks the valid keys; a KV cache is heads-major, [B, K, S, D] (`cached`). Each row's
valid tokens are one contiguous span (left and/or right padding, as the trainer's rows and the
sampler's prompts are); every kernel masks by that span and causality, never by a [T, S] mask
array. Padded queries give finite garbage that callers mask out.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Array = jax.Array
IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "chunked")
DECODE_KERNELS = ("xla", "pallas")  # ModelConfig.decode_attention: a decode step's `cached`
BLOCK_Q = 256  # chunked: query positions per block
BLOCK_KV = 512  # chunked: key positions per block
MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite, so a fully masked row stays finite


def resolve(impl: str, dtype, q_len: int, kv_len: int, backend: str | None = None) -> str:
    """The implementation `impl` runs as on `backend` (default: this one) for causal
    self-attention (the train step, the scorer, the prefill): fused kernels where they fit, else
    xla or chunked. A decode step's attention over the cache is `cached` on every backend. The
    planner asks it for the backend it plans for."""
    backend = backend or jax.default_backend()
    check(impl, dtype, backend)
    fits_cudnn = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if impl == "auto" and backend == "gpu" and fits_cudnn:
        return "cudnn"
    if impl == "auto" and backend == "tpu":
        return "splash"
    if impl in ("cudnn", "splash", "chunked"):
        return impl
    if impl == "xla" or q_len * kv_len <= BLOCK_Q * BLOCK_KV:
        return "xla"
    return "chunked"


def check(impl: str, dtype, backend: str | None = None) -> None:
    """A clear error for a setting `backend` (default: this one) cannot run (called before
    training starts)."""
    backend = backend or jax.default_backend()
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "cudnn" and backend != "gpu":
        raise ValueError(
            f"model.attention=cudnn needs an NVIDIA GPU, but JAX runs on {backend}: "
            "use model.attention=auto"
        )
    if impl == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError("model.attention=cudnn needs model.dtype=bfloat16 (cuDNN has no float32)")


def attend(
    q: Array, k: Array, v: Array, kv_mask: Array, *, impl: str = "auto", mesh: Mesh | None = None
) -> Array:
    """Causal self-attention [B, T, H, D]: q and k at the same slots 0..T-1."""
    kind = resolve(impl, q.dtype, q.shape[1], k.shape[1])
    q_slots = jnp.arange(q.shape[1])
    if kind == "xla":
        return reference(q, k, v, kv_mask, q_slots)
    if kind == "chunked":
        return chunked(q, k, v, kv_mask, q_slots)
    if kind == "cudnn":
        return cudnn(q, k, v, kv_mask)
    return splash(q, k, v, kv_mask, mesh=mesh)


def cached(
    q: Array, k: Array, v: Array, kv_mask: Array, q_offset: Array, *, kernel: str = "xla"
) -> Array:
    """Queries q [B, T, H, D] at slots q_offset .. q_offset + T - 1 over a KV cache stored
    heads-major, k and v [B, K, S, D] (a decode step, T = 1). Each (row, kv head)'s keys are one
    contiguous [S, D] block, so both matmuls read the cache in place: over a [B, S, K, D] cache
    XLA first transposes (copies) all of it, at every step. Scores in float32, masked as
    `reference` masks (causality and `kv_mask`). kernel="pallas": `decode_kernel` where it
    fits (one query, head_dim a power of two >= 16, slots a multiple of 16), else these einsums."""
    if kernel not in DECODE_KERNELS:
        raise ValueError(f"decode_attention must be one of {DECODE_KERNELS}, got {kernel!r}")
    if kernel == "pallas" and fits_decode_kernel(q.shape, k.shape):
        return decode_kernel(q, k, v, kv_mask, q_offset)
    b, t, h, d = q.shape
    kh, s = k.shape[1], k.shape[2]
    qg = q.reshape(b, t, kh, h // kh, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(1 / math.sqrt(d))
    causal = jnp.arange(s)[None, :] <= (q_offset + jnp.arange(t))[:, None]  # [T, S]
    scores = jnp.where(causal & kv_mask[:, None, None, None, :], scores, MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(b, t, h, d)


def matmul_precision(dtype) -> jax.lax.Precision | None:
    """HIGHEST for float32 (float32 means float32 on every backend, no TF32), else the default.
    The blockwise kernel passes it explicitly: its custom-VJP backward is traced outside any
    `transformer.precision` scope."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def reference(q: Array, k: Array, v: Array, kv_mask: Array, q_slots: Array) -> Array:
    """The XLA path: full [B, H, T, S] scores, masked by validity and causality (its matmul
    precision is the caller's: `transformer.precision`)."""
    causal = jnp.arange(k.shape[1])[None, :] <= q_slots[:, None]  # [T, S]
    mask = causal[None, None] & kv_mask[:, None, None, :]
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


# ----------------------------------------------------------------------------- chunked


def chunked(
    q: Array,
    k: Array,
    v: Array,
    kv_mask: Array,
    q_slots: Array,
    *,
    block_q: int | None = None,
    block_kv: int | None = None,
) -> Array:
    """Blockwise online-softmax attention: forward and backward hold one [block_q, block_kv]
    score tile per (row, head) at a time, so memory grows linearly in T, never [T, S]."""
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    bq, bk = min(block_q or BLOCK_Q, t), min(block_kv or BLOCK_KV, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
    # [B, K, G, T, D] queries grouped by their kv head; [B, K, S, D] keys and values.
    qg = pad(q, tp).reshape(b, tp, kv, h // kv, d).transpose(0, 2, 3, 1, 4)
    kg, vg = (pad(x, sp).transpose(0, 2, 1, 3) for x in (k, v))
    slots = jnp.pad(q_slots, (0, tp - t), constant_values=-1)
    valid = pad(kv_mask, sp)
    out = _flash(qg, kg, vg, valid, slots, (bq, bk))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, tp, h, d)[:, :t]


def _scores(qb, kb, valid_b, slots_b, k0, prec):
    """Scaled, masked scores [B, K, G, bq, bk] in float32 of one (query, key) tile."""
    sc = jnp.einsum("bkgqd,bksd->bkgqs", qb, kb, preferred_element_type=jnp.float32, precision=prec)
    sc = sc * (1.0 / math.sqrt(qb.shape[-1]))
    causal = (k0 + jnp.arange(kb.shape[2]))[None, :] <= slots_b[:, None]  # [bq, bk]
    keep = causal[None, None, None] & valid_b[:, None, None, None, :]
    return jnp.where(keep, sc, MASKED)


def _tiles(x, n, axis):
    """Split `axis` into blocks of n and move the block index to the front."""
    shape = x.shape[:axis] + (x.shape[axis] // n, n) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _untile(x, axis):
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])


def _forward(q, k, v, valid, slots, blocks):
    """Output and log-sum-exp [B, K, G, T] of the online softmax, one query block at a time."""
    bq, bk = blocks
    prec = matmul_precision(q.dtype)
    kt, vt, validt = _tiles(k, bk, 2), _tiles(v, bk, 2), _tiles(valid, bk, 1)

    def q_block(xs):
        qb, slots_b = xs

        def kv_block(carry, ys):
            acc, m, den = carry
            kb, vb, valid_b, k0 = ys
            sc = _scores(qb, kb, valid_b, slots_b, k0, prec)
            m_new = jnp.maximum(m, sc.max(-1))
            p = jnp.exp(sc - m_new[..., None])
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "bkgqs,bksd->bkgqd",
                p.astype(vb.dtype),
                vb,
                preferred_element_type=jnp.float32,
                precision=prec,
            )
            return (acc * corr[..., None] + pv, m_new, den * corr + p.sum(-1)), None

        shape = qb.shape[:-1]
        init = (jnp.zeros(qb.shape, jnp.float32), jnp.full(shape, -jnp.inf), jnp.zeros(shape))
        starts = jnp.arange(kt.shape[0]) * bk
        (acc, m, den), _ = jax.lax.scan(kv_block, init, (kt, vt, validt, starts))
        return (acc / den[..., None]).astype(q.dtype), m + jnp.log(den)

    out, lse = jax.lax.map(q_block, (_tiles(q, bq, 3), _tiles(slots, bq, 0)))
    return _untile(out, 3), _untile(lse, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _flash(q, k, v, valid, slots, blocks):
    return _forward(q, k, v, valid, slots, blocks)[0]


def _flash_fwd(q, k, v, valid, slots, blocks):
    out, lse = _forward(q, k, v, valid, slots, blocks)
    return out, (q, k, v, valid, slots, out, lse)


def _flash_bwd(blocks, res, d_out):
    """Flash-attention backward: per key block, recompute each query block's probabilities
    from the saved log-sum-exp; dq is carried, dk and dv come out one key block at a time."""
    q, k, v, valid, slots, out, lse = res
    bq, bk = blocks
    prec = matmul_precision(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1])
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), -1)  # [B, K, G, T]
    qt, dot, slotst = _tiles(q, bq, 3), _tiles(d_out, bq, 3), _tiles(slots, bq, 0)
    lset, deltat = _tiles(lse, bq, 3), _tiles(delta, bq, 3)
    mm = functools.partial(jnp.einsum, preferred_element_type=jnp.float32, precision=prec)

    def kv_block(dq, ys):
        kb, vb, valid_b, k0 = ys

        def q_block(carry, xs):
            dk, dv = carry
            qb, do_b, slots_b, lse_b, delta_b = xs
            p = jnp.exp(_scores(qb, kb, valid_b, slots_b, k0, prec) - lse_b[..., None])
            dv = dv + mm("bkgqs,bkgqd->bksd", p.astype(do_b.dtype), do_b)
            dp = mm("bkgqd,bksd->bkgqs", do_b, vb)
            ds = (p * (dp - delta_b[..., None]) * scale).astype(qb.dtype)
            dk = dk + mm("bkgqs,bkgqd->bksd", ds, qb)
            return (dk, dv), mm("bkgqs,bksd->bkgqd", ds, kb)

        zeros = jnp.zeros(kb.shape, jnp.float32)
        (dk, dv), dq_blocks = jax.lax.scan(q_block, (zeros, zeros), (qt, dot, slotst, lset, deltat))
        return dq + dq_blocks, (dk, dv)

    kt, vt, validt = _tiles(k, bk, 2), _tiles(v, bk, 2), _tiles(valid, bk, 1)
    starts = jnp.arange(kt.shape[0]) * bk
    dq0 = jnp.zeros(qt.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(kv_block, dq0, (kt, vt, validt, starts))
    grads = (_untile(dq, 3).astype(q.dtype), _untile(dk, 2).astype(k.dtype))
    return (*grads, _untile(dv, 2).astype(v.dtype), None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


# ----------------------------------------------------------------------------- fused kernels


def cudnn(q: Array, k: Array, v: Array, kv_mask: Array, *, kernel: str = "cudnn") -> Array:
    """cuDNN fused attention. cuDNN masks by per-row lengths of right-padded rows, so each row
    is rolled left by its padding, attended with is_causal and lengths, and rolled back.
    `kernel="xla"` runs the same conversion on the XLA kernel (tests, on CPU)."""
    t = q.shape[1]
    start = jnp.argmax(kv_mask, axis=1)  # first valid slot of each row
    length = jnp.maximum(jnp.sum(kv_mask, axis=1), 1).astype(jnp.int32)
    take = lambda x, idx: jnp.take_along_axis(x, idx[:, :, None, None], axis=1)
    left = (jnp.arange(t)[None, :] + start[:, None]) % t
    out = jax.nn.dot_product_attention(
        take(q, left),
        take(k, left),
        take(v, left),
        is_causal=True,
        query_seq_lengths=length,
        key_value_seq_lengths=length,
        implementation=kernel,
    )
    return take(out, (jnp.arange(t)[None, :] - start[:, None]) % t)


SPLASH_BLOCK = 128  # Splash tiles: the sequence is padded to a multiple of this


def _splash_kernel(heads: int, length: int, interpret: bool):
    """A Splash kernel for causal self-attention over `length` slots. Built in each trace, not
    cached: its mask tables made under one trace (a lifted scan's) leak into the next."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    block = max(b for b in (512, 256, 128) if length % b == 0)
    sizes = sk.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
    return sk.make_splash_mha(
        mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
    )


def splash(q: Array, k: Array, v: Array, kv_mask: Array, *, mesh: Mesh | None = None) -> Array:
    """Pallas Splash attention: causal mask plus segment ids (valid tokens 1, padding 0), so
    valid tokens attend to valid tokens only. Runs per device under a mesh (shard_map over
    the rows' axes); off TPU it runs in Pallas's interpret mode."""
    t = q.shape[1]
    tp = -(-t // SPLASH_BLOCK) * SPLASH_BLOCK
    pad = lambda x: jnp.pad(x, [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2))
    seg = pad(kv_mask).astype(jnp.int32)
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    qh, kh, vh = (pad(x).transpose(0, 2, 1, 3) for x in (q, k, v))  # [B, heads, T, D]
    interpret = jax.default_backend() != "tpu"

    def local(qh, kh, vh, seg):
        from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

        kernel = _splash_kernel(qh.shape[1], tp, interpret)
        ids = sk.SegmentIds(q=seg, kv=seg)
        return jax.vmap(kernel)(qh, kh, vh, segment_ids=ids)

    if mesh is not None and mesh.size > 1:
        from redjax import sharding

        rows = P(sharding.batch_axes(mesh))
        local = jax.shard_map(
            local, mesh=mesh, in_specs=(rows, rows, rows, rows), out_specs=rows, check_vma=False
        )
    out = local(qh, kh, vh, seg)
    return out.transpose(0, 2, 1, 3)[:, :t]


def fits_decode_kernel(q_shape: tuple, cache_shape: tuple) -> bool:
    """Whether `decode_kernel` takes these shapes (its Triton blocks are powers of two)."""
    t, d, s = q_shape[1], q_shape[3], cache_shape[2]
    return t == 1 and d >= 16 and d & (d - 1) == 0 and s % 16 == 0


def decode_kernel(
    q: Array, k: Array, v: Array, kv_mask: Array, q_offset: Array, *, interpret: bool | None = None
) -> Array:
    """A decode step's attention as one Pallas (Triton) kernel over the heads-major cache: a
    program per (row, kv head, block of slots) scores the block's keys against the kv head's
    G query heads; a block without a key the query may see (padding, unwritten slots) loads
    nothing. The blocks' softmax partials (max, sum, weighted values) combine in float32, as
    in split-K flash decoding. NVIDIA GPUs; Pallas interpret mode elsewhere (interpret=None)."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    b, _, h, d = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = h // kh
    gp = max(16, pl.next_power_of_2(g))  # query rows per program: Triton dots take >= 16
    block = max(x for x in (256, 128, 64, 32, 16) if s % x == 0)
    n = s // block
    qg = jnp.pad(q.reshape(b, kh, g, d), ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    keep = (kv_mask & (jnp.arange(s) <= q_offset)[None]).astype(jnp.int32)  # [B, S]
    part = lambda *shape: jax.ShapeDtypeStruct((b, kh, n, *shape), jnp.float32)
    spec = lambda *shape: pl.BlockSpec(
        (None, None, None, *shape), lambda i, j, c: (i, j, c) + (0,) * len(shape)
    )
    o, m, total = pl.pallas_call(
        functools.partial(_decode_block, scale=1 / math.sqrt(d)),
        grid=(b, kh, n),
        in_specs=[
            pl.BlockSpec((None, block), lambda i, j, c: (i, c)),
            pl.BlockSpec((None, None, gp, d), lambda i, j, c: (i, j, 0, 0)),
            pl.BlockSpec((None, None, block, d), lambda i, j, c: (i, j, c, 0)),
            pl.BlockSpec((None, None, block, d), lambda i, j, c: (i, j, c, 0)),
        ],
        out_specs=[spec(gp, d), spec(gp), spec(gp)],
        out_shape=[part(gp, d), part(gp), part(gp)],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=jax.default_backend() != "gpu" if interpret is None else interpret,
        name="decode_attention",
    )(keep, qg, k, v)
    weight = jnp.exp(m - jnp.max(m, axis=2, keepdims=True))  # [B, K, n, gp]
    den = jnp.maximum(jnp.sum(weight * total, axis=2), jnp.finfo(jnp.float32).tiny)
    out = jnp.sum(weight[..., None] * o, axis=2) / den[..., None]  # a row with no key: 0
    return out[:, :, :g].reshape(b, 1, h, d).astype(q.dtype)


def _decode_block(keep_ref, q_ref, k_ref, v_ref, o_ref, m_ref, total_ref, *, scale):
    """One (row, kv head, block): q [gp, D] against k, v [block, D] where keep [block] is set;
    out: unnormalised values [gp, D], score max [gp], exp-sum [gp] (max MASKED, rest 0, when no
    key is kept)."""
    keep = keep_ref[...]
    dims = lambda a, b: (((a,), (b,)), ((), ()))
    dot = functools.partial(
        jax.lax.dot_general,
        precision=matmul_precision(q_ref.dtype),
        preferred_element_type=jnp.float32,
    )

    def scores():
        s = dot(q_ref[...], k_ref[...], dims(1, 1))
        s = jnp.where(keep[None, :] != 0, s * scale, MASKED)
        m = jnp.max(s, axis=1)
        p = jnp.exp(s - m[:, None])
        v = v_ref[...]
        o = dot(p.astype(v.dtype), v, dims(1, 0))
        return o, m, jnp.sum(p, axis=1)

    def nothing():
        rows = q_ref.shape[0]
        return (jnp.zeros(q_ref.shape, jnp.float32), jnp.full((rows,), MASKED, jnp.float32),
                jnp.zeros((rows,), jnp.float32))  # fmt: skip

    o, m, total = jax.lax.cond(jnp.max(keep) > 0, scores, nothing)
    o_ref[...], m_ref[...], total_ref[...] = o, m, total
