"""reward.fns: a weighted list of reward functions (redjax.rewards.combine) scored in the pool.

The weighted sum against hand computations, correctness from the deciding entry alone, the
problem record reaching a plugin through the real data pipeline and the trainer's scoring, the
time-out on a slow function of the list, and the one-line config errors.
"""

import json
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import VERIFIER
from reward_cases import B

from redjax import config, runs
from redjax.rewards import Verifier, combine
from redjax.rewards.registry import length_reward

pytestmark = pytest.mark.timeout(120)

THREE = [
    {"fn": "math", "weight": 1.0},
    {"fn": "format", "weight": 0.25},
    {"fn": "length", "weight": 0.5, "max_chars": 20, "ramp_chars": 10},
]


@pytest.mark.parametrize("workers", [0, 1])
def test_three_fns_weighted_sum_by_hand(workers):
    """reward = 1 * math + 0.25 * format + 0.5 * length, length 0 up to 10 characters, then
    (10 - n) / 10 down to -1 at 20, -1 past it; correct = math alone."""
    completions = [
        "\\boxed{4}",  # 9 chars: math 1, format 1, length 0
        "so it is \\boxed{5}",  # 18 chars: math 0, format 1, length (10 - 18) / 10
        "no answer here, sorry!!!",  # 24 chars: math 0, format 0, length -1
        "\\boxed{4}" + " ." * 3,  # 15 chars: math 1, format 1, length (10 - 15) / 10
    ]
    assert [len(c) for c in completions] == [9, 18, 24, 15]
    by_hand = [
        1 + 0.25 * 1 + 0.5 * 0,
        0 + 0.25 * 1 + 0.5 * (10 - 18) / 10,
        0 + 0.25 * 0 + 0.5 * -1,
        1 + 0.25 * 1 + 0.5 * (10 - 15) / 10,
    ]
    with Verifier(THREE, workers=workers, **VERIFIER) as v:
        judged = v.judge(completions, ["4"] * 4)
    np.testing.assert_allclose(judged.reward, by_hand, rtol=1e-6)
    assert judged.correct.tolist() == [True, False, False, True]


def test_length_at_its_edges():
    """The length penalty at max_chars - ramp_chars, inside the ramp, at max_chars and past it;
    ramp_chars 0 is a step at max_chars."""
    fn = length_reward
    values = [fn("x" * n, "", max_chars=8, ramp_chars=4) for n in (0, 4, 5, 7, 8, 9)]
    np.testing.assert_allclose(values, [0, 0, -0.25, -0.75, -1, -1])
    assert [fn("x" * n, "", max_chars=8, ramp_chars=0) for n in (8, 9)] == [0.0, -1.0]


def test_correctness_is_the_deciding_entry_alone():
    """A format weight of 5 makes a boxed wrong answer score 5, never correct; an entry marked
    correct: true decides whatever the math entry and the weights say."""
    fns = [{"fn": "math", "weight": 1.0}, {"fn": "format", "weight": 5.0}]
    with Verifier(fns, workers=0, **VERIFIER) as v:
        judged = v.judge([B("3"), B("4"), "no box"], ["4"] * 3)
    assert judged.reward.tolist() == [5.0, 6.0, 0.0]
    assert judged.correct.tolist() == [False, True, False]
    marked = [
        {"fn": "math", "weight": 1.0},
        {"fn": "_reward_plugins:exact", "weight": 0.0, "correct": True},
    ]
    with Verifier(marked, workers=1, **VERIFIER) as v:
        judged = v.judge([B("4"), "4"], ["4", "4"])
    assert judged.reward.tolist() == [1.0, 0.0]  # math reads no answer in a bare "4"
    assert judged.correct.tolist() == [False, True]  # exact: completion == gold


def test_old_keys_are_the_two_entry_list():
    """reward.fn + reward.format_weight are [{fn, weight 1, decides}, {format, format_weight}]
    and score as that list does; format_weight 0 leaves the format entry out."""
    two = combine.entries("math", 0.5)
    assert [(e.fn, e.weight, e.correct, e.params) for e in two] == [
        ("math", 1.0, True, {}),
        ("format", 0.5, False, {}),
    ]
    assert [e.fn for e in combine.entries("_reward_plugins:exact", 0.0)] == [
        "_reward_plugins:exact"
    ]
    texts, golds = [B("3"), B("4"), "the answer is 4"], ["4"] * 3
    cfg = config.load(None, ["reward.format_weight=0.5", "reward.workers=0"])
    listed = config.load(
        None, ["reward.fns=[{fn: math, weight: 1}, {fn: format, weight: 0.5}]", "reward.workers=0"]
    )
    with Verifier.from_config(cfg.reward) as old, Verifier.from_config(listed.reward) as new:
        a, b = old.judge(texts, golds), new.judge(texts, golds)
    assert a.reward.tolist() == b.reward.tolist() == [0.5, 1.5, 1.0]
    assert a.correct.tolist() == b.correct.tolist() == [False, True, True]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


ROWS = [  # a user's task with a metadata column a reward reads
    {"prompt": f"What is {a} + {a}?", "answer": str(2 * a), "solution": B(2 * a), "difficulty": d}
    for a, d in ((1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0))
]
WITH_ROW = (
    "reward.fns=[{fn: math, weight: 1}, "
    "{fn: '_reward_plugins:row_number', weight: 2, column: difficulty}]"
)


def train_batch(tmp_path, *overrides):
    """(config, the trainer's first batch) of ROWS read as `redjax train` reads them."""
    from redjax import train
    from redjax.data import task

    path = write_jsonl(tmp_path / "own.jsonl", ROWS)
    cfg = config.load(
        None, [f"data.train={path}", f"data.test={path}", "rollout.prompts=4", *overrides]
    )
    records, _ = task.load_data(cfg)
    tok = task.load_tokenizer_for(cfg)
    tokenized = task.tokenize_train(cfg, records, tok)
    cfg = task.fit_lengths(cfg, tokenized)
    return cfg, next(train.make_train_loader(cfg, records, tok, tokenized))


def test_record_reaches_a_plugin_through_the_trainer(tmp_path):
    """A JSONL's difficulty column, read by the data pipeline, reaches the plugin in the reward
    workers from train.score, for the rollouts and the teacher traces: reward = math + 2 *
    difficulty, correct = math."""
    from redjax import train

    cfg, batch = train_batch(tmp_path, WITH_ROW, "reward.workers=1")
    difficulty = {r["answer"]: r["difficulty"] for r in ROWS}
    golds = batch["answer"]
    assert sorted(golds) == ["2", "4", "6", "8"]  # the batch holds every row, in its own order
    texts = [t for g in golds for t in (B(g), B("0"))]  # G = 2: one right, one wrong
    with Verifier.from_config(cfg.reward) as v:
        r = SimpleNamespace(verifier=v, cfg=cfg)  # what score reads of a Run
        got = train.Collected(batch, SimpleNamespace(text=texts), 2)
        s = train.score(r, got, SimpleNamespace(offline=True))
    d = np.array([difficulty[g] for g in golds])
    np.testing.assert_allclose(s.rew, np.stack([1 + 2 * d, 2 * d], 1))
    assert s.correct.tolist() == [[True, False]] * 4
    np.testing.assert_allclose(s.off_rew, 1 + 2 * d)  # the traces: their own record too


def test_row_columns_choose_what_the_record_carries(tmp_path):
    """data.row_columns=[difficulty] keeps that column alone; [] keeps none, and the plugin that
    reads it fails: its items score 0, wrong, counted, with the error kept."""
    _, batch = train_batch(tmp_path, "data.row_columns=[difficulty]")
    assert [r["row"] for r in batch["record"]] == [
        {"difficulty": next(x["difficulty"] for x in ROWS if x["answer"] == g)}
        for g in batch["answer"]
    ]
    cfg, batch = train_batch(tmp_path, "data.row_columns=[]", WITH_ROW, "reward.workers=0")
    assert all("row" not in r for r in batch["record"])
    with Verifier.from_config(cfg.reward) as v:
        judged = v.judge([B(g) for g in batch["answer"]], batch["answer"], batch["record"])
        assert judged.reward.tolist() == [0.0] * 4 and not judged.correct.any()
        assert v.failures == 4 and "KeyError" in v.last_error


def test_eval_batches_carry_the_record():
    """Evaluation's prompt batches carry each prompt's record, filler rows included."""
    from redjax.data import encode_prompts
    from redjax.tokenizer import make_char_tokenizer

    records = [{"prompt": "1+1", "answer": "2", "row": {"k": 1}}, {"prompt": "2", "answer": "3"}]
    tok = make_char_tokenizer(tempfile.mkdtemp())
    (batch,) = encode_prompts(records, tok, batch_size=3, prompt_suffix="", chat=False, system=None)
    assert batch["record"] == [records[0], records[1], records[0]]


def test_slow_function_in_the_list_times_out():
    """reward.timeout bounds an item's whole list: a plugin that sleeps makes its item 0 and
    wrong (a time-out, the worker restarted); the other items score their weighted sums."""
    fns = [{"fn": "math", "weight": 1.0}, {"fn": "_reward_plugins:misbehave", "weight": 3.0}]
    with Verifier(fns, workers=2, **dict(VERIFIER, timeout=1.0)) as v:
        judged = v.judge([B("2"), "SLEEP", "2", B("3")], ["2", "2", "2", "2"])
        assert judged.reward.tolist() == [1.0, 0.0, 3.0, 0.0]  # "2": math 0, exact 1
        assert judged.correct.tolist() == [True, False, False, False]
        assert v.stats()["timeouts"] == 1 and v.stats()["restarts"] >= 1
        assert v.score([B("2")], ["2"]).tolist() == [1.0]  # and the pool scores on


MATH = "{fn: math, weight: 1}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [f"reward.fns=[{MATH}, {{fn: lenght, weight: 1}}]"],
            "reward.fns[1].fn: unknown reward 'lenght'",
        ),
        (["reward.fns=[{fn: 3, weight: 1}]"], "reward.fns[0].fn: reward name must be"),
        (["reward.fns=[{weight: 1}]"], "reward.fns[0].fn: missing"),
        (["reward.fns=[{fn: math}]"], "reward.fns[0].weight: expected a finite number, got None"),
        (["reward.fns=[{fn: math, weight: heavy}]"], "reward.fns[0].weight: expected a finite"),
        (["reward.fns=[{fn: math, weight: .inf}]"], "reward.fns[0].weight: expected a finite"),
        (["reward.fns=[{fn: math, weight: true}]"], "reward.fns[0].weight: expected a finite"),
        (["reward.fns=[{fn: math, weight: 1, correct: yes please}]"], "reward.fns[0].correct"),
        (["reward.fns=[{fn: math, weight: 1, rtol: 0.1}]"], "reward.fns[0]: unknown key 'rtol'"),
        (["reward.fns=math"], "reward.fns[0]: expected a mapping"),
        (["reward.fns=[{fn: format, weight: 1}]"], "reward.fns: no entry decides correctness"),
        (["reward.fns=[{fn: math, weight: 1, correct: false}]"], "reward.fns: no entry decides"),
        (
            [f"reward.fns=[{MATH}, {{fn: math_verify, weight: 1}}]"],
            "reward.fns: entries [0, 1] are math / math_verify; mark",
        ),
        (
            [
                "reward.fns=[{fn: math, weight: 1, correct: true}, {fn: format, weight: 1, correct: true}]"
            ],
            "reward.fns: entries [0, 1] are all marked correct: true",
        ),
        (
            [f"reward.fns=[{MATH}, {{fn: length, weight: 1, max_chars: 10}}]"],
            "reward.fns[1]: length needs max_chars, ramp_chars; missing 'ramp_chars'",
        ),
        (
            [f"reward.fns=[{MATH}, {{fn: length, weight: 1, max_chars: 10, ramp_chars: 11}}]"],
            "reward.fns[1]: length needs max_chars >= 1 and 0 <= ramp_chars <= max_chars",
        ),
        (
            [f"reward.fns=[{MATH}, {{fn: length, weight: 1, max_chars: 1.5, ramp_chars: 0}}]"],
            "reward.fns[1]: max_chars must be an integer",
        ),
        ([f"reward.fns=[{MATH}]", "reward.fn=format"], "reward.fn: 'format' is set beside"),
        ([f"reward.fns=[{MATH}]", "reward.format_weight=0.1"], "reward.format_weight: with"),
        (["reward.format_weight=-1"], "reward.format_weight must be a number >= 0"),
        (["reward.fn=nope"], "reward.fn: unknown reward 'nope'"),
    ],
)
def test_config_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError) as err:
        config.load(None, overrides)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{fn: 'no_such_module:f', weight: 1}",
            "reward.fns[1].fn: reward 'no_such_module:f': cannot",
        ),
        (
            "{fn: '_reward_plugins:nope', weight: 1}",
            "reward.fns[1].fn: reward '_reward_plugins:nope'",
        ),
        (
            "{fn: '_reward_plugins:row_number', weight: 1}",
            "reward.fns[1].fn: _reward_plugins:row_number cannot be called as fn(completion, gold[, record])",
        ),
        (
            "{fn: '_reward_plugins:exact', weight: 1, scale: 2}",
            "reward.fns[1].fn: _reward_plugins:exact cannot be called as fn(completion, gold[, record], scale=)",
        ),
        (
            "{fn: '_reward_plugins:takes_two_args', weight: 1}",
            "reward.fns[1].fn: _reward_plugins:takes_two_args",
        ),
    ],
)
def test_plugin_errors_name_the_entry_when_the_verifier_loads(entry, message):
    """A plugin that does not import, or whose signature does not take its keys, fails when the
    verifier is built (at the run's start), in one line naming the entry."""
    cfg = config.load(None, [f"reward.fns=[{MATH}, {entry}]", "reward.workers=1"])
    with pytest.raises(ValueError) as err:
        Verifier.from_config(cfg.reward)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_function_in_the_list_needs_workers_0():
    """A lambda in the list scores in process; with workers it is refused naming the entry."""
    fns = [{"fn": "math", "weight": 1.0}, {"fn": lambda c, g, rec: len(rec["k"]), "weight": 0.5}]
    with Verifier(fns, workers=0, **VERIFIER) as v:
        assert v.score([B("1")], ["1"], [{"k": "abc"}]).tolist() == [1.0 + 0.5 * 3]
    with pytest.raises(ValueError, match=r"reward.fns\[1\].fn: .*workers=0"):
        Verifier(fns, workers=1, **VERIFIER)


def test_runs_before_reward_fns_resume_and_evaluate_as_trained():
    """A checkpoint's config saved before reward.fns and data.row_columns existed resumes (the
    keys it lacks had their defaults); `redjax eval` judges with the run's deciding entry."""
    base = config.load(None, ["train.steps=10"])
    saved = config.to_dict(base)
    del saved["reward"]["fns"], saved["data"]["row_columns"]
    assert runs.check_resume(base, {"step": 4, "config": saved}) == 10
    listed = config.load(None, ["train.steps=10", WITH_ROW])
    with pytest.raises(ValueError, match="reward.fns"):
        runs.check_resume(listed, {"step": 4, "config": saved})
    assert runs.run_settings(base)["reward_fns"] == [{"fn": "math", "weight": 1.0, "correct": True}]
    marked = config.load(None, ["reward.fns=[{fn: math, weight: 1}, {fn: length, weight: 2, "
                                "max_chars: 9, ramp_chars: 0, correct: true}]"])  # fmt: skip
    assert runs.run_settings(marked)["reward_fns"] == [
        {"fn": "length", "weight": 1.0, "correct": True, "max_chars": 9, "ramp_chars": 0}
    ]
