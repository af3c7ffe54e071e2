"""redjax.objective against the float64 numpy reference in tests/reference.py."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

from redjax import objective as obj

AGGS = ["token-mean", "seq-mean-token-mean", "constant"]
EPS = dict(eps_low=0.2, eps_high=0.2)  # the clip range of these cases (rl_loss has no default)


def _np(x):
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


# ----------------------------------------------------------------------------- token stats
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_stats_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3 * rng.standard_normal((3, 5, 37)), dtype)
    targets = rng.integers(0, 37, (3, 5))
    logp, ent = obj.token_stats(logits, jnp.asarray(targets))
    assert logp.dtype == ent.dtype == jnp.float32
    want_logp, want_ent = ref.token_stats(_np(logits), targets)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-5)


def test_token_stats_masked_vocab_is_finite():
    logits = jnp.array([[0.0, 1.0, -jnp.inf, 2.0]])
    logp, ent = obj.token_stats(logits, jnp.array([1]))
    g = jax.jit(jax.grad(lambda z: obj.token_stats(z, jnp.array([1]))[1].sum()))(logits)
    want_logp, want_ent = ref.token_stats(np.array([[0.0, 1.0, 2.0]]), np.array([1]))
    np.testing.assert_allclose(logp, want_logp, rtol=1e-6)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-6)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
# B, T = 3, 5: chunk < B, one position per step, T padded (7 -> 2 per row), all at once.
@pytest.mark.parametrize("chunk", [2, 3, 7, 1024])
def test_token_stats_chunked_matches_numpy(dtype, chunk):
    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.standard_normal((3, 5, 8)), dtype)
    w = jnp.asarray(rng.standard_normal((8, 50)), dtype)
    y = rng.integers(0, 50, (3, 5))
    logp, ent = jax.jit(functools.partial(obj.token_stats_chunked, chunk=chunk))(
        h, w, jnp.asarray(y)
    )
    assert logp.shape == ent.shape == (3, 5) and logp.dtype == jnp.float32
    want_logp, want_ent = ref.token_stats(_np(h) @ _np(w), y)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ent, want_ent, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [3, 6])
def test_token_stats_chunked_gradients(chunk):
    rng = np.random.default_rng(2)
    h = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((8, 50)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 50, (3, 5)))
    c1 = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)
    c2 = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)

    def chunked(h, w):
        logp, ent = obj.token_stats_chunked(h, w, y, chunk=chunk)
        return jnp.sum(c1 * logp + c2 * ent)

    def full(h, w):
        logp, ent = obj.token_stats(h @ w, y)
        return jnp.sum(c1 * logp + c2 * ent)

    gh, gw = jax.jit(jax.grad(chunked, argnums=(0, 1)))(h, w)
    fh, fw = jax.jit(jax.grad(full, argnums=(0, 1)))(h, w)
    np.testing.assert_allclose(gh, fh, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, fw, rtol=1e-5, atol=1e-5)

    hn, wn = _np(h), _np(w)
    dz = ref.token_stats_grad(hn @ wn, np.asarray(y), _np(c1), _np(c2))  # [3, 5, 50]
    np.testing.assert_allclose(gh, dz @ wn.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, np.einsum("btd,btv->dv", hn, dz), rtol=1e-4, atol=1e-4)


def _all_shapes(jaxpr):
    """Shapes of every value in a jaxpr, including nested (scan, checkpoint, pjit) jaxprs."""
    shapes = [v.aval.shape for v in jaxpr.invars + jaxpr.outvars if hasattr(v, "aval")]
    for eqn in jaxpr.eqns:
        shapes += [v.aval.shape for v in eqn.outvars]
        for p in eqn.params.values():
            for sub in p if isinstance(p, list | tuple) else [p]:
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    shapes += _all_shapes(inner)
    return shapes


def test_token_stats_chunked_never_holds_full_logits():
    b, t, d, v, chunk = 4, 16, 8, 256, 16
    h = jnp.zeros((b, t, d), jnp.bfloat16)
    w = jnp.zeros((d, v), jnp.bfloat16)
    y = jnp.zeros((b, t), jnp.int32)

    def loss(h, w, fn):
        logp, ent = fn(h, w, y)
        return jnp.sum(logp) + jnp.sum(ent)

    chunked = functools.partial(obj.token_stats_chunked, chunk=chunk)
    unchunked = lambda h, w, y: obj.token_stats(h @ w, y)
    sizes = []
    for fn in (chunked, unchunked):
        jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, fn=fn), (0, 1)))(h, w).jaxpr
        sizes.append([int(np.prod(s)) for s in _all_shapes(jaxpr)])
    assert max(sizes[1]) >= b * t * v  # the check can see full logits when they exist
    assert max(sizes[0]) <= chunk * v < b * t * v


def test_token_stats_chunked_mixed_precision():
    """bf16 hidden, f32 unembed: bf16 matmul, but the unembed gradient sums over chunks in f32."""
    rng = np.random.default_rng(3)
    h = jnp.asarray(rng.standard_normal((2, 16, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((8, 40)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 40, (2, 16)))
    fn = lambda h, w: jnp.sum(obj.token_stats_chunked(h, w, y, chunk=4)[0])
    logp, _ = obj.token_stats_chunked(h, w, y, chunk=4)
    want, _ = ref.token_stats(_np(h) @ _np(w.astype(jnp.bfloat16)), np.asarray(y))
    np.testing.assert_allclose(logp, want, rtol=1e-4, atol=1e-4)
    jaxpr = jax.make_jaxpr(jax.grad(fn, (0, 1)))(h, w).jaxpr
    carries = [v.aval for e in jaxpr.eqns if e.primitive.name == "scan" for v in e.outvars]
    assert any(a.shape == (8, 40) and a.dtype == jnp.float32 for a in carries)
    assert not any(a.shape == (8, 40) and a.dtype == jnp.bfloat16 for a in carries)


# ----------------------------------------------------------------------------- Recall term
def _rl_inputs(seed, n=6, t=7, std_norm=True):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, (n // 2, 2)).astype(np.float64)
    adv, _, _ = ref.group_advantages(
        rewards, None, None, offline_in_group=False, std_norm=std_norm, eps=1e-6
    )
    adv = adv.reshape(-1) + 0.3 * rng.standard_normal(n)  # also exercises A of both signs
    lengths = rng.integers(1, t + 1, n)
    lengths[-1] = 0  # a padding / offline row
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    old = -np.abs(rng.standard_normal((n, t))) - 0.1
    logp = old + 0.3 * rng.standard_normal((n, t))
    logp[mask == 0] = 40.0  # garbage off the mask must not matter
    return dict(
        logp=logp,
        old_logp=old,
        adv=adv,
        mask=mask,
        ref_logp=old + 0.2 * rng.standard_normal((n, t)),
        entropy=np.abs(rng.standard_normal((n, t))) + 0.1,
    )


def _check_rl(x, atol=1e-5, **kw):
    """rl_loss value, grads w.r.t. logp and entropy, and summed metrics vs the reference."""
    kw = {**EPS, **kw}
    want, want_g, want_ge, want_m = ref.rl_loss(
        x["logp"],
        x["old_logp"],
        x["adv"],
        x["mask"],
        ref_logp=x["ref_logp"] if "beta_kl" in kw else None,
        entropy=x["entropy"],
        **kw,
    )
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}

    def f(logp, entropy):
        return obj.rl_loss(
            logp,
            j["old_logp"],
            j["adv"],
            j["mask"],
            ref_logp=j["ref_logp"] if "beta_kl" in kw else None,
            entropy=entropy,
            **kw,
        )

    (loss, m), (g, ge) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        j["logp"], j["entropy"]
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=atol)
    np.testing.assert_allclose(ge, want_ge, rtol=1e-5, atol=atol)
    for k, v in want_m.items():
        np.testing.assert_allclose(m[k], v, rtol=1e-5, atol=atol, err_msg=k)
    return loss, m


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("std_norm", [True, False])
def test_rl_loss_plain(agg, std_norm):
    x = _rl_inputs(3, std_norm=std_norm)
    nc = 20.0 if agg == "constant" else None
    _, m = _check_rl(x, agg=agg, norm_const=nc)
    assert 0 < m["clip_sum"] < m["n_tokens"]  # both branches of the clip are exercised


@pytest.mark.parametrize("agg", AGGS)
def test_rl_loss_kl_entropy_gate(agg):
    x = _rl_inputs(4)
    nc = 20.0 if agg == "constant" else None
    _, m = _check_rl(
        x,
        agg=agg,
        norm_const=nc,
        eps_low=0.1,
        eps_high=0.28,
        beta_kl=0.05,
        entropy_coef=0.01,
        gate_frac=0.2,
    )
    assert 0 < m["gate_sum"] < m["n_tokens"]


def test_rl_loss_gate_threshold_matches_numpy_quantile():
    x = _rl_inputs(5)
    got = obj.masked_quantile(jnp.asarray(x["entropy"]), jnp.asarray(x["mask"]), 0.8)
    want = np.quantile(x["entropy"][x["mask"] > 0], 0.8)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("reward", [0.0, 1.0, 0.5])  # all wrong, all right, zero std
def test_rl_loss_zero_advantage_groups(reward):
    x = _rl_inputs(6)
    rewards = np.full((3, 2), reward)
    adv, _, _ = ref.group_advantages(
        rewards, None, None, offline_in_group=False, std_norm=True, eps=1e-6
    )
    x["adv"] = adv.reshape(-1)
    loss, _ = _check_rl(x)
    assert loss == 0.0


def test_rl_loss_empty_mask_and_padding_rows():
    x = _rl_inputs(7)
    x["mask"][:] = 0.0
    x["logp"][:] = -np.inf
    loss, m = _check_rl(x, beta_kl=0.1, entropy_coef=0.1)
    assert loss == 0.0 and m["n_tokens"] == 0 and m["n_seqs"] == 0
    # Padding rows (mask 0, junk logp) give the same loss and gradient as dropping them.
    y = _rl_inputs(8)
    keep = y["mask"].sum(1) > 0
    y["logp"][~keep] = np.nan
    vg = jax.jit(
        jax.value_and_grad(
            lambda lp, d: obj.rl_loss(
                lp, d["old_logp"], d["adv"], d["mask"], agg="seq-mean-token-mean", **EPS
            )[0]
        )
    )
    f = lambda d: vg(jnp.asarray(d["logp"], jnp.float32), {k: jnp.asarray(v) for k, v in d.items()})
    l_all, g_all = f(y)
    l_kept, g_kept = f({k: v[keep] for k, v in y.items()})
    np.testing.assert_allclose(l_all, l_kept, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_all)[keep], g_kept, rtol=1e-6)
    assert np.all(np.asarray(g_all)[~keep] == 0)


def test_rl_loss_bad_options():
    x = {k: jnp.asarray(v) for k, v in _rl_inputs(9).items()}
    args = (x["logp"], x["old_logp"], x["adv"], x["mask"])
    with pytest.raises(ValueError, match="agg"):
        obj.rl_loss(*args, agg="mean", **EPS)
    with pytest.raises(ValueError, match="norm_const"):
        obj.rl_loss(*args, agg="constant", **EPS)
    with pytest.raises(ValueError, match="entropy"):
        obj.rl_loss(*args, gate_frac=0.2, **EPS)
    with pytest.raises(ValueError, match="ref_logp"):
        obj.rl_loss(*args, beta_kl=0.1, **EPS)


# ----------------------------------------------------------------------------- Extend term
def _ext_inputs(seed, n=5, t=6):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    lengths[0] = 0
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    logp = -np.abs(2 * rng.standard_normal((n, t)))
    logp[mask == 0] = 30.0
    return dict(logp=logp, adv_off=rng.standard_normal(n), shift=rng.uniform(0, 1, n), mask=mask)


def _ext(x, **kw):
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    f = lambda lp: obj.ext_loss(lp, j["adv_off"], j["shift"], j["mask"], **kw)
    (loss, m), g = jax.jit(jax.value_and_grad(f, has_aux=True))(j["logp"])
    return loss, g, m


EXT_AGGS = ["token-mean", "seq-mean-token-mean"]


@pytest.mark.parametrize("agg", EXT_AGGS)
@pytest.mark.parametrize("gamma", [None, 0.1])
def test_ext_loss_matches_numpy(gamma, agg):
    x = _ext_inputs(10)
    loss, g, m = _ext(x, gamma=gamma, agg=agg)
    want, want_g = ref.ext_loss(
        x["logp"], x["adv_off"], x["shift"], x["mask"], gamma=gamma, agg=agg
    )
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=1e-5, atol=1e-6)
    assert m["n_tokens"] == x["mask"].sum() and m["n_seqs"] == (x["mask"].sum(1) > 0).sum()
    np.testing.assert_allclose(m["logp_sum"], (x["logp"] * x["mask"]).sum(), rtol=1e-5)


def test_ext_loss_aggregations_by_hand():
    """Traces of 1, 3, 0 and 2 tokens. s = 0 (w = 1): token-mean is -sum_q A_q |o_q| / N_off,
    seq-mean-token-mean -sum_q A_q / Q; s = 1 (w = pi) on the first two rows as well."""
    mask = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 0]], np.float64)
    pi = np.array([[0.5, 1, 1], [0.25, 0.75, 0.5], [1, 1, 1], [0.2, 0.4, 1]])
    x = dict(logp=np.log(pi), adv_off=np.array([1.0, 2.0, 5.0, -1.0]), shift=np.zeros(4))
    x["mask"] = mask
    loss, g, _ = _ext(x, agg="token-mean")
    np.testing.assert_allclose(loss, -(1 * 1 + 2 * 3 - 1 * 2) / 6, rtol=1e-6)
    np.testing.assert_allclose(g, -x["adv_off"][:, None] * mask / 6, rtol=1e-6, atol=1e-8)
    loss, g, _ = _ext(x, agg="seq-mean-token-mean")
    np.testing.assert_allclose(loss, -(1 + 2 - 1) / 3, rtol=1e-6)
    per_token = np.array([1 / 1, 2 / 3, 0.0, -1 / 2])[:, None] / 3  # A_q / |o_q| / Q
    np.testing.assert_allclose(g, -per_token * mask, rtol=1e-6, atol=1e-8)
    x["shift"] = np.array([1.0, 1.0, 0.0, 0.0])
    loss, _, _ = _ext(x, agg="token-mean")
    np.testing.assert_allclose(loss, -(0.5 + 2 * (0.25 + 0.75 + 0.5) - 2) / 6, rtol=1e-6)
    loss, _, _ = _ext(x, agg="seq-mean-token-mean")
    np.testing.assert_allclose(loss, -(0.5 + 2 * 1.5 / 3 - 1) / 3, rtol=1e-6)


@pytest.mark.parametrize("agg", EXT_AGGS)
def test_ext_loss_micro_batches_with_global_counts(agg):
    """Four micro-batches of 2 traces each, called with the global N_off and Q, sum to the
    full batch (loss and gradient)."""
    x = _ext_inputs(16, n=8, t=7)
    n_tok, n_seq = x["mask"].sum(), float((x["mask"].sum(1) > 0).sum())
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    f = jax.jit(
        jax.value_and_grad(
            lambda lp, d, n, q: obj.ext_loss(
                lp, d["adv_off"], d["shift"], d["mask"], agg=agg, n_tokens=n, n_seqs=q
            )[0]
        )
    )
    full, g_full = f(j["logp"], j, None, None)
    parts = []
    for rows in np.split(np.arange(8), 4):
        parts.append(f(j["logp"][rows], {k: v[rows] for k, v in j.items()}, n_tok, n_seq))
    np.testing.assert_allclose(sum(v for v, _ in parts), full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate([g for _, g in parts]), g_full, rtol=1e-5, atol=1e-8)
    want, _ = ref.ext_loss(x["logp"], x["adv_off"], x["shift"], x["mask"], agg=agg)
    np.testing.assert_allclose(full, want, rtol=1e-5, atol=1e-6)


def test_ext_loss_shift_limits():
    x = _ext_inputs(11)
    n = x["mask"].sum()
    a = x["adv_off"][:, None] * x["mask"]
    pi = np.exp(x["logp"])
    # s = 0: advantage-weighted SFT, the gradient of -(1/n) sum A logp.
    x["shift"][:] = 0.0
    _, g, _ = _ext(x)
    np.testing.assert_allclose(g, -a / n, rtol=1e-5, atol=1e-7)
    sft = lambda lp: -jnp.sum(jnp.asarray(a, jnp.float32) * lp) / n
    np.testing.assert_allclose(g, jax.grad(sft)(jnp.asarray(x["logp"], jnp.float32)), rtol=1e-5)
    # s = 1: probability-weighted, the gradient of -(1/n) sum A pi.
    x["shift"][:] = 1.0
    _, g, _ = _ext(x)
    np.testing.assert_allclose(g, -a * pi / n, rtol=1e-5, atol=1e-7)
    # s = 1 with gamma: the gradient of -(1/n) sum A pi / (pi + gamma) (LUFFY shaping).
    _, g, _ = _ext(x, gamma=0.1)
    np.testing.assert_allclose(g, -a * pi * 0.1 / (pi + 0.1) ** 2 / n, rtol=1e-5, atol=1e-7)
    luffy = lambda lp: -jnp.sum(jnp.asarray(a, jnp.float32) * jnp.exp(lp) / (jnp.exp(lp) + 0.1)) / n
    lp32 = jnp.asarray(np.where(x["mask"] > 0, x["logp"], 0.0), jnp.float32)
    np.testing.assert_allclose(g, jax.grad(luffy)(lp32), rtol=1e-5, atol=1e-7)


def test_ext_loss_empty_trace_is_zero():
    x = _ext_inputs(12)
    x["mask"][:] = 0.0
    x["logp"][:] = -np.inf
    loss, g, m = _ext(x, gamma=0.1)
    assert loss == 0.0 and m["n_tokens"] == 0
    assert np.all(np.asarray(g) == 0)


def test_ext_loss_bad_gamma():
    x = {k: jnp.asarray(v) for k, v in _ext_inputs(13).items()}
    with pytest.raises(ValueError, match="gamma"):
        obj.ext_loss(x["logp"], x["adv_off"], x["shift"], x["mask"], gamma=0.0)
    with pytest.raises(ValueError, match="agg"):
        obj.ext_loss(x["logp"], x["adv_off"], x["shift"], x["mask"], agg="constant")


# ----------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("agg", AGGS)
def test_micro_batches_sum_to_full_batch(agg):
    x = _rl_inputs(14, n=8)
    xe = _ext_inputs(15, n=8, t=7)
    n_tok = x["mask"].sum()
    n_seq = float((x["mask"].sum(1) > 0).sum())
    n_off = xe["mask"].sum()
    kw = dict(agg=agg, norm_const=30.0 if agg == "constant" else None, beta_kl=0.05, **EPS)
    kw.update(entropy_coef=0.01)

    def total(lp, lp_off, d, e, n_tokens, n_seqs, n_off):
        rl, _ = obj.rl_loss(
            lp, d["old_logp"], d["adv"], d["mask"], ref_logp=d["ref_logp"],
            entropy=d["entropy"], n_tokens=n_tokens, n_seqs=n_seqs, **kw,
        )  # fmt: skip
        ext, _ = obj.ext_loss(lp_off, e["adv_off"], e["shift"], e["mask"], n_tokens=n_off)
        return rl + 0.7 * ext

    f = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))

    def vg(rows, *counts):
        d = {k: jnp.asarray(v[rows], jnp.float32) for k, v in x.items()}
        e = {k: jnp.asarray(v[rows], jnp.float32) for k, v in xe.items()}
        return f(d.pop("logp"), e.pop("logp"), d, e, *counts)

    full, (g_full, g_off_full) = vg(slice(None), None, None, None)
    acc, g_acc, g_off_acc = 0.0, [], []
    for rows in np.split(np.arange(8), 4):
        v, (g, g_off) = vg(rows, n_tok, n_seq, n_off)
        acc, g_acc, g_off_acc = acc + v, g_acc + [g], g_off_acc + [g_off]
    np.testing.assert_allclose(acc, full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(g_acc), g_full, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.concatenate(g_off_acc), g_off_full, rtol=1e-5, atol=1e-8)


def test_masked_mean():
    x = jnp.array([[1.0, 2.0, jnp.nan], [4.0, jnp.inf, 6.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(obj.masked_mean(x, mask), 7.0 / 3.0, rtol=1e-6)
    assert obj.masked_mean(x, jnp.zeros_like(mask)) == 0.0
