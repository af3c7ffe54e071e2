"""The GRPO loss options of the rl section (sequence ratio, dual clip, overlong penalty, masked
truncations) against the float64 references in tests/reference.py, and their validation."""

import dataclasses
import functools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from test_objective import EPS, _check_rl, _rl_inputs

from redjax import config, sampler, step, train
from redjax import objective as obj
from redjax.rewards.length import overlong_penalty
from redjax.rows import make_rows

AGGS = ["token-mean", "seq-mean-token-mean", "constant"]


def _seq_inputs(seed):
    """Rows of different lengths, one with a hole in its mask and one empty, ratios both sides
    of the clip range."""
    x = _rl_inputs(seed, n=6, t=7)
    x["mask"][1, 2] = 0.0  # a masked-out token inside a response
    x["logp"][1, 2] = 40.0
    return x


# ----------------------------------------------------------------------------- sequence ratio
@pytest.mark.parametrize("agg", AGGS)
def test_sequence_ratio_matches_reference(agg):
    x = _seq_inputs(11)
    nc = 20.0 if agg == "constant" else None
    _, m = _check_rl(x, agg=agg, norm_const=nc, ratio="sequence", eps_low=0.05, eps_high=0.05)
    assert 0 < m["clip_sum"] < m["n_tokens"]  # clipped and unclipped rows both present
    # The ratio every token of a row takes is exp(mean token log-ratio over its mask).
    mask = x["mask"]
    s = np.exp(((x["logp"] - x["old_logp"]) * mask).sum(1) / np.maximum(mask.sum(1), 1))
    np.testing.assert_allclose(m["ratio_sum"], (s * mask.sum(1)).sum(), rtol=1e-5)


def test_sequence_ratio_is_gspo_sequence_objective():
    """With seq-mean-token-mean the token form has GSPO's sequence-level value and gradient
    (the gradient here by central differences of the sequence objective)."""
    x = _seq_inputs(12)
    kw = dict(eps_low=0.05, eps_high=0.05)
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    f = lambda lp: obj.rl_loss(
        lp, j["old_logp"], j["adv"], j["mask"], agg="seq-mean-token-mean", ratio="sequence", **kw
    )[0]
    loss, g = jax.jit(jax.value_and_grad(f))(j["logp"])

    def gspo(lp):
        return ref.gspo_objective(lp, x["old_logp"], x["adv"], x["mask"], **kw)

    np.testing.assert_allclose(loss, gspo(x["logp"]), rtol=1e-5, atol=1e-6)
    h, fd = 1e-6, np.zeros_like(x["logp"])
    for i, t in zip(*np.nonzero(x["mask"]), strict=True):
        up, down = x["logp"].copy(), x["logp"].copy()
        up[i, t] += h
        down[i, t] -= h
        fd[i, t] = (gspo(up) - gspo(down)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(g)[x["mask"] == 0] == 0)
    assert np.count_nonzero(fd) and np.count_nonzero(fd) < x["mask"].sum()  # clipped rows too


def test_sequence_ratio_equals_token_ratio_on_one_token_rows():
    x = _rl_inputs(13, n=4, t=3)
    x["mask"][:] = 0.0
    x["mask"][:, 0] = 1.0
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    vg = lambda ratio: jax.jit(
        jax.value_and_grad(
            lambda lp: obj.rl_loss(lp, j["old_logp"], j["adv"], j["mask"], ratio=ratio, **EPS)[0]
        )
    )(j["logp"])
    (a, ga), (b, gb) = vg("token"), vg("sequence")
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(ga, gb, rtol=1e-6)


# ----------------------------------------------------------------------------- dual clip
def _dual_inputs():
    """Token ratios 0.5 ... 5 on rows with A = -1.5, +1.5 and -0.5 (two of them beyond c = 3)."""
    rho = np.array([0.5, 1.0, 1.1, 2.0, 3.5, 5.0])
    old = np.full((3, 6), -1.0)
    logp = old + np.log(rho)[None]
    return dict(
        logp=logp,
        old_logp=old,
        adv=np.array([-1.5, 1.5, -0.5]),
        mask=np.ones((3, 6)),
        ref_logp=old,
        entropy=np.ones((3, 6)),
    )


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_dual_clip_matches_reference(agg):
    x = _dual_inputs()
    _, m = _check_rl(x, agg=agg, dual_clip=3.0, eps_low=0.2, eps_high=0.28)
    assert m["dual_clip_sum"] == 4  # ratios 3.5 and 5 on the two negative rows
    # By hand: A = -1.5 at ratio 5 costs min(5 * 1.5, 3 * 1.5) = 4.5, with no gradient.
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    kw = dict(dual_clip=3.0, eps_low=0.2, eps_high=0.28)
    loss = lambda lp: obj.rl_loss(lp, j["old_logp"], j["adv"], j["mask"], **kw)[0]
    per_token = np.asarray(jax.jit(jax.grad(loss))(j["logp"]))
    assert np.all(per_token[[0, 0, 2, 2], [4, 5, 4, 5]] == 0)
    assert np.all(per_token[[0, 2], 3] != 0)  # ratio 2 < c keeps its gradient
    at5 = lambda c: jax.jit(lambda: obj.rl_loss(
        j["logp"][:1, 5:], j["old_logp"][:1, 5:], j["adv"][:1], j["mask"][:1, 5:],
        dual_clip=c, **EPS,
    )[0])()  # fmt: skip
    np.testing.assert_allclose(at5(3.0), 4.5, rtol=1e-6)
    np.testing.assert_allclose(at5(None), 7.5, rtol=1e-6)


def test_dual_clip_with_sequence_ratio():
    x = _dual_inputs()
    x["adv"] = np.array([-1.5, 1.5, -0.5])
    x["logp"][2] = x["old_logp"][2] + math.log(4.0)  # row 2: s = 4 > c
    _, m = _check_rl(x, ratio="sequence", dual_clip=3.0, eps_low=0.2, eps_high=0.28)
    assert m["dual_clip_sum"] == 6  # the whole of row 2


def test_dual_clip_off_is_plain_ppo():
    x = _dual_inputs()
    a, _ = _check_rl(x, eps_low=0.2, eps_high=0.28)
    b, m = _check_rl(x, eps_low=0.2, eps_high=0.28, dual_clip=100.0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert m["dual_clip_sum"] == 0


def test_bad_loss_options():
    x = {k: jnp.asarray(v) for k, v in _rl_inputs(14).items()}
    args = (x["logp"], x["old_logp"], x["adv"], x["mask"])
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        obj.rl_loss(*args, dual_clip=1.0, **EPS)
    with pytest.raises(ValueError, match="ratio must be one of"):
        obj.rl_loss(*args, ratio="seq", **EPS)


# ----------------------------------------------------------------------------- overlong penalty
def test_overlong_penalty_below_inside_and_at_the_budget():
    lengths = np.array([1, 11, 12, 13, 14, 15, 16])  # budget 16, buffer 4: soft from 12
    got = overlong_penalty(lengths, 16, 4, 0.5)
    want = ref.overlong_penalty(lengths, 16, 4, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, [0, 0, 0, 0.125, 0.25, 0.375, 0.5])  # by hand
    assert np.all(overlong_penalty(lengths, 16, 0, 0.5) == 0)  # buffer 0: off
    with pytest.raises(ValueError, match="rl.overlong_buffer"):
        overlong_penalty(lengths, 16, 16, 0.5)


def test_overlong_penalty_comes_off_the_rollout_rewards():
    """train.score: the rewards the advantages are made of are the verifier's less the penalty
    (correctness untouched), and the penalty is kept for the logs."""
    cfg = config.load(None, ["rollout.max_new_tokens=16", "rl.overlong_buffer=4"])
    lengths = np.array([3, 13, 16, 12, 15, 16], np.int32)  # 2 prompts x 3 rollouts
    judged = SimpleNamespace(reward=np.ones(6, np.float32), correct=np.ones(6, bool))
    r = SimpleNamespace(
        cfg=cfg, verifier=SimpleNamespace(judge=lambda texts, golds, records: judged)
    )
    ro = SimpleNamespace(text=["x"] * 6, lengths=lengths)
    batch = {"answer": ["1", "2"], "has_offline": np.zeros(2, bool), "record": [{}, {}]}
    got = train.Collected(batch, ro, 3)
    s = train.score(r, got, SimpleNamespace(offline=False))
    want = ref.overlong_penalty(lengths, 16, 4, 1.0).reshape(2, 3)
    np.testing.assert_allclose(s.rew, 1.0 - want, rtol=1e-6)
    np.testing.assert_allclose(s.overlong, want, rtol=1e-6)
    assert s.correct.all()
    r.cfg = config.load(None)  # rl.overlong_buffer 0: the rewards as judged
    off = train.score(r, got, SimpleNamespace(offline=False))
    assert off.overlong is None and np.all(off.rew == 1.0)


# ----------------------------------------------------------------------------- mask_truncated
def _rows_with_truncations(seed=15):
    x = _rl_inputs(seed, n=6, t=7)
    n, t = x["mask"].shape
    truncated = np.array([True, False, False, True, False, False])
    rows = make_rows(
        np.zeros((n, 2)), np.ones((n, 2)), np.zeros((n, t)), x["mask"] > 0, np.ones(n, bool),
        x["adv"], np.zeros(n), truncated=truncated,
    )  # fmt: skip
    return x, rows, truncated


@pytest.mark.parametrize("agg", AGGS)
def test_mask_truncated_removes_exactly_those_rows(agg):
    """The Recall term with rl.mask_truncated equals the reference on the batch without the
    truncated rows (value, normaliser and gradient), and gives them no gradient."""
    x, rows, truncated = _rows_with_truncations()
    mask = step.rl_mask(rows, True)
    assert np.all(np.asarray(mask)[truncated] == 0)
    np.testing.assert_array_equal(np.asarray(step.rl_mask(rows, False)), x["mask"])
    nc = 20.0 if agg == "constant" else None
    kw = dict(agg=agg, norm_const=nc, beta_kl=0.05, entropy_coef=0.01, **EPS)
    j = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
    f = lambda lp: obj.rl_loss(
        lp, j["old_logp"], j["adv"], mask, ref_logp=j["ref_logp"], entropy=j["entropy"],
        n_tokens=jnp.sum(mask), n_seqs=jnp.sum(jnp.sum(mask, -1) > 0), **kw,
    )[0]  # fmt: skip
    loss, g = jax.jit(jax.value_and_grad(f))(j["logp"])
    kept = {k: v[~truncated] for k, v in x.items()}
    want, want_g, _, _ = ref.rl_loss(
        kept["logp"], kept["old_logp"], kept["adv"], kept["mask"], ref_logp=kept["ref_logp"],
        entropy=kept["entropy"], **kw,
    )  # fmt: skip
    np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g)[~truncated], want_g, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(g)[truncated] == 0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_mask_truncated_in_the_train_step(monkeypatch, agg):
    """The train step with rl.mask_truncated: its Recall term and gradient are the reference's
    on the batch without the truncated rows. The step's parameters here are the log-probs
    themselves (score returns them), so one SGD update at lr 1 reads out d loss / d logp."""
    x, rows, truncated = _rows_with_truncations(16)
    rows = rows.replace(old_logp=x["old_logp"].astype(np.float32)).with_probe(np.array([0]))
    ent = jnp.asarray(x["entropy"], jnp.float32)
    monkeypatch.setattr(step, "score", lambda params, *a: (params["logp"], ent))
    sc = step.StepConfig.from_config(config.Config(), agg=agg, mask_truncated=True, probe=False)
    sc = dataclasses.replace(sc, **EPS)
    tx = optax.sgd(1.0)
    params = {"logp": jnp.asarray(x["logp"], jnp.float32)}
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0)}
    new, m = jax.jit(functools.partial(step.train_step, cfg=None, sc=sc, tx=tx))(
        state, jax.tree.map(jnp.asarray, rows), jnp.float32(0.0)
    )
    grad = np.asarray(params["logp"] - new["params"]["logp"], np.float64)
    kept = {k: v[~truncated] for k, v in x.items()}
    want, want_g, _, want_m = ref.rl_loss(
        kept["logp"], kept["old_logp"], kept["adv"], kept["mask"], agg=agg, **EPS
    )
    np.testing.assert_allclose(m["loss_rl"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad[~truncated], want_g, rtol=1e-4, atol=1e-6)
    assert np.all(grad[truncated] == 0)
    np.testing.assert_allclose(m["tokens_rl"], want_m["n_tokens"])
    np.testing.assert_allclose(m["clip_frac"], want_m["clip_sum"] / want_m["n_tokens"], rtol=1e-6)
    assert m["tokens_on"] == x["mask"].sum() > m["tokens_rl"]  # entropies keep every rollout


def test_host_rows_flag_the_truncated_rollouts():
    """train.host_rows marks the rollouts that ended at the budget (sampler finish "length"),
    and no teacher trace or padding row, only with mark_truncated."""
    b, g, c = 2, 2, 4
    finish = np.array(["stop", "length", "length", "stop"])
    ro = sampler.Rollouts(
        tokens=np.ones((4, c), np.int32), mask=np.ones((4, c), bool), logp=np.zeros((4, c)),
        logp_model=np.zeros((4, c)), lengths=np.full(4, c), finish=finish,
    )  # fmt: skip
    batch = {
        "prompt_ids": np.ones((b, 3), np.int32), "prompt_mask": np.ones((b, 3), bool),
        "offline_ids": np.ones((b, 2), np.int32), "offline_mask": np.ones((b, 2), bool),
        "has_offline": np.array([True, False]),
    }  # fmt: skip
    t = train.Targets(np.zeros((b, g)), np.ones(b), np.zeros(b), 1.0, True)
    got = train.Collected(batch, ro, g)
    kw = dict(online=True, multiple=8, pad=0, max_width=8)
    rows = train.host_rows(got, t, mark_truncated=True, **kw)
    assert rows.size == 8  # 4 rollouts, 1 trace, 3 padding rows
    np.testing.assert_array_equal(rows.truncated, [0, 1, 1, 0, 0, 0, 0, 0])
    assert not rows.resp_mask[5:].any()
    assert train.host_rows(got, t, **kw).truncated is None


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, message",
    [
        (["rl.ratio=seq"], "rl.ratio: 'seq' is not one of token, sequence"),
        (["rl.dual_clip=1.0"], "rl.dual_clip must be > 1 (or null: off), got 1.0"),
        (["rl.dual_clip=0.5"], "rl.dual_clip must be > 1"),
        (["rl.overlong_buffer=-1"], "rl.overlong_buffer must be >= 0"),
        (
            ["rollout.max_new_tokens=64", "rl.overlong_buffer=64"],
            "rl.overlong_buffer=64 must be < rollout.max_new_tokens=64",
        ),
        (["rl.overlong_penalty=-0.1"], "rl.overlong_penalty must be >= 0"),
        (["rl.mask_truncated=maybe"], "rl.mask_truncated: expected bool, got 'maybe'"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError) as e:
        config.load(None, override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_defaults_are_off_and_good_values_load():
    rl = config.load(None).rl
    assert (rl.ratio, rl.dual_clip, rl.overlong_buffer, rl.mask_truncated) == (
        "token", None, 0, False,
    )  # fmt: skip
    over = ["rl.ratio=sequence", "rl.dual_clip=3", "rollout.max_new_tokens=64"]
    over += ["rl.overlong_buffer=16", "rl.overlong_penalty=0.5", "rl.mask_truncated=true"]
    rl = config.load(None, over).rl
    assert (rl.ratio, rl.dual_clip, rl.overlong_buffer, rl.overlong_penalty) == (
        "sequence", 3.0, 16, 0.5,
    )  # fmt: skip
    sc = step.StepConfig.from_config(config.load(None, over))
    assert (sc.ratio, sc.dual_clip, sc.mask_truncated) == ("sequence", 3.0, True)


def test_overlong_buffer_checked_against_the_fitted_budget():
    """rollout.max_new_tokens=0 is fitted to the data (the longest trace, 20 tokens here, rounded
    up to 32): the buffer is checked against the fitted budget."""
    from redjax.data.task import fit_lengths

    cfg = config.load(None, ["rl.overlong_buffer=40"])  # default.yaml: the lengths at 0
    tokenized = (None, [[1] * 10], [[1] * 20])  # (records, prompts, traces) as tokenize_train's
    with pytest.raises(ValueError, match="rl.overlong_buffer=40 must be < rollout.max_new_tokens"):
        fit_lengths(cfg, tokenized)
    cfg = config.load(None, ["rl.overlong_buffer=16"])
    assert fit_lengths(cfg, tokenized).rollout.max_new_tokens == 32


def test_runs_saved_before_these_keys_resume():
    """A checkpoint whose saved config predates the rl options resumes with them at their
    defaults (what the run did), and is refused with one of them changed."""
    from redjax import runs

    cfg = config.load(None, ["train.steps=10"])
    old = config.to_dict(cfg)
    for k in ("ratio", "dual_clip", "overlong_buffer", "overlong_penalty", "mask_truncated"):
        del old["rl"][k]
    saved = {"step": 4, "config": old}
    assert runs.check_resume(cfg, saved) == 10
    with pytest.raises(ValueError, match=r"rl.ratio: 'token' -> 'sequence'"):
        runs.check_resume(config.load(None, ["train.steps=10", "rl.ratio=sequence"]), saved)
