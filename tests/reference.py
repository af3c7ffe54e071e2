"""Independent float64 numpy reference for the RED objective and controller (from docs/design.md).

Written as plain loops from the formulas in docs/design.md section 1; it never imports redjax.
Gradients are analytic.
"""

from __future__ import annotations

import math

import numpy as np


# ----------------------------------------------------------------------------- token stats
def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def token_stats(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logp of the target and entropy of softmax(logits), float64."""
    lq = log_softmax(logits)
    logp = np.take_along_axis(lq, np.asarray(targets)[..., None], axis=-1)[..., 0]
    ent = -(np.exp(lq) * lq).sum(axis=-1)
    return logp, ent


def token_stats_grad(logits, targets, g_logp, g_ent) -> np.ndarray:
    """d/dz of sum(g_logp * logp + g_ent * H): onehot - p and -p * (log p + H)."""
    lq = log_softmax(logits)
    p = np.exp(lq)
    ent = -(p * lq).sum(axis=-1, keepdims=True)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, np.asarray(targets)[..., None], 1.0, axis=-1)
    return np.asarray(g_logp)[..., None] * (onehot - p) + np.asarray(g_ent)[..., None] * (
        -p * (lq + ent)
    )


# ----------------------------------------------------------------------------- Recall term
def _weights(mask, agg, n_tokens, n_seqs, norm_const):
    """Per-token weight c[i, t] such that agg(x) = sum_{i,t} c[i, t] x[i, t]."""
    mask = np.asarray(mask, np.float64)
    n_rows, n_cols = mask.shape
    c = np.zeros_like(mask)
    if agg == "token-mean":
        n = mask.sum() if n_tokens is None else n_tokens
        for i in range(n_rows):
            for t in range(n_cols):
                if mask[i, t] > 0:
                    c[i, t] = mask[i, t] / n
    elif agg == "seq-mean-token-mean":
        ns = sum(1 for i in range(n_rows) if mask[i].sum() > 0) if n_seqs is None else n_seqs
        for i in range(n_rows):
            length = mask[i].sum()
            for t in range(n_cols):
                if mask[i, t] > 0:
                    c[i, t] = mask[i, t] / length / ns
    elif agg == "constant":
        c = mask / norm_const
    else:
        raise ValueError(agg)
    return c


def rl_loss(
    logp,
    old_logp,
    adv,
    mask,
    *,
    eps_low=0.2,
    eps_high=0.2,
    agg="token-mean",
    norm_const=None,
    n_tokens=None,
    n_seqs=None,
    ref_logp=None,
    beta_kl=0.0,
    entropy=None,
    entropy_coef=0.0,
    gate_frac=1.0,
    ratio="token",
    dual_clip=None,
):
    """Returns (loss, d loss / d logp, d loss / d entropy, metrics) in float64.

    ratio="sequence" (GSPO): every token of row i uses s_i = exp(mean over the row's masked
    tokens of (logp - old_logp)), whose token-form gradient w.r.t. logp(t) is s_i. dual_clip c:
    where A < 0 the token's policy-gradient loss is min(its clipped loss, c |A|), no gradient
    where the bound is taken."""
    logp, old_logp = np.asarray(logp, np.float64), np.asarray(old_logp, np.float64)
    mask = np.asarray(mask, np.float64)
    adv = np.asarray(adv, np.float64)
    c = _weights(mask, agg, n_tokens, n_seqs, norm_const)
    n_rows, n_cols = mask.shape
    thr = -np.inf
    if gate_frac < 1.0:
        ent_on = np.asarray(entropy, np.float64)[mask > 0]
        thr = np.quantile(ent_on, 1.0 - gate_frac) if ent_on.size else np.inf
    loss = 0.0
    grad = np.zeros_like(logp)
    grad_ent = np.zeros_like(logp)
    clip_sum = kl_old_sum = gate_sum = dual_sum = 0.0
    for i in range(n_rows):
        a = adv[i]
        kept = [t for t in range(n_cols) if mask[i, t] > 0]
        if kept:
            mean_log = sum(logp[i, t] - old_logp[i, t] for t in kept) / len(kept)
        for t in range(n_cols):
            if mask[i, t] <= 0:
                continue
            if ratio == "sequence":
                rho = math.exp(mean_log)
            else:
                rho = math.exp(logp[i, t] - old_logp[i, t])
            r = old_logp[i, t] - logp[i, t]
            kl_old_sum += math.exp(r) - r - 1.0
            clipped = (a > 0 and rho > 1 + eps_high) or (a < 0 and rho < 1 - eps_low)
            clip_sum += clipped
            keep = gate_frac >= 1.0 or entropy[i, t] >= thr
            gate_sum += keep
            if keep:
                pg = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
                d_pg = 0.0 if clipped else -rho * a
                if dual_clip is not None and a < 0 and pg > dual_clip * -a:
                    pg, d_pg = dual_clip * -a, 0.0
                    dual_sum += 1
                loss += c[i, t] * pg
                grad[i, t] += c[i, t] * d_pg
            if ref_logp is not None:
                d = ref_logp[i, t] - logp[i, t]
                loss += beta_kl * c[i, t] * (math.exp(d) - d - 1.0)
                grad[i, t] += beta_kl * c[i, t] * (1.0 - math.exp(d))
            if entropy is not None:
                loss -= entropy_coef * c[i, t] * entropy[i, t]
                grad_ent[i, t] = -entropy_coef * c[i, t]
    metrics = {"clip_sum": clip_sum, "kl_old_sum": kl_old_sum, "n_tokens": mask.sum()}
    if gate_frac < 1.0:
        metrics["gate_sum"] = gate_sum
    if dual_clip is not None:
        metrics["dual_clip_sum"] = dual_sum
    return loss, grad, grad_ent, metrics


def gspo_objective(logp, old_logp, adv, mask, *, eps_low, eps_high):
    """GSPO's sequence-level loss, -(1 / n_seqs) sum_i min(s_i A_i, clip(s_i) A_i) with
    s_i = (pi(o_i) / pi_old(o_i)) ** (1 / |o_i|), over rows with any masked token."""
    total, rows = 0.0, 0
    for i in range(len(mask)):
        kept = [t for t in range(len(mask[i])) if mask[i][t] > 0]
        if not kept:
            continue
        s = math.exp(sum(logp[i][t] - old_logp[i][t] for t in kept) / len(kept))
        total -= min(s * adv[i], min(max(s, 1 - eps_low), 1 + eps_high) * adv[i])
        rows += 1
    return total / rows


def overlong_penalty(lengths, max_len, buffer, penalty):
    """DAPO's soft overlong punishment as a penalty >= 0 per length (0 when buffer is 0)."""
    out = []
    for n in lengths:
        if buffer == 0 or n <= max_len - buffer:
            out.append(0.0)
        elif n <= max_len:
            out.append((n - (max_len - buffer)) / buffer * penalty)
        else:
            out.append(penalty)
    return np.array(out)


# ----------------------------------------------------------------------------- Extend term
def ext_loss(
    logp, adv_off, shift, mask, *, gamma=None, agg="token-mean", n_tokens=None, n_seqs=None
):
    """Returns (loss, d loss / d logp) in float64.

    Value of w is f(pi)**s with f(p) = p (or p / (p + gamma)); its gradient w.r.t. logp is
    f**s * dlog f/dlogp = f**s * (1 - f) with gamma, f**s without. Each token's coefficient is
    1 / N_off (token-mean) or 1 / (|o_q| Q) (seq-mean-token-mean), docs/design.md section 1.
    """
    logp, mask = np.asarray(logp, np.float64), np.asarray(mask, np.float64)
    n = mask.sum() if n_tokens is None else n_tokens
    q = sum(1 for row in mask if row.sum() > 0) if n_seqs is None else n_seqs
    loss = 0.0
    grad = np.zeros_like(logp)
    for i in range(logp.shape[0]):
        s, a = float(shift[i]), float(adv_off[i])
        length = mask[i].sum()
        for t in range(logp.shape[1]):
            if mask[i, t] <= 0:
                continue
            c = 1.0 / n if agg == "token-mean" else 1.0 / (length * q)
            p = math.exp(logp[i, t])
            f = p if gamma is None else p / (p + gamma)
            dlogf = 1.0 if gamma is None else gamma / (p + gamma)
            loss -= c * mask[i, t] * f**s * a
            grad[i, t] -= c * mask[i, t] * f**s * dlogf * a
    return loss, grad


# ----------------------------------------------------------------------------- controller
def group_advantages(rewards, off_rewards, has_off, *, offline_in_group, std_norm, eps):
    """Loop over groups: (adv [B, G], adv_off [B], acc [B]) in float64."""
    rewards = np.asarray(rewards, np.float64)
    b, g = rewards.shape
    adv = np.zeros((b, g))
    adv_off = np.zeros(b)
    acc = np.zeros(b)
    for q in range(b):
        online = list(rewards[q])
        acc[q] = sum(online) / g
        in_group = off_rewards is not None and bool(has_off[q]) and offline_in_group
        group = online + ([float(off_rewards[q])] if in_group else [])
        mu = sum(group) / len(group)
        sigma = math.sqrt(sum((x - mu) ** 2 for x in group) / len(group))
        denom = sigma + eps if std_norm else 1.0
        for i in range(g):
            adv[q, i] = (online[i] - mu) / denom
        if off_rewards is None or not has_off[q]:
            adv_off[q] = 0.0
        elif offline_in_group:
            adv_off[q] = (float(off_rewards[q]) - mu) / denom
        else:
            adv_off[q] = 1.0
    return adv, adv_off, acc


def policy_shift(acc, mode, tau):
    out = []
    for a in acc:
        if mode == "linear":
            out.append(min(max(a, 0.0), 1.0))
        elif mode == "step":
            out.append(1.0 if a >= tau else 0.0)
        elif mode == "zero":
            out.append(0.0)
        else:
            out.append(1.0)
    return np.array(out)


def lambda_sequence(
    dh_on,
    dh_off,
    *,
    mode,
    rule="sign",
    lambda0=1.0,
    lambda_min=0.05,
    lambda_max=5.0,
    alpha=0.1,
    delta=1e-4,
    ema=0.9,
    warmup_steps=0,
    total_steps=1000,
    targets=None,
):
    """Lambda after each of the updates with inputs (dh_on[k], dh_off[k]), plus final EMAs.

    `targets`, a list, gets the target after each update (red mode; lambda0 before the first).
    """
    lam = lambda0
    target = lambda0
    d_on = d_off = None
    out = []
    for k, (x_on, x_off) in enumerate(zip(dh_on, dh_off, strict=True)):
        step = k + 1
        finite = math.isfinite(x_on) and math.isfinite(x_off)
        if finite:
            if d_on is None:
                d_on, d_off = x_on, x_off
            else:
                d_on = ema * d_on + (1 - ema) * x_on
                d_off = ema * d_off + (1 - ema) * x_off
        if mode == "fixed":
            out.append(lambda0)
        elif mode == "schedule":
            if step < warmup_steps:
                out.append(lambda0 * step / warmup_steps)
            else:
                frac = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
                out.append(
                    lambda_min + 0.5 * (lambda0 - lambda_min) * (1 + math.cos(math.pi * frac))
                )
        else:
            if finite:
                if rule == "sign":
                    target = lam * (-d_on) / max(d_off, delta) if d_on < 0 < d_off else lambda_min
                elif d_on < 0:  # ratio
                    r = min(abs(d_on) / max(abs(d_off), delta), 2.0)
                    target = min(max(lam * r, lambda_min), lambda_max)
                else:
                    target = lambda_min
                lam = min(max((1 - alpha) * lam + alpha * target, lambda_min), lambda_max)
            out.append(lam)
        if targets is not None:
            targets.append(target)
    return out, d_on, d_off


def at_bound(target, lambda_min, lambda_max):
    """-1 at lambda_min, +1 at lambda_max, 0 strictly inside by 1% of each bound."""
    if target <= lambda_min * 1.01:
        return -1
    if target >= lambda_max * 0.99:
        return 1
    return 0


def drift(h_on, h_off):
    """dH(t) = H(t) - H(t-1) per step; None on the first step and after a non-finite H."""
    out = []
    prev = None
    for a, b in zip(h_on, h_off, strict=True):
        out.append(None if prev is None else (a - prev[0], b - prev[1]))
        prev = (a, b) if math.isfinite(a) and math.isfinite(b) else None
    return out
