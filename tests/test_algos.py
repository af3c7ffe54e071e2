"""Each method defined once (redjax.algos): what it probes, and how its controller steps."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_step import CFG, host_rows, jitted_step

from redjax import config, sharding, step, train
from redjax.algos import Plan
from redjax.red import RedController


def whiles(fn, *args) -> int:
    """While loops (layer scans, log-prob chunk maps) in the lowered program."""
    return fn.lower(*args).as_text().count("stablehlo.while")


def test_fixed_mix_step_has_one_forward_fewer_than_red():
    """fixed_mix's lambda does not adapt, so its step has no probe forward: exactly the loops
    of one scoring forward fewer than the step of RED measuring dH by the probe; RED measuring
    it by the drift (the default) has none either."""
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    rows = sharding.put_local(host_rows(), mesh)
    counts = {}
    for name, over in {
        "red": ["algo=red", "red.entropy_change=probe"],
        "red_drift": ["algo=red", "red.entropy_change=drift"],
        "fixed_mix": ["algo=fixed_mix"],
    }.items():
        sc = step.StepConfig.from_config(config.load(None, over), chunk=24)
        state, fn = jitted_step(CFG, sc, mesh)
        counts[name] = whiles(fn, state, rows, jnp.float32(1.0))
    score = jax.jit(lambda p, r: step.score(p, CFG, r, 24, mesh))
    forward = whiles(score, state["params"], rows.probe)
    assert forward > 0 and counts["red"] - counts["fixed_mix"] == forward, (counts, forward)
    assert counts["red_drift"] == counts["fixed_mix"], counts


def run_of(cfg: config.Config) -> types.SimpleNamespace:
    """The parts of a Run that adjust_lambda reads."""
    ctrl = RedController.from_config(cfg.red, cfg.rl, cfg.train.steps)
    return types.SimpleNamespace(plan=Plan.from_config(cfg), ctrl=ctrl)


def test_schedule_moves_under_every_algo():
    """The controller's step count advances on every training step, so red.lam=schedule
    follows training under grpo too (it sat at its first value before)."""
    cfg = config.load(
        None, ["algo=grpo", "red.lam=schedule", "red.lambda_warmup=4", "train.steps=8"]
    )
    r = run_of(cfg)
    t = train.Targets(np.zeros((1, 1)), np.zeros(1), np.zeros(1), 0.0, False)
    lams = []
    for _ in range(6):
        lams.append(r.ctrl.lam)
        train.adjust_lambda(r, {"skipped": 0.0}, t)
    assert lams[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_drift_reads_the_change_of_the_batch_entropies():
    """red.entropy_change=drift: the controller reads entropy_on / entropy_off of this step
    minus the last one's (no probe forward), and the logged dH are those differences."""
    cfg = config.load(None, ["red.entropy_change=drift", "red.rule=ratio", "red.ema=0"])
    r = run_of(cfg)
    t = train.Targets(np.zeros((1, 1)), np.zeros(1), np.zeros(1), 1.0, True)
    h = [(2.0, 1.0), (1.8, 0.95), (1.5, 0.9), (1.45, 0.95)]
    logged = []
    for on, off in h:
        m = {"skipped": 0.0, "entropy_on": on, "entropy_off": off, "dH_on": np.nan}
        train.adjust_lambda(r, m, t)
        logged.append((m["dH_on"], m["dH_off"]) if "dH_off" in m else None)
    want = [None] + [(h[i][0] - h[i - 1][0], h[i][1] - h[i - 1][1]) for i in range(1, 4)]
    assert logged[0] is None or np.isnan(logged[0][0])
    np.testing.assert_allclose(logged[1:], want[1:], rtol=1e-12)
    assert (r.ctrl.d_on, r.ctrl.d_off) == pytest.approx(want[-1])  # ema 0: the last change
    assert r.ctrl.step == 4


def test_presets_come_from_the_methods():
    from redjax.algos import METHODS

    for name, method in METHODS.items():
        extra = ["red.sft_steps=2", "train.steps=4"] if method.then else []
        red = config.load(None, [f"algo={name}", *extra]).red
        for key, value in method.red.items():
            assert getattr(red, key) == value, (name, key)
    assert dataclasses.asdict(config.load(None).red)["lam"] == "red"
