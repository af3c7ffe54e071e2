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
    dict(mode="red"),
    dict(mode="red", alpha=0.5, ema=0.5, lambda0=0.3, delta=1e-3),
    dict(mode="fixed", lambda0=0.7),
    dict(mode="schedule", lambda0=2.0, warmup_steps=10, total_steps=40),
    dict(mode="schedule", lambda0=1.0, warmup_steps=0, total_steps=25),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_controller_matches_reference(cfg):
    dh_on, dh_off = _dh(2)
    want, d_on, d_off = ref.lambda_sequence(dh_on, dh_off, **cfg)
    ctrl = controller(**cfg)
    assert ctrl.lam == pytest.approx(0.0 if cfg.get("warmup_steps") else cfg.get("lambda0", 1.0))
    got = [ctrl.update(a, b) for a, b in zip(dh_on, dh_off, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert ctrl.lam == got[-1]
    state = ctrl.state_dict()
    np.testing.assert_allclose([state["D_on"], state["D_off"]], [d_on, d_off], rtol=1e-12)
    if cfg["mode"] == "red":  # both branches and both bounds of the update were visited
        assert max(got[:40]) == ctrl.lambda_max and got[69] < 0.3 * got[39]


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
    ctrl = controller()
    got = [ctrl.update(a, b) for a, b in zip(noisy_on, noisy_off, strict=True)]
    want, d_on, d_off = ref.lambda_sequence(noisy_on, noisy_off, mode="red")
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
    ],
)
def test_controller_bad_config(kw):
    with pytest.raises(ValueError, match="RedController"):
        controller(**kw)
