"""Every attention implementation against the reference (values and gradients), its memory
growth in T, the model / scorer / sampler on each implementation, and float32 precision."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redjax import sampler, sharding, step
from redjax.models import ModelConfig, attention, forward, init_params
from redjax.rows import make_rows

B, T, H, K, D = 3, 37, 4, 2, 16  # T not a multiple of any block size


def qkv(seed=0, t=T):
    ks = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(ks[0], (B, t, H, D)),
        jax.random.normal(ks[1], (B, t, K, D)),
        jax.random.normal(ks[2], (B, t, K, D)),
    )


def heads_major(x):
    """[B, S, K, D] keys or values as the KV cache stores them, [B, K, S, D]."""
    return x.transpose(0, 2, 1, 3)


def span_mask(t=T):
    """Row 0 full, row 1 left-padded (a prompt), row 2 left- and right-padded (a train row)."""
    start, end = np.array([0, 6, 4]), np.array([t, t, t - 9])
    return jnp.asarray((np.arange(t) >= start[:, None]) & (np.arange(t) < end[:, None]))


IMPLS = {
    "chunked": lambda q, k, v, m: attention.chunked(
        q, k, v, m, jnp.arange(T), block_q=8, block_kv=16
    ),
    "splash": lambda q, k, v, m: attention.splash(q, k, v, m),  # Pallas interpret mode on CPU
    "cudnn-layout": lambda q, k, v, m: attention.cudnn(q, k, v, m, kernel="xla"),
}


@pytest.mark.parametrize("name", list(IMPLS))
def test_matches_reference(name):
    """Valid queries' outputs and the gradients of a loss on them equal the XLA path (1e-5)."""
    q, k, v = qkv()
    mask = span_mask()
    w = jax.random.normal(jax.random.key(9), q.shape) * mask[:, :, None, None]
    ref = jax.jit(lambda q, k, v: attention.reference(q, k, v, mask, jnp.arange(T)))
    impl = jax.jit(lambda q, k, v: IMPLS[name](q, k, v, mask))
    loss = lambda f: lambda *a: jnp.sum(f(*a) * w)
    np.testing.assert_allclose(impl(q, k, v) * (w != 0), ref(q, k, v) * (w != 0), atol=1e-5)
    got = jax.jit(jax.grad(loss(impl), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(ref), argnums=(0, 1, 2)))(q, k, v)
    assert float(jnp.abs(want[1]).max()) > 0.1  # the gradients are not trivially zero
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def test_queries_at_a_cache_offset():
    """Queries at slots offset..offset+t of a longer cache: the blockwise kernel, and the decode
    step's `cached` over the heads-major cache [B, K, S, D], equal the reference."""
    q, k, v = qkv(1)
    mask = span_mask()
    slots = 20 + jnp.arange(5)
    want = jax.jit(lambda q: attention.reference(q, k, v, mask, slots))(q[:, :5])
    got = jax.jit(lambda q: attention.chunked(q, k, v, mask, slots, block_q=2, block_kv=8))
    np.testing.assert_allclose(got(q[:, :5]), want, atol=1e-5)
    got = jax.jit(
        lambda q: attention.cached(q, heads_major(k), heads_major(v), mask, jnp.int32(20))
    )
    np.testing.assert_allclose(got(q[:, :5]), want, atol=1e-5)
    one = jax.jit(
        lambda q: attention.cached(q, heads_major(k), heads_major(v), mask, jnp.int32(24))
    )
    np.testing.assert_allclose(one(q[:, 4:5]), want[:, 4:5], atol=1e-5)  # a decode step


def test_decode_kernel_matches_reference():
    """The Pallas decode kernel (interpret mode) equals the reference for one query over the
    heads-major cache: left-padded rows, a query mid-cache (blocks past it hold unwritten
    slots) and at the last slot, and a row whose first block is all padding."""
    s = 48  # three blocks of 16
    q, k, v = qkv(2, t=s)
    start = np.array([0, 6, 20])
    step = jax.jit(
        lambda q, m, at: attention.cached(q, heads_major(k), heads_major(v), m, at, kernel="pallas")
    )
    for at in (29, s - 1):
        mask = jnp.asarray((np.arange(s) >= start[:, None]) & (np.arange(s) <= at))
        with jax.default_matmul_precision("highest"):  # float32 on a GPU too (not TF32)
            want = attention.reference(q, k, v, mask, jnp.arange(s))[:, at : at + 1]
        got = step(q[:, at : at + 1], mask, jnp.int32(at))
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_decode_kernel_lowers_to_one_triton_kernel():
    """For an NVIDIA GPU the decode step's attention is one Triton kernel (lowered here,
    without a GPU), for float32 and bfloat16 caches; shapes it does not take stay on XLA."""
    q, k, v = qkv(3, t=32)
    mask = jnp.ones((B, 32), bool)
    for dtype in (jnp.float32, jnp.bfloat16):
        kernel = lambda q, k, v: attention.decode_kernel(q, k, v, mask, 31, interpret=False)
        args = (q[:, :1].astype(dtype), heads_major(k).astype(dtype), heads_major(v).astype(dtype))
        text = jax.jit(kernel).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("custom_call") == text.count("__gpu$xla.gpu.triton") == 1
    assert not attention.fits_decode_kernel((B, 2, H, 16), (B, K, 32, 16))  # two queries
    assert not attention.fits_decode_kernel((B, 1, H, 24), (B, K, 32, 24))  # head_dim 24
    assert not attention.fits_decode_kernel((B, 1, H, 16), (B, K, 24, 16))  # 24 slots


def temp_bytes(impl, t):
    q, k, v = (jax.ShapeDtypeStruct(x.shape, x.dtype) for x in qkv(t=t))
    mask = jnp.ones((B, t), bool)
    fn = lambda q, k, v: jnp.sum(impl(q, k, v, mask, jnp.arange(t)))
    grad = jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
    return grad.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes


def test_chunked_memory_grows_linearly():
    """Forward + backward temporaries (XLA's memory analysis) at T = 0.5k, 1k, 2k: linear in T
    for the blockwise kernel, quadratic for xla."""
    chunked = lambda *a: attention.chunked(*a, block_q=64, block_kv=64)
    mem = {
        name: [temp_bytes(f, t) for t in (512, 1024, 2048)]
        for name, f in (("chunked", chunked), ("xla", attention.reference))
    }
    # m(T) = a + b T + c T^2: the growth from 1k to 2k over that from 0.5k to 1k is 2 if c = 0
    # (linear; a is the fixed tile working set) and 4 when the T^2 term dominates.
    growth = {k: (m[2] - m[1]) / (m[1] - m[0]) for k, m in mem.items()}
    assert 1.8 < growth["chunked"] < 2.2, mem
    assert growth["xla"] > 3.8, mem
    assert mem["chunked"][-1] * 10 < mem["xla"][-1], mem


# ----------------------------------------------------------------------------- in the model
CFG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qk_norm=True,
    rope_theta=500.0,
)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, 0)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(attention, "BLOCK_Q", 8)
    monkeypatch.setattr(attention, "BLOCK_KV", 8)


@pytest.mark.parametrize("impl", ["chunked", "splash"])
def test_model_logits_match_xla(params, impl, small_blocks):
    """QK-norm, RoPE, GQA, left- and right-padded rows: logits of valid tokens equal xla's."""
    tokens = jax.random.randint(jax.random.key(3), (3, 21), 0, CFG.vocab_size)
    mask = span_mask(21)
    want = forward(params, CFG.replace(attention="xla"), tokens, mask=mask)[0]
    got = forward(params, CFG.replace(attention=impl), tokens, mask=mask)[0]
    np.testing.assert_allclose(got * mask[..., None], want * mask[..., None], atol=1e-5)


STEP_CFG = CFG.replace(qk_norm=False, vocab_size=96, num_layers=1)


def step_result(attention_impl, mesh):
    """(params, metrics) after one train step of host_rows() with `attention_impl` on `mesh`."""
    from tests.test_step import SC, host_rows, jitted_step  # noqa: PLC0415

    state, fn = jitted_step(STEP_CFG.replace(attention=attention_impl), SC, mesh)
    new, metrics = fn(state, sharding.put_local(host_rows(), mesh), jnp.float32(0.7))
    return jax.device_get((new["params"], metrics))


@pytest.fixture(scope="module")
def xla_step():
    return step_result("xla", sharding.make_mesh(devices=jax.devices()[:1]))


@pytest.mark.parametrize("impl", ["chunked", "splash"])
def test_step_on_mesh_matches_xla(impl, xla_step, small_blocks):
    """The train step on a (2, 2, 2) mesh with `impl` == one device with xla."""
    got = step_result(impl, sharding.make_mesh(2, 2, 2))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, xla_step)


@pytest.mark.parametrize(
    "change",
    [{"attention": "chunked"}, {"attention": "splash"}, {"decode_attention": "pallas"}],
    ids=["chunked", "splash", "pallas-decode"],
)
def test_sampler_matches_xla(params, change, small_blocks):
    """Greedy rollouts: a prefill with another kernel, or decode steps with the Pallas decode
    kernel (interpret mode), give the same tokens and log-probs as xla."""
    lens = np.array([11, 2, 9])
    mask = np.arange(11)[None] >= (11 - lens)[:, None]  # left padded
    ids = np.where(mask, np.arange(1, 12)[None] % CFG.vocab_size, 0).astype(np.int32)
    sp = sampler.SamplingParams(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=6)
    xla = CFG.replace(attention="xla")
    want, got = (
        sampler.sample(params, cfg, ids, mask, num_samples=2, sp=sp, seed=0)
        for cfg in (xla, xla.replace(**change))
    )
    np.testing.assert_array_equal(want.tokens, got.tokens)
    np.testing.assert_allclose(want.logp_model, got.logp_model, atol=1e-5)


# ----------------------------------------------------------------------------- precision
def score_rows(tokens):
    """Two rows of 6 prompt + 6 response tokens, for the scorer."""
    ones = np.ones((2, 6), bool)
    return make_rows(tokens[:, :6], ones, tokens[:, 6:], ones, [True, False], [0, 0], [0, 0])


def test_float32_lowers_every_dot_at_highest(params):
    """float32 compute is float32 on every backend: no dot of the forward, the scorer or their
    gradients is left at DEFAULT precision (TF32 on NVIDIA GPUs)."""
    tokens = jnp.zeros((2, 12), jnp.int32)
    fwd = jax.jit(lambda p: forward(p, CFG, tokens)[0]).lower(params).as_text()
    rows = score_rows(tokens)
    score = lambda p: jnp.sum(step.score(p, CFG, rows, chunk=4)[0])
    grad = jax.jit(jax.grad(score)).lower(params).as_text()
    for text in (fwd, grad):
        dots = [line for line in text.splitlines() if "dot_general" in line]
        assert len(dots) >= 8
        assert all(re.search(r"precision = \[HIGHEST, HIGHEST\]", d) for d in dots), dots[:3]


def test_bfloat16_logits_never_run_float32_gemms(params):
    """With bfloat16 compute, every matmul of the scorer's forward and backward over the
    vocabulary takes bfloat16 operands (float32 accumulation)."""
    cfg = CFG.replace(dtype="bfloat16")
    tokens = jnp.zeros((2, 12), jnp.int32)
    rows = score_rows(tokens)
    score = lambda p: jnp.sum(step.score(p, cfg, rows, chunk=4)[0])
    text = jax.jit(jax.grad(score)).lower(params).as_text()
    vocab = [d for d in text.splitlines() if "dot_general" in d and f"x{CFG.vocab_size}x" in d]
    assert len(vocab) >= 3, vocab
    for d in vocab:
        operands = re.search(r"\((tensor.*?)\) ->", d).group(1)
        assert "f32" not in operands, d


def test_cudnn_off_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        attention.check("cudnn", "bfloat16")
    with pytest.raises(ValueError, match="must be one of"):
        attention.check("flash", "float32")
    assert attention.resolve("auto", jnp.float32, 64, 64) == "xla"  # one block
    assert attention.resolve("auto", jnp.bfloat16, 4096, 4096) == "chunked"
    assert attention.resolve("splash", jnp.float32, 4096, 4096) == "splash"  # interpret mode
    q, k, v = qkv(t=16)
    with pytest.raises(ValueError, match="decode_attention must be one of"):
        attention.cached(
            q[:, :1], heads_major(k), heads_major(v), jnp.ones((B, 16), bool), 0, kernel="flash"
        )
