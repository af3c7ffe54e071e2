"""Verifier: worker pool results equal in-process results; time-outs, crashes and recovery."""

import math
import os
import signal
import time

import numpy as np
import pytest
from helpers import VERIFIER
from reward_cases import CASES, B

from redjax.rewards import Verifier, math_reward

TIMEOUT = 1.0  # per-item time-out of the test pools
SLACK = 10.0  # seconds allowed on top of it: worker restart and a loaded 2-core machine
POOL = dict(VERIFIER, timeout=TIMEOUT)  # the settings of the two module-scoped pools

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def math_pool():
    with Verifier("math", workers=2, **POOL) as v:
        yield v


@pytest.fixture(scope="module")
def plugin_pool():
    with Verifier("_reward_plugins:misbehave", workers=2, **POOL) as v:
        yield v


def test_pool_matches_table_and_in_process(math_pool):
    cases = CASES[::3]
    completions = [c for _, _, c, _ in cases]
    golds = [g for _, g, _, _ in cases]
    scores = math_pool.score(completions, golds)
    assert scores.dtype == np.float32 and scores.shape == (len(cases),)
    np.testing.assert_array_equal(scores, [e for *_, e in cases])
    np.testing.assert_array_equal(
        scores, [math_reward(c, g) for c, g in zip(completions, golds, strict=True)]
    )
    assert math_pool.score([], []).shape == (0,)


ADVERSARIAL = {
    "tower": "\\boxed{9^{9^{9^{9}}}}",
    "python_tower": "\\boxed{9^9^9^9}",
    "python_pow": "the answer is 10**10**10",
    "factorial": "\\boxed{(10^{6})!}",
    "nested_parens": "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
    "nested_braces": "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "nested_frac": "\\boxed{" + "\\frac{1}{" * 2000 + "2" + "}" * 2000 + "}",
    "megabyte": "x" * (1 << 20) + "\\boxed{2}",
    "megabyte_box": "\\boxed{" + "1+" * (1 << 19) + "1}",
    "unbalanced": "\\boxed{\\frac{1}{2" + "{" * 1000,
    "null_bytes": "\x00" * 1000 + "\\boxed{\x00\\frac{\x00}{\x00}}",
    "injection": "\\boxed{__import__('os')._exit(3)}",
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_completions_score_zero_in_time(math_pool, name):
    start = time.monotonic()
    scores = math_pool.score([ADVERSARIAL[name]], ["1"])
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert scores.tolist() == [0.0]
    assert math_pool.score([B("2"), B("\\frac{1}{2}")], ["2", "0.5"]).tolist() == [1.0, 1.0]


def test_adversarial_batch_with_good_items(math_pool):
    bad = list(ADVERSARIAL.values())
    completions = [x for b in bad for x in (b, B("7"))]
    scores = math_pool.score(completions, ["7"] * len(completions))
    assert scores.tolist() == [0.0, 1.0] * len(bad)


def test_hanging_reward_times_out_and_pool_recovers(plugin_pool):
    before = plugin_pool.timeouts
    start = time.monotonic()
    assert plugin_pool.score(["SLEEP"], ["x"]).tolist() == [0.0]
    assert time.monotonic() - start < TIMEOUT + SLACK
    assert plugin_pool.timeouts == before + 1
    assert plugin_pool.score(["a", "b"], ["a", "c"]).tolist() == [1.0, 0.0]


def test_dying_and_failing_rewards_score_zero(plugin_pool):
    completions = ["a", "EXIT", "b", "SEGV", "RAISE", "NAN", "SLEEP", "c", "EXIT", "d"]
    golds = ["a", "x", "b", "x", "x", "x", "x", "c", "x", "e"]
    before = plugin_pool.stats()
    scores = plugin_pool.score(completions, golds)
    assert scores.tolist() == [1, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    after = plugin_pool.stats()
    assert after["crashes"] - before["crashes"] == 3
    assert after["failures"] - before["failures"] == 2
    assert after["timeouts"] - before["timeouts"] == 1
    assert after["restarts"] - before["restarts"] == 4
    assert "reward failed on purpose" in plugin_pool.last_error or "nan" in plugin_pool.last_error
    assert plugin_pool.score(["ok"] * 5, ["ok"] * 5).tolist() == [1.0] * 5


def test_worker_killed_between_calls_is_replaced(plugin_pool):
    os.kill(plugin_pool._pool[0].proc.pid, signal.SIGKILL)
    plugin_pool._pool[0].proc.wait()
    assert plugin_pool.score(["a", "b", "c"], ["a", "b", "x"]).tolist() == [1.0, 1.0, 0.0]


def test_workers_do_not_import_jax():
    with Verifier("_reward_plugins:has_jax", workers=1, **VERIFIER) as v:
        assert v.score(["x"], ["x"]).tolist() == [0.0]


def test_format_weight_and_think_format():
    completions = [B("2"), "Answer: 2", B("3"), "<think>hm</think> \\boxed{2}"]
    golds = ["2"] * 4
    for workers in (0, 1):
        with Verifier("math", workers=workers, **dict(VERIFIER, format_weight=0.5)) as v:
            np.testing.assert_allclose(v.score(completions, golds), [1.5, 1.0, 0.5, 1.5])
        think = dict(VERIFIER, format_weight=0.5, think_format=True)
        with Verifier("math", workers=workers, **think) as v:
            np.testing.assert_allclose(v.score(completions, golds), [1.0, 1.0, 0.0, 1.5])


def test_dotted_paths_and_callables():
    import _reward_plugins

    for reward in ("_reward_plugins.exact", "_reward_plugins:exact", _reward_plugins.exact):
        with Verifier(reward, workers=1, **VERIFIER) as v:
            assert v.score(["a", "b"], ["a", "a"]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="workers=0"):
        Verifier(lambda c, g: 1.0, workers=1, **VERIFIER)
    with Verifier(lambda c, g: float(len(c)), workers=0, **VERIFIER) as v:
        assert v.score(["abc"], ["x"]).tolist() == [3.0]


def test_in_process_mode_catches_errors():
    with Verifier("_reward_plugins:misbehave", workers=0, **VERIFIER) as v:
        assert v.score(["a", "RAISE", "NAN"], ["a", "x", "x"]).tolist() == [1.0, 0.0, 0.0]
        assert v.failures == 2 and "RuntimeError" in v.last_error or "nan" in v.last_error


@pytest.mark.parametrize("name", ["nope", "no_such_module:fn", "_reward_plugins:missing"])
def test_bad_reward_name_raises_value_error(name):
    with pytest.raises(ValueError, match=name):
        Verifier(name, workers=1, **VERIFIER)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="workers"):
        Verifier("math", workers=-1, **VERIFIER)
    with pytest.raises(ValueError, match="timeout"):
        Verifier("math", workers=2, **dict(VERIFIER, timeout=0))
    with pytest.raises(ValueError, match="format_weight"):
        Verifier("math", workers=2, **dict(VERIFIER, format_weight=math.nan))
    with (
        Verifier("math", workers=0, **VERIFIER) as v,
        pytest.raises(ValueError, match="2 completions but 1 golds"),
    ):
        v.score(["a", "b"], ["a"])


def test_close_stops_workers():
    v = Verifier("_reward_plugins:exact", workers=2, **VERIFIER)
    assert v.score(["a"], ["a"]).tolist() == [1.0]
    procs = [w.proc for w in v._pool]
    v.close()
    v.close()
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="close"):
        v.score(["a"], ["a"])


def test_adversarial_completions_with_extract_any():
    """extract="any" reads more of the text: every adversarial completion still scores 0 within
    the default time-out (reward.timeout, 5 s), and no worker crashes or times out."""
    bad = list(ADVERSARIAL.values())
    with Verifier("math", workers=2, **dict(VERIFIER, extract="any")) as v:
        assert v.score([B("1")] * 2, ["1"] * 2).tolist() == [1.0, 1.0]  # started and warm
        assert v.score(bad, ["1"] * len(bad)).tolist() == [0.0] * len(bad)
        assert v.stats()["crashes"] == 0 and v.stats()["timeouts"] == 0
        assert v.score(["so we get $7$.", B("7")], ["7", "7"]).tolist() == [1.0, 1.0]
