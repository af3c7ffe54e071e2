"""Dynamic sampling (rollout.filter_groups): the filter against a hand case, a group of equal
rewards has no Recall gradient, a filtered run refills to full batches (its counters and rows
recomputed from the rewards it saw), and a filtered run resumes exactly."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_run

from redjax import config, distributed, groups, objective, red, runs, train
from redjax.checkpoint import Checkpoints

B, G, REFILLS, STEPS = 4, 4, 1, 3
TINY = tiny_run(
    B, G, "eval.samples_every=0", "reward.workers=0",
    "train.save_every=1000",  # the SIGTERM and the last step save
    "optim.warmup_steps=0", f"train.steps={STEPS}",
    # RED with the trace outside the group: a group is filtered on its rollouts' rewards alone,
    # and a filtered prompt's trace still trains with A_off = 1
    "algo=red", "red.offline_in_group=false",
    "reward.fn=_reward_plugins:starts_with_digit",  # a random policy: equal and mixed groups
    "rollout.filter_groups=true", f"rollout.max_refills={REFILLS}",
)  # fmt: skip
VOLATILE = ("time/", "tokens_per_sec", "verifier_timeouts")


# ----------------------------------------------------------------------------- the filter
def test_keep_a_hand_case():
    nan = np.nan
    rewards = np.array(
        [
            [1, 1, 1, nan],  # all equal: dropped
            [0, 1, 0, nan],  # kept
            [0, 0, 0, 1],  # equal rollouts, a right trace in the group: kept (A != 0)
            [0.5, 0.5, 0.5, 0.5],  # dropped
            [0, 0, 1, 0],  # kept, but past want=2
        ]
    )
    assert groups.has_signal(rewards).tolist() == [False, True, True, False, True]
    assert groups.keep(rewards, 2).tolist() == [1, 2]
    assert groups.keep(rewards, 5).tolist() == [1, 2, 4, -1, -1]
    both = groups.group_rewards(rewards[:, :3], np.array([1, 1, 1, 0, 0]), [0, 0, 1, 1, 0])
    np.testing.assert_array_equal(both[:, 3], [nan, nan, 1, 0, nan])


def test_an_equal_group_has_no_recall_gradient():
    """Equal rewards give advantages of exactly 0 (with and without the std division), so the
    group's rows add nothing to the Recall gradient; the filter drops exactly such groups."""
    rew = np.array([[1.0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]])
    for std_norm in (True, False):
        adv, _, _ = red.group_advantages(rew, offline_in_group=False, std_norm=std_norm)
        assert (adv[[0, 2]] == 0).all() and (adv[1] != 0).all()
    rng = np.random.default_rng(0)
    logp = jnp.asarray(rng.normal(-2, 0.5, (12, 5)), jnp.float32)
    old = logp + jnp.asarray(rng.normal(0, 0.1, (12, 5)), jnp.float32)
    mask = jnp.ones((12, 5))
    loss = lambda lp: objective.rl_loss(lp, old, adv.reshape(-1), mask, eps_low=0.2, eps_high=0.28)
    grad = np.asarray(jax.grad(lambda lp: loss(lp)[0])(logp)).reshape(3, G, 5)
    assert (grad[[0, 2]] == 0).all() and (np.abs(grad[1]) > 0).all()
    # The filter's criterion is the advantages': for random 0/1 groups, with a trace in the group
    # or not, a group has a signal exactly where some advantage is not 0.
    rew = rng.integers(0, 2, (200, 3)).astype(float)
    off, has = rng.integers(0, 2, 200).astype(float), rng.random(200) < 0.5
    for in_group in (True, False):
        adv, _, _ = red.group_advantages(rew, off, has, offline_in_group=in_group)
        signal_ = groups.has_signal(groups.group_rewards(rew, off, has & in_group))
        np.testing.assert_array_equal(signal_, (adv != 0).any(1))


def test_config_checks_and_old_runs_resume(capsys):
    assert config.load().rollout.filter_groups is False  # off by default
    for bad, key in (
        (["rollout.max_refills=-1"], "rollout.max_refills"),
        (["algo=sft", "rollout.filter_groups=true"], "rollout.filter_groups"),
        (["rollout.filter_groups=true", "rollout.group_size=1"], "rollout.filter_groups"),
    ):
        with pytest.raises(ValueError, match=key):
            config.load(None, bad)
    # A run saved before these keys existed resumes (it ran with their defaults)...
    cfg = config.load(None, ["train.steps=10"])
    old = config.to_dict(cfg)
    for k in ("filter_groups", "max_refills"):
        del old["rollout"][k]
    assert runs.check_resume(cfg, {"step": 4, "config": old}) == 10
    # ... but not with filtering turned on.
    on = config.load(None, ["train.steps=10", "rollout.filter_groups=true"])
    with pytest.raises(ValueError, match="rollout.filter_groups: False -> True"):
        runs.check_resume(on, {"step": 4, "config": old})


# ----------------------------------------------------------------------------- runs
def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(ln) for ln in f]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A filtered RED run of STEPS steps, with every pass's rollouts and rewards and every
    update's rows recorded."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(os.path.dirname(__file__))  # _reward_plugins
    passes, updates = [], []
    score, update = train.score, train.update

    def scored(r, got, phase):
        s = score(r, got, phase)
        passes.append((len(updates), got.ro.tokens, got.ro.mask, s))
        return s

    def updated(r, rows, lam, it):
        updates.append(jax.tree.map(np.asarray, rows))
        return update(r, rows, lam, it)

    mp.setattr(train, "score", scored)
    mp.setattr(train, "update", updated)
    run_dir = str(tmp_path_factory.mktemp("filtered") / "run")
    try:
        train.run(None, [*TINY, f"train.run_dir={run_dir}"])
    finally:
        mp.undo()
    return run_dir, passes, updates


def test_a_filtered_run_refills_to_full_batches(reference):
    """Each step draws batches until B groups have a spread of rewards or the refills run out,
    trains the rollouts of the first B such groups and the traces of every prompt drawn; its
    counters and rows equal a recompute from the rollouts and rewards it saw."""
    run_dir, passes, updates = reference
    rows = [m for m in metrics(run_dir) if "loss" in m]
    assert len(rows) == len(updates) == STEPS
    full = short = 0  # steps that refilled to B groups / that ran out of refills
    for it, (m, trained_rows) in enumerate(zip(rows, updates, strict=True)):
        mine = [p for p in passes if p[0] == it]
        rew = np.concatenate([p[3].rew for p in mine]).astype(np.float64)
        equal = rew.max(1) == rew.min(1)
        informative = np.flatnonzero(~equal)
        # the rule: one more batch while fewer than B groups have a signal and refills remain
        for k in range(1, len(mine)):
            assert (~equal[: k * B]).sum() < B
        assert len(mine) == 1 + REFILLS or (~equal).sum() >= B
        kept = informative[:B]
        full += len(mine) > 1 and len(kept) == B
        short += len(kept) < B
        assert m["refills"] == len(mine) - 1 and m["prompts_consumed"] == B * len(mine)
        assert m["groups_filtered"] == equal.sum() and m["groups_trained"] == len(kept)
        assert m["rollouts"] == B * len(mine) * G
        # the rows: B * G rollout rows, the kept groups' with their tokens, then every trace
        online = trained_rows.online & trained_rows.resp_mask.any(1)
        assert trained_rows.online[: B * G].all() and online.sum() == len(kept) * G
        assert online[: len(kept) * G].all()
        width = max(p[1].shape[1] for p in mine)
        tokens = np.concatenate([np.pad(p[1], ((0, 0), (0, width - p[1].shape[1]))) for p in mine])
        want = tokens.reshape(-1, G, width)[kept].reshape(len(kept) * G, width)
        got = trained_rows.resp_ids[: len(kept) * G]
        n = min(width, got.shape[1])
        mask = np.concatenate([np.pad(p[2], ((0, 0), (0, width - p[2].shape[1]))) for p in mine])
        live = mask.reshape(-1, G, width)[kept].reshape(len(kept) * G, width)[:, :n]
        np.testing.assert_array_equal(np.where(live, got[:, :n], 0), np.where(live, want[:, :n], 0))
        mu, sd = rew.mean(1, keepdims=True), rew.std(1, keepdims=True)
        adv = ((rew - mu) / (sd + 1e-6))[kept].reshape(-1)  # the trace is not in the group
        np.testing.assert_allclose(trained_rows.adv[: len(kept) * G], adv, rtol=1e-5, atol=1e-6)
        traces = ~trained_rows.online & trained_rows.resp_mask.any(1)
        has_off = np.concatenate([p[3].has_off for p in mine])
        assert traces.sum() == has_off.sum() == B * len(mine)  # filtered prompts' traces too
        np.testing.assert_allclose(trained_rows.adv[traces], 1.0)
        acc = np.concatenate([p[3].correct for p in mine]).mean(1)
        np.testing.assert_allclose(trained_rows.shift[traces], acc[has_off], atol=1e-6)
    assert full and short, "the run did not exercise both a full refill and running out"


def test_a_filtered_run_resumes_exactly(reference, tmp_path, monkeypatch, capsys):
    """Stopped by SIGTERM after step 1 and resumed, a filtered run draws the same prompts (the
    digests and counters of every step) and ends with the same parameters and loader position
    as the uninterrupted one."""
    ref_dir = reference[0]
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    run_dir = str(tmp_path / "run")
    report = train.report

    def report_then_signal(r, done, m, t):
        report(r, done, m, t)
        if done == 1:
            signal.raise_signal(signal.SIGTERM)  # saves at the end of this step, then stops

    monkeypatch.setattr(train, "report", report_then_signal)
    with pytest.raises(distributed.Stopped):
        train.run(None, [*TINY, f"train.run_dir={run_dir}"])
    monkeypatch.setattr(train, "report", report)
    capsys.readouterr()
    train.run(None, [*TINY, f"train.run_dir={run_dir}"])
    assert "from step 1" in capsys.readouterr().err  # resumed, not started again
    assert metrics(run_dir) == metrics(ref_dir)
    hosts = []
    for d in (run_dir, ref_dir):
        ckpts = Checkpoints(os.path.join(d, "checkpoints"), keep=3)
        hosts.append(ckpts.saved_host())
        ckpts.close()
    assert hosts[0]["loader"] == hosts[1]["loader"]
    consumed = sum(m["prompts_consumed"] for m in metrics(ref_dir) if "loss" in m)
    assert hosts[0]["loader"]["next_batch"] * B == consumed
    a, b = (runs.load_model(d)[0].params for d in (run_dir, ref_dir))
    jax.tree.map(np.testing.assert_array_equal, a, b)
