"""redjax.red (advantages, policy shift, lambda controller) against tests/reference.py."""

import json
import math

import numpy as np
import pytest
import reference as ref

from redjax import red
from redjax.config import RedCfg, RlCfg


def _rewards(seed, b=16, g=4):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, (b, g)).astype(np.float64)
    rewards[:2] = rng.uniform(0, 1, (2, g))  # partial credit
    rewards[2], rewards[3] = 1.0, 0.0  # all right, all wrong
    off = rng.integers(0, 2, b).astype(np.float64)
    off[2], off[3] = 1.0, 1.0
    has = rng.uniform(size=b) < 0.7
    has[2] = has[3] = True
    return rewards, off, has


@pytest.mark.parametrize("offline_in_group", [True, False])
@pytest.mark.parametrize("std_norm", [True, False])
def test_group_advantages_matches_reference(offline_in_group, std_norm):
    rewards, off, has = _rewards(0)
    kw = dict(offline_in_group=offline_in_group, std_norm=std_norm, eps=1e-6)
    adv, adv_off, acc = red.group_advantages(rewards, off, has, **kw)
    want_adv, want_off, want_acc = ref.group_advantages(rewards, off, has, **kw)
    assert adv.dtype == adv_off.dtype == acc.dtype == np.float32
    np.testing.assert_allclose(adv, want_adv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(adv_off, want_off, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-6)
    assert np.all(adv_off[~has] == 0)
    assert np.all(adv[2] == 0)  # all right: no online signal
    if offline_in_group:  # offline reward 1 lifts the all-wrong group's mean above its rollouts
        assert np.all(adv[3] < 0) and adv_off[3] > 0
    else:
        assert np.all(adv[3] == 0) and np.all(adv_off[has] == 1.0)


def test_group_advantages_without_offline():
    rewards, _, _ = _rewards(1)
    adv, adv_off, acc = red.group_advantages(rewards)
    want_adv, _, want_acc = ref.group_advantages(
        rewards, None, None, offline_in_group=True, std_norm=True, eps=1e-6
    )
    np.testing.assert_allclose(adv, want_adv, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-6)
    assert np.all(adv_off == 0)
    # has_off None with off_rewards given means every prompt has a trace.
    _, off, _ = _rewards(1)
    _, adv_off, _ = red.group_advantages(rewards, off)
    _, want_off, _ = ref.group_advantages(
        rewards, off, np.ones(len(off), bool), offline_in_group=True, std_norm=True, eps=1e-6
    )
    np.testing.assert_allclose(adv_off, want_off, rtol=1e-6, atol=1e-6)


def test_group_advantages_zero_std_and_single_rollout():
    adv, adv_off, _ = red.group_advantages(np.full((2, 3), 0.5), np.full(2, 0.5))
    assert np.all(adv == 0) and np.all(adv_off == 0)
    adv, _, acc = red.group_advantages(np.array([[1.0], [0.0]]))
    assert np.all(adv == 0) and np.all(acc == [1.0, 0.0])


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="rewards"):
        red.group_advantages(np.zeros(4))
    with pytest.raises(ValueError, match="off_rewards"):
        red.group_advantages(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        red.group_advantages(np.full((2, 2), np.nan))


@pytest.mark.parametrize("mode", ["linear", "step", "zero", "one"])
def test_policy_shift(mode):
    acc = np.array([0.0, 0.25, 0.5, 0.5 - 1e-9, 0.75, 1.0, 1.2])
    s = red.policy_shift(acc, mode, tau=0.5)
    np.testing.assert_allclose(s, ref.policy_shift(acc, mode, 0.5), rtol=1e-6)
    assert s.dtype == np.float32 and np.all((s >= 0) & (s <= 1))


def test_policy_shift_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        red.policy_shift(np.zeros(2), "cosine")


def controller(mode="red", warmup_steps=0, total_steps=1000, std_norm=True, **red_kw):
    """A controller from the config's defaults, with the named settings replaced."""
    red_cfg = RedCfg(lam=mode, lambda_warmup=warmup_steps, **red_kw)
    return red.RedController.from_config(red_cfg, RlCfg(std_norm=std_norm), total_steps)


def _dh(seed, n=80):
    """Entropy changes with the usual signs, then fast collapse, then rising entropy."""
    rng = np.random.default_rng(seed)
    dh_on = -np.abs(rng.normal(0.01, 0.02, n))
    dh_off = np.abs(rng.normal(0.005, 0.01, n))
    dh_off[10:13] *= -1  # offline entropy falling for a moment
    dh_on[20:40] *= 20  # collapse much faster than offline restores: climb to lambda_max
    dh_on[40:70] = np.abs(rng.normal(0.1, 0.02, 30))  # entropy rising: weight back to RL
    return dh_on, dh_off


CONFIGS = [
    dict(mode="red", rule="sign"),
    dict(mode="red", rule="sign", alpha=0.5, ema=0.5, lambda0=0.3, delta=1e-3),
    dict(mode="red", rule="ratio"),
    dict(mode="red", rule="ratio", alpha=0.5, ema=0.5, lambda0=0.3, delta=1e-3),
    dict(mode="fixed", lambda0=0.7),
    dict(mode="schedule", lambda0=2.0, warmup_steps=10, total_steps=40),
    dict(mode="schedule", lambda0=1.0, warmup_steps=0, total_steps=25),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_controller_matches_reference(cfg):
    dh_on, dh_off = _dh(2)
    targets = []
    want, d_on, d_off = ref.lambda_sequence(dh_on, dh_off, targets=targets, **cfg)
    ctrl = controller(**cfg)
    assert ctrl.lam == pytest.approx(0.0 if cfg.get("warmup_steps") else cfg.get("lambda0", 1.0))
    got, bounds = [], []
    for a, b in zip(dh_on, dh_off, strict=True):
        got.append(ctrl.update(a, b))
        bounds.append(ctrl.at_bound)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    if cfg["mode"] == "red":
        np.testing.assert_allclose(ctrl.target, targets[-1], rtol=1e-12)
        assert bounds == [ref.at_bound(x, ctrl.lambda_min, ctrl.lambda_max) for x in targets]
        assert set(bounds) == {-1, 0, 1}
    else:
        assert set(bounds) == {0}
    assert ctrl.lam == got[-1]
    state = ctrl.state_dict()
    np.testing.assert_allclose([state["D_on"], state["D_off"]], [d_on, d_off], rtol=1e-12)
    if cfg["mode"] == "red":  # both branches and both bounds of the update were visited
        top = ctrl.lambda_max if cfg.get("rule", "sign") == "sign" else 0.95 * ctrl.lambda_max
        assert max(got[:40]) >= top and got[69] < 0.3 * got[39]


@pytest.mark.parametrize("mode", ["red", "schedule"])
def test_controller_state_round_trip(mode):
    dh_on, dh_off = _dh(3)
    cfg = dict(mode=mode, warmup_steps=5, total_steps=50)
    ctrl = controller(**cfg)
    straight = [ctrl.update(a, b) for a, b in zip(dh_on, dh_off, strict=True)]
    first = controller(**cfg)
    for a, b in zip(dh_on[:25], dh_off[:25], strict=True):
        first.update(a, b)
    resumed = controller(**cfg)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert resumed.lam == first.lam and resumed.state_dict() == first.state_dict()
    rest = [resumed.update(a, b) for a, b in zip(dh_on[25:], dh_off[25:], strict=True)]
    assert rest == straight[25:]


def test_controller_skips_non_finite():
    dh_on, dh_off = (x[:20] for x in _dh(4))
    noisy_on, noisy_off = dh_on.copy(), dh_off.copy()
    noisy_on[0], noisy_off[7], noisy_on[12] = math.nan, math.inf, -math.inf
    ctrl = controller(rule="sign")
    got = [ctrl.update(a, b) for a, b in zip(noisy_on, noisy_off, strict=True)]
    want, d_on, d_off = ref.lambda_sequence(noisy_on, noisy_off, mode="red", rule="sign")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == 1.0 and got[7] == got[6]  # skipped steps keep lambda
    state = ctrl.state_dict()
    assert state["step"] == 20 and state["skipped"] == 3
    assert math.isfinite(state["D_on"]) and state["D_on"] == pytest.approx(d_on, rel=1e-12)


def test_controller_advantages():
    rewards, off, has = _rewards(5)
    ctrl = controller(offline_in_group=False, std_norm=False, shift="step", tau=0.75)
    adv, adv_off, acc, s = ctrl.advantages(rewards, off, has)
    want_adv, want_off, want_acc = ref.group_advantages(
        rewards, off, has, offline_in_group=False, std_norm=False, eps=1e-6
    )
    np.testing.assert_allclose(adv, want_adv, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(adv_off, want_off, rtol=1e-6)
    np.testing.assert_allclose(s, ref.policy_shift(want_acc, "step", 0.75))


@pytest.mark.parametrize(
    "kw",
    [
        dict(mode="auto"),
        dict(shift="cosine"),
        dict(lambda_min=1.0, lambda_max=0.5),
        dict(lambda0=10.0),
        dict(alpha=0.0),
        dict(ema=1.0),
        dict(delta=0.0),
        dict(rule="pid"),
        dict(entropy_change="both"),
    ],
)
def test_controller_bad_config(kw):
    with pytest.raises(ValueError, match="RedController"):
        controller(**kw)


def _both_falling(seed, n=20):
    """Both entropies falling every step: the rollouts' 1.5x faster for n steps, then the
    traces' 1.5x faster for n steps (small noise)."""
    rng = np.random.default_rng(seed)
    off = -0.02 + 0.002 * rng.standard_normal(2 * n)
    on = np.concatenate([1.5 * off[:n], off[n:] / 1.5]) + 0.002 * rng.standard_normal(2 * n)
    assert np.all(on < 0) and np.all(off < 0)
    return on, off


def test_ratio_moves_where_sign_sits_at_its_floor():
    """A run at its floor (lambda0 = lambda_min, as configs/default.yaml): both entropies fall,
    so sign's target is lambda_min on every step; ratio's rises while the rollouts' entropy
    falls faster, then comes back down, inside the bounds, as the reference says."""
    dh_on, dh_off = _both_falling(6)
    kw = dict(lambda0=0.5, lambda_min=0.5, lambda_max=5.0)
    traj = {}
    for rule in ("sign", "ratio"):
        ctrl = controller(rule=rule, **kw)
        got, bounds = [], []
        for a, b in zip(dh_on, dh_off, strict=True):
            got.append(ctrl.update(a, b))
            bounds.append(ctrl.at_bound)
        targets = []
        want, _, _ = ref.lambda_sequence(
            dh_on, dh_off, mode="red", rule=rule, targets=targets, **kw
        )
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert bounds == [ref.at_bound(x, 0.5, 5.0) for x in targets]
        traj[rule] = (np.array(got), bounds)
    sign, sign_bounds = traj["sign"]
    assert np.all(sign == 0.5) and sign_bounds == [-1] * 40
    ratio, ratio_bounds = traj["ratio"]
    assert np.all(np.diff(ratio[:20]) > 0) and ratio[19] > 1.5 * 0.5  # more imitation
    # The EMAs turn (|D_off| > |D_on|): lambda peaks at the 28th update, then falls (RL).
    assert np.all(np.diff(ratio[27:]) < 0) and ratio[-1] < 0.9 * ratio.max()
    assert np.all((ratio > 0.5) & (ratio < 5.0)) and ratio_bounds[:30] == [0] * 30


def test_ratio_has_no_spikes():
    """A near-zero D_off: sign's target is a ratio over delta and lambda jumps to lambda_max in
    one step; ratio's target is at most 2 lambda, so lambda moves by at most alpha lambda."""
    sign, ratio = controller(rule="sign"), controller(rule="ratio")
    assert sign.update(-0.01, 1e-6) == 5.0 and sign.at_bound == 1
    assert ratio.update(-0.01, 1e-6) == pytest.approx(1.1, rel=1e-12) and ratio.at_bound == 0
    # D_off crossing zero (its sign flips every few steps), D_on falling: bounded steps.
    rng = np.random.default_rng(7)
    dh_on = -np.abs(rng.normal(0.01, 0.005, 60))
    dh_off = 0.01 * np.sin(np.arange(60) / 3.0) + 0.001 * rng.standard_normal(60)
    ctrl = controller(rule="ratio")
    got = [ctrl.update(a, b) for a, b in zip(dh_on, dh_off, strict=True)]
    want, _, d_off = ref.lambda_sequence(dh_on, dh_off, mode="red", rule="ratio")
    np.testing.assert_allclose(got, want, rtol=1e-12)
    step = np.array(got[1:]) / np.array(got[:-1])
    assert np.all((step >= 0.9 - 1e-12) & (step <= 1.1 + 1e-12))


def test_at_bound_edges():
    ctrl = controller(rule="ratio", lambda_min=0.5, lambda_max=5.0)
    for target, want in [
        (0.5, -1), (0.505, -1), (0.5051, 0), (2.0, 0), (4.9499, 0), (4.95, 1), (5.0, 1),
    ]:  # fmt: skip
        ctrl.target = target
        assert ctrl.at_bound == want == ref.at_bound(target, 0.5, 5.0), target
    fixed = controller(mode="fixed")
    fixed.update(-0.01, 0.0)
    assert fixed.at_bound == 0


def _entropies(seed, n=30):
    """Pre-update batch mean entropies of a run: slowly falling, noisy, one non-finite step."""
    rng = np.random.default_rng(seed)
    h_on = 2.0 - 0.01 * np.arange(n) + 0.003 * rng.standard_normal(n)
    h_off = 1.5 - 0.006 * np.arange(n) + 0.003 * rng.standard_normal(n)
    h_on[11] = math.nan
    return h_on, h_off


def _drive(ctrl, h_on, h_off):
    """The trainer's loop with entropy_change=drift: (dH or None, lambda) per step."""
    out = []
    for a, b in zip(h_on, h_off, strict=True):
        dh = ctrl.entropy_changes({"entropy_on": a, "entropy_off": b, "dH_on": 9.0, "dH_off": 9.0})
        out.append((dh, ctrl.update(*dh) if dh is not None else ctrl.lam))
    return out


@pytest.mark.parametrize("rule", ["sign", "ratio"])
def test_drift_matches_reference_and_resumes(rule):
    h_on, h_off = _entropies(8)
    ctrl = controller(rule=rule, entropy_change="drift")
    straight = _drive(ctrl, h_on, h_off)
    want_dh = ref.drift(h_on, h_off)
    assert [dh is None for dh, _ in straight] == [dh is None for dh in want_dh]
    assert want_dh[0] is None and want_dh[12] is None and want_dh[11] is not None
    for (dh, _), want in zip(straight, want_dh, strict=True):
        if want is not None:  # the difference of the given entropies, exactly
            assert dh == want or (math.isnan(dh[0]) and math.isnan(want[0]))
    kept = [dh for dh in want_dh if dh is not None]
    want_lam, _, _ = ref.lambda_sequence(*zip(*kept, strict=True), mode="red", rule=rule)
    got = [lam for dh, lam in straight if dh is not None]
    np.testing.assert_allclose(got, want_lam, rtol=1e-12)
    assert ctrl.skipped == 1 and ctrl.step == len(kept)
    # Resume from the state after step 17: the same trajectory (the state holds H(17)).
    first = controller(rule=rule, entropy_change="drift")
    _drive(first, h_on[:18], h_off[:18])
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["H_on_prev"], state["H_off_prev"]) == (h_on[17], h_off[17])
    resumed = controller(rule=rule, entropy_change="drift")
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    assert _drive(resumed, h_on[18:], h_off[18:]) == straight[18:]


def test_entropy_changes_probe_and_old_state():
    m = {"dH_on": -0.02, "dH_off": 0.01, "entropy_on": 1.0, "entropy_off": 2.0}
    assert controller(entropy_change="probe").entropy_changes(m) == (-0.02, 0.01)
    # A state written before drift existed loads, with no previous entropies.
    old = {"lam": 0.7, "D_on": -0.01, "D_off": 0.02, "step": 5, "initialised": True}
    ctrl = controller(entropy_change="drift")
    ctrl.load_state_dict(old)
    assert ctrl.lam == 0.7 and ctrl.h_prev is None and ctrl.target == ctrl.lambda0
    assert ctrl.entropy_changes(m) is None and ctrl.entropy_changes(m) == (0.0, 0.0)
