"""The RED objective: token log-probs/entropies, the Recall (GRPO) and Extend (shifted SFT) terms.

All functions are pure jax.numpy and jit-able. String and float options (`agg`, `eps_*`,
`gate_frac`, `gamma`) are static Python values; arrays may be traced. Every reduction over
tokens takes the normaliser as an optional argument so that a batch split into micro-batches,
each called with the GLOBAL counts, sums exactly to the full-batch loss and gradient.

Metrics are returned as float32 scalars of two kinds:
  * `*_sum` and `n_*`: sums over this call's masked tokens / rows and the matching counts;
    add them over micro-batches, then divide (e.g. clip fraction = sum(clip_sum) / sum(n_tokens)).
  * loss terms (`pg`, `kl_ref`, `entropy_bonus`, `ext`): already divided by the normaliser in
    effect, so they add up over micro-batches exactly like the loss when global counts are passed.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-mean", "constant")
RATIO_MODES = ("token", "sequence")  # rl_loss: the rl section's ratio
EXT_AGG_MODES = ("token-mean", "seq-mean-token-mean")  # ext_loss: the red section's ext_agg


def _safe(n: jax.Array) -> jax.Array:
    """Denominator that is 1 where n == 0, so empty sums give 0 (and a finite gradient)."""
    n = jnp.asarray(n, jnp.float32)
    return jnp.where(n > 0, n, 1.0)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask > 0 (0.0 when the mask is empty); x may be non-finite off the mask."""
    mask = jnp.asarray(mask, jnp.float32)
    total = jnp.sum(jnp.where(mask > 0, x.astype(jnp.float32) * mask, 0.0))
    return total / _safe(jnp.sum(mask))


def masked_quantile(x: jax.Array, mask: jax.Array, q: float) -> jax.Array:
    """q-quantile (numpy 'linear' method) of x over mask > 0; NaN when the mask is empty."""
    vals = jnp.where(mask > 0, x.astype(jnp.float32), jnp.nan)
    return jnp.nanquantile(vals.reshape(-1), q)


def token_stats(
    logits: jax.Array, targets: jax.Array, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Float32 log-prob of each target token and entropy of the full next-token distribution
    at `temperature` (static; the sampler's, so the scored policy is the sampled one).

    logits [..., V] (any float dtype), targets [...] int. Targets outside [0, V) are clipped
    (padding ids give finite values; mask them downstream).
    """
    logits = logits.astype(jnp.float32)
    if temperature != 1.0:
        logits = logits / temperature
    logq = jax.nn.log_softmax(logits, axis=-1)
    idx = targets.astype(jnp.int32)[..., None]
    logp = jnp.take_along_axis(logq, idx, axis=-1, mode="clip")[..., 0]
    p = jnp.exp(logq)
    # -inf logits (masked vocabulary) have p = 0: use 0 * 0, not 0 * -inf.
    entropy = -jnp.sum(p * jnp.where(p > 0, logq, 0.0), axis=-1)
    return logp, entropy


def token_stats_chunked(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    *,
    chunk: int = 1024,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """token_stats(hidden @ unembed, targets, temperature) without ever holding a [B*T, V]
    float32 array.

    hidden [B, T, D], unembed [D, V], targets [B, T]. The B*T tokens are cut into chunks of
    B rows x max(1, chunk // B) positions (T padded to a multiple), mapped over with `lax.map`;
    the per-chunk function is rematerialised (`jax.checkpoint`), so forward and backward hold
    only [chunk, V] float32 logits at a time (at least one position per row: [B, V] if
    chunk < B). The matmul runs in hidden's dtype (unembed is cast per chunk) with float32
    accumulation; pass unembed in its parameter dtype so its gradient sums in that dtype.
    """
    if hidden.ndim != 3 or unembed.ndim != 2 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"token_stats_chunked: expected hidden [B, T, D], unembed [D, V], targets [B, T]; "
            f"got {hidden.shape}, {unembed.shape}, {targets.shape}"
        )
    if hidden.shape[-1] != unembed.shape[0]:
        raise ValueError(f"hidden dim {hidden.shape[-1]} != unembed rows {unembed.shape[0]}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    b, t, d = hidden.shape
    # Each step takes `per_row` consecutive positions of every row: the batch axis stays the
    # leading (sharded) axis of the chunk, so under data parallelism each device computes its
    # own rows of every chunk and the tokens never move between devices.
    per_row = min(max(chunk // b, 1), t)
    n_chunks = -(-t // per_row)
    pad = n_chunks * per_row - t
    h, y = hidden, targets
    if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        y = jnp.pad(y, ((0, 0), (0, pad)))
    h = h.reshape(b, n_chunks, per_row, d).swapaxes(0, 1)
    y = y.reshape(b, n_chunks, per_row).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def stats(w, h_c, y_c):
        # float32 compute: autodiff's own matmuls (their precision is the caller's scope,
        # transformer.precision); 16-bit compute: logits_f32 keeps the gradient GEMMs 16-bit.
        if h_c.dtype == jnp.float32:
            return token_stats(jnp.matmul(h_c, w), y_c, temperature)
        return token_stats(logits_f32(h_c, w), y_c, temperature)

    logp, entropy = jax.lax.map(lambda xs: stats(unembed, *xs), (h, y))
    logp = logp.swapaxes(0, 1).reshape(b, -1)[:, :t]
    entropy = entropy.swapaxes(0, 1).reshape(b, -1)[:, :t]
    return logp, entropy


@jax.custom_vjp
def logits_f32(h: jax.Array, w: jax.Array) -> jax.Array:
    """h @ w as float32 logits for h in a 16-bit dtype, from matmuls in h's dtype with float32
    accumulation, forward and backward: the logits' float32 cotangent is cast to h's dtype
    before the two gradient matmuls, so no float32 x float32 GEMM over the vocabulary runs. The
    gradient of w comes back in w's own dtype (float32 master weights sum it there)."""
    return jnp.matmul(h, w.astype(h.dtype), preferred_element_type=jnp.float32)


def _logits_fwd(h, w):
    return logits_f32(h, w), (h, w)


def _logits_bwd(res, g):
    h, w = res
    g = g.astype(h.dtype)
    dh = jnp.matmul(g, w.astype(h.dtype).T, preferred_element_type=jnp.float32)
    dw = jnp.einsum("...d,...v->dv", h, g, preferred_element_type=jnp.float32)
    return dh.astype(h.dtype), dw.astype(w.dtype)


logits_f32.defvjp(_logits_fwd, _logits_bwd)


def _aggregate(x, mask, agg, *, n_tokens=None, n_seqs=None, norm_const=None):
    """Reduce per-token x [N, T] over mask to a scalar with the chosen normaliser."""
    xm = jnp.where(mask > 0, x * mask, 0.0)
    if agg == "token-mean":
        n = jnp.sum(mask) if n_tokens is None else n_tokens
        return jnp.sum(xm) / _safe(n)
    if agg == "seq-mean-token-mean":
        lens = jnp.sum(mask, axis=-1)
        per_seq = jnp.sum(xm, axis=-1) / _safe(lens)
        n = jnp.sum(lens > 0) if n_seqs is None else n_seqs
        return jnp.sum(per_seq) / _safe(n)
    return jnp.sum(xm) / jnp.asarray(norm_const, jnp.float32)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _check_rl_options(agg, norm_const, gate_frac, gated, entropy, entropy_coef, ref_logp, beta_kl):
    """ValueError naming the first inconsistent option of rl_loss."""
    if agg not in AGG_MODES:
        raise ValueError(f"rl_loss: agg must be one of {AGG_MODES}, got {agg!r}")
    if agg == "constant" and norm_const is None:
        raise ValueError("rl_loss: agg='constant' requires norm_const")
    if not 0.0 < gate_frac <= 1.0:
        raise ValueError(f"rl_loss: gate_frac must be in (0, 1], got {gate_frac}")
    if entropy is None and (gated or (isinstance(entropy_coef, float | int) and entropy_coef)):
        raise ValueError("rl_loss: entropy is required when gate_frac < 1 or entropy_coef != 0")
    if ref_logp is None and isinstance(beta_kl, float | int) and beta_kl:
        raise ValueError("rl_loss: beta_kl != 0 requires ref_logp")


def _kept(gate, entropy, mask, gate_frac, threshold) -> jax.Array:
    """The online tokens the entropy gate keeps: `gate` if given, else those whose entropy is
    at least `threshold` (default: the (1 - gate_frac)-quantile over this call's tokens)."""
    on = mask > 0
    if gate is not None:
        return jnp.asarray(gate, bool) & on
    ent = jax.lax.stop_gradient(_f32(entropy))
    if threshold is None:
        threshold = masked_quantile(ent, mask, 1.0 - gate_frac)
    return (ent >= threshold) & on


def _importance_ratio(logp, diff, mask, ratio) -> jax.Array:
    """The ratio each token's surrogate uses [N, T]: exp(diff) per token, or GSPO's per row,
    s_i = exp(mean of diff over the row's mask) in value with the gradient of a token ratio
    (s_i,t = sg[s_i] pi(t) / sg[pi(t)], so d s_i,t / d logp(t) = s_i)."""
    if ratio not in RATIO_MODES:
        raise ValueError(f"rl_loss: ratio must be one of {RATIO_MODES}, got {ratio!r}")
    if ratio == "token":
        return jnp.exp(diff)
    log_s = jnp.sum(diff * mask, axis=-1, keepdims=True) / _safe(jnp.sum(mask, -1, keepdims=True))
    lp = jnp.where(mask > 0, logp, 0.0)
    return jnp.exp(jax.lax.stop_gradient(log_s) + lp - jax.lax.stop_gradient(lp))


def _pg_tokens(rho, adv, on, eps_low, eps_high, dual_clip) -> tuple[jax.Array, dict]:
    """Per-token policy-gradient loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A); with
    dual_clip c, capped at -c A where A < 0 (dual-clip PPO: no gradient past rho > c)."""
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"rl_loss: dual_clip must be > 1 (or None), got {dual_clip}")
    pg_tok = -jnp.minimum(rho * adv, jnp.clip(rho, 1.0 - eps_low, 1.0 + eps_high) * adv)
    if dual_clip is None:
        return pg_tok, {}
    bound = -dual_clip * adv  # c |A| where A < 0
    dual = (adv < 0) & (pg_tok > bound) & on
    pg_tok = jnp.where(adv < 0, jnp.minimum(pg_tok, bound), pg_tok)
    return pg_tok, {"dual_clip_sum": jnp.sum(dual.astype(jnp.float32))}


def _regularisers(logp, ref_logp, entropy, on, aggregate) -> dict[str, jax.Array]:
    """The k3 KL to the reference and the entropy terms of rl_loss (normalised and summed),
    where their inputs are given."""
    out = {}
    if ref_logp is not None:
        r = jnp.where(on, _f32(ref_logp) - logp, 0.0)
        k3 = jnp.exp(r) - r - 1.0
        out.update(kl_ref=aggregate(k3), kl_ref_sum=jnp.sum(jnp.where(on, k3, 0.0)))
    if entropy is not None:
        ent = jnp.where(on, _f32(entropy), 0.0)
        out.update(entropy_bonus=aggregate(ent), entropy_sum=jnp.sum(ent))
    return out


def _ratio_metrics(diff, rho, adv, mask, eps_low, eps_high) -> dict[str, jax.Array]:
    """Token and row counts, clipped tokens (of the ratio in use), k3 KL(pi || pi_old) from the
    token log-ratios, and ratio sums of rl_loss."""
    on = mask > 0
    clipped = on & (((adv > 0) & (rho > 1.0 + eps_high)) | ((adv < 0) & (rho < 1.0 - eps_low)))
    k3_old = jnp.exp(-diff) + diff - 1.0  # r = old - new: exp(r) - r - 1
    return dict(
        n_tokens=jnp.sum(mask),
        n_seqs=jnp.sum(jnp.any(on, axis=-1).astype(jnp.float32)),
        clip_sum=jnp.sum(clipped.astype(jnp.float32)),
        kl_old_sum=jnp.sum(jnp.where(on, k3_old, 0.0)),
        ratio_sum=jnp.sum(jnp.where(on, rho, 0.0)),
    )


def rl_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    adv: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float,
    eps_high: float,
    agg: str = "token-mean",
    norm_const: float | None = None,
    n_tokens: jax.Array | float | None = None,
    n_seqs: jax.Array | float | None = None,
    ref_logp: jax.Array | None = None,
    beta_kl: float = 0.0,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    gate_frac: float = 1.0,
    gate_threshold: jax.Array | float | None = None,
    gate: jax.Array | None = None,
    ratio: str = "token",
    dual_clip: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Recall term: clipped-ratio GRPO loss on online tokens, plus optional k3 KL and entropy bonus.

    logp, old_logp, mask [N, T] (mask 1.0 on online completion tokens, 0 elsewhere, including
    offline rows); adv [N] per-sequence advantage (or [N, T]).
      loss = agg(-gate * min(rho A, clip(rho, 1-eps_low, 1+eps_high) A))
             + beta_kl * agg(exp(ref-logp) - (ref-logp) - 1) - entropy_coef * agg(entropy)
    agg: "token-mean" (sum / n_tokens, default mask.sum()), "seq-mean-token-mean" (sum of
    per-row token means / n_seqs, default rows with any mask) or "constant" (sum / norm_const,
    Dr.GRPO). Pass the global n_tokens / n_seqs when accumulating micro-batches.

    ratio: "token", rho = exp(logp - old_logp), or "sequence" (GSPO's token form, composing
    with `agg`; a row lies whole in one micro-batch, so exact under accumulation; see
    `_importance_ratio`). dual_clip c > 1 caps the term at c |A| where A < 0 (`_pg_tokens`).

    Token gate (80/20 rule): gate_frac < 1 keeps, in the policy-gradient term only, the tokens
    whose stop-gradient entropy is >= the (1 - gate_frac)-quantile of entropy over this call's
    masked tokens (or >= `gate_threshold` if given, e.g. a global threshold from
    `masked_quantile`), or the kept tokens `gate` (bool [N, T], picked once for a whole step by
    the trainer). Gated-out tokens still count in the normaliser.

    Metrics: "pg", "kl_ref", "entropy_bonus" (normalised terms), "n_tokens", "n_seqs" (local
    counts), "clip_sum" (tokens whose clipped branch is active, i.e. gradient zeroed),
    "kl_old_sum" (k3 estimate of KL(pi || pi_old), summed), "ratio_sum" (of the ratio in use),
    and when available "kl_ref_sum", "entropy_sum", "gate_sum" (tokens kept by the gate),
    "dual_clip_sum" (tokens with A < 0 whose dual-clip bound is active).
    """
    gated = gate_frac < 1.0 or gate_threshold is not None
    _check_rl_options(agg, norm_const, gate_frac, gated, entropy, entropy_coef, ref_logp, beta_kl)
    gated = gated or gate is not None

    logp, old_logp, mask, adv = _f32(logp), _f32(old_logp), _f32(mask), _f32(adv)
    if adv.ndim == 1:
        adv = adv[:, None]
    on = mask > 0
    aggregate = functools.partial(
        _aggregate, mask=mask, agg=agg, n_tokens=n_tokens, n_seqs=n_seqs, norm_const=norm_const
    )

    diff = jnp.where(on, logp - old_logp, 0.0)  # padding logp may be garbage: keep exp finite
    rho = _importance_ratio(logp, diff, mask, ratio)
    pg_tok, metrics = _pg_tokens(rho, adv, on, eps_low, eps_high, dual_clip)
    if gated:
        keep = _kept(gate, entropy, mask, gate_frac, gate_threshold)
        pg_tok = jnp.where(keep, pg_tok, 0.0)
        metrics["gate_sum"] = jnp.sum(keep.astype(jnp.float32))
    pg = aggregate(pg_tok)
    loss = pg

    metrics.update(pg=pg, **_ratio_metrics(diff, rho, adv, mask, eps_low, eps_high))
    metrics.update(_regularisers(logp, ref_logp, entropy, on, aggregate))
    if ref_logp is not None:
        loss = loss + beta_kl * metrics["kl_ref"]
    if entropy is not None:
        loss = loss - entropy_coef * metrics["entropy_bonus"]
    return loss, {k: jax.lax.stop_gradient(_f32(v)) for k, v in metrics.items()}


def ext_loss(
    logp: jax.Array,
    adv_off: jax.Array,
    shift: jax.Array,
    mask: jax.Array,
    *,
    gamma: float | None = None,
    agg: str = "token-mean",
    n_tokens: jax.Array | float | None = None,
    n_seqs: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Extend term: advantage-weighted SFT on offline trace tokens with the policy shift s.

    logp, mask [N, T] (mask 1.0 on offline trace tokens), adv_off [N], shift [N] in [0, 1].
      w_t = pi / stop_grad(pi) ** (1 - s)    (value pi**s, gradient pi**s * grad log pi)
      token-mean:          L_ext = -(1 / n_tokens) * sum_{i,t} mask * w_t * A_off
      seq-mean-token-mean: L_ext = -(1 / n_seqs) * sum_i (sum_t mask * w_t * A_off) / len_i
    s = 0 is advantage-weighted SFT; s = 1 weights each token's gradient by pi. With `gamma`,
    f(p) = p / (p + gamma) replaces p: w = f(pi) / stop_grad(f(pi)) ** (1 - s), so at s = 1 the
    weight is exactly LUFFY's pi / (pi + gamma); at s = 0 the gradient is then
    gamma / (pi + gamma) * grad log pi (value 1), not plain SFT. Computed in log space.
    `agg` (the red section's ext_agg): "token-mean" weighs every trace token alike;
    "seq-mean-token-mean" takes each trace's own token mean (len_i = mask row sum), then the
    mean over traces.
    n_tokens defaults to mask.sum(), n_seqs to the rows with any mask; pass the global counts
    when accumulating micro-batches.

    Metrics: "ext" (the normalised term), "n_tokens", "n_seqs" (local counts), "w_sum" (sum of
    w), "logp_sum" (sum of log-probs, for the offline NLL).
    """
    if gamma is not None and not gamma > 0:
        raise ValueError(f"ext_loss: gamma must be > 0 (or None), got {gamma}")
    if agg not in EXT_AGG_MODES:
        raise ValueError(f"ext_loss: agg must be one of {EXT_AGG_MODES}, got {agg!r}")
    logp, mask, adv_off, shift = _f32(logp), _f32(mask), _f32(adv_off), _f32(shift)
    on = mask > 0
    lp = jnp.where(on, logp, 0.0)
    logf = lp if gamma is None else lp - jnp.logaddexp(lp, math.log(gamma))
    s = shift[:, None]
    w = jnp.exp(logf - (1.0 - s) * jax.lax.stop_gradient(logf))
    loss = -_aggregate(w * adv_off[:, None], mask, agg, n_tokens=n_tokens, n_seqs=n_seqs)
    metrics = dict(
        ext=loss,
        n_tokens=jnp.sum(mask),
        n_seqs=jnp.sum(jnp.any(on, axis=-1).astype(jnp.float32)),
        w_sum=jnp.sum(jnp.where(on, w * mask, 0.0)),
        logp_sum=jnp.sum(lp * mask),
    )
    return loss, {k: jax.lax.stop_gradient(_f32(v)) for k, v in metrics.items()}
