"""Evaluation figures against hand computations: pass@k against enumeration and the closed form,
avg@n, maj@n (ties, equivalent answers), the settings' errors, the table, and a multi-file
`redjax eval` on a tiny model whose JSON is recomputed by hand."""

import argparse
import itertools
import json
from math import comb

import numpy as np
import pytest
from helpers import make_hf_checkpoint

from redjax import evaluate as ev
from redjax.evaluate import majority, pass_at_k, summarize, table


@pytest.mark.parametrize(
    "n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 5, 2), (4, 4, 4), (7, 1, 7)]
)
def test_pass_at_k_matches_enumeration(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    ref = np.mean([any(samples[i] for i in s) for s in subsets])
    assert pass_at_k(n, c, k) == pytest.approx(ref)


def closed_form(n, c, k):
    return 1 - comb(n - c, k) / comb(n, k)


# four problems of n = 6 samples: 2 right, all right, none right, 1 right
CORRECT = np.array(
    [
        [1, 0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1],
    ],
    bool,
)


def test_summary_pass_at_k_and_avg_by_hand():
    lengths = np.arange(24).reshape(4, 6)
    truncated = lengths % 5 == 0  # 0, 5, 10, 15, 20: 5 of 24
    maj = np.array([False, True, False, False])
    s = summarize(CORRECT, lengths, truncated, maj, ks=[2, 6])
    # avg@6: (2/6 + 6/6 + 0/6 + 1/6) / 4 = 9/24
    assert s["avg@6"] == pytest.approx(9 / 24)
    assert s["pass@1"] == pytest.approx(9 / 24)
    # pass@2 = mean of 1 - C(6-c, 2) / C(6, 2) over c = 2, 6, 0, 1: (1-6/15, 1, 0, 1-10/15)
    assert s["pass@2"] == pytest.approx((9 / 15 + 1 + 0 + 5 / 15) / 4)
    for k in (1, 2, 6):
        ref = np.mean([closed_form(6, int(c), k) for c in CORRECT.sum(1)])
        assert s[f"pass@{k}"] == pytest.approx(ref)
    assert s["pass@6"] == pytest.approx(3 / 4)  # n = k: solved by any sample
    assert s["maj@6"] == pytest.approx(1 / 4)
    assert s["mean_length"] == pytest.approx(11.5)
    assert s["truncated_frac"] == pytest.approx(5 / 24)
    assert s["problems"] == 4


@pytest.mark.parametrize("n, c, k", [(10, 3, 4), (10, 0, 4), (10, 10, 4), (5, 2, 5), (16, 1, 8)])
def test_pass_at_k_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k))


def test_majority_groups_equivalent_answers():
    # "1/2" and "0.5" and "\\frac{1}{2}" are one answer (3 votes) against "3" (2 votes)
    answers = ["3", "1/2", "3", "0.5", None, "\\frac{1}{2}"]
    assert majority(answers) == 1  # the first sample of the winning group
    assert majority([None, None]) is None
    assert majority(["7"]) == 0


def test_majority_ties_go_to_the_group_seen_first():
    assert majority(["4", "5", "5", "4"]) == 0  # 2 - 2: "4" came first
    assert majority([None, "5", "4", "4", "5", "6"]) == 1  # 2 - 2 - 1: "5" first
    assert majority(["2", "0.5", "1/2", "2"]) == 0  # "2" x2 vs "0.5"/"1/2" x2: "2" first


def args(**kw):
    base = dict(data=["a.jsonl"], n=None, k=None, temperature=None)
    return argparse.Namespace(**{**base, **kw})


def test_settings_defaults_and_errors():
    assert ev.settings(args()) == (["a.jsonl"], 1, [1], 0.0)  # greedy at n = 1
    assert ev.settings(args(k="4")) == (["a.jsonl"], 4, [4], 0.6)  # old --k K: n = K
    files, n, ks, t = ev.settings(args(data=["a.jsonl,b.parquet", "c.jsonl"], n=16, k="1,8"))
    assert (files, n, ks, t) == (["a.jsonl", "b.parquet", "c.jsonl"], 16, [1, 8], 0.6)
    with pytest.raises(ValueError, match="--n 16 at --temperature 0 gives 16 identical samples"):
        ev.settings(args(n=16, temperature=0.0))
    with pytest.raises(ValueError, match="--k 8 with --n 4"):
        ev.settings(args(n=4, k="1,8", temperature=1.0))
    with pytest.raises(ValueError, match="comma-separated integers"):
        ev.settings(args(k="1,x"))


def test_cli_prints_one_line_errors(capsys):
    from redjax.cli import main

    for flags, message in (
        (["--n", "16", "--temperature", "0"], "--n 16 at --temperature 0 gives 16 identical"),
        (["--n", "4", "--k", "8"], "--k 8 with --n 4"),
    ):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--model", "no-such-folder", "--data", "a.jsonl", *flags])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("redjax: error: ") and message in err and "\n" not in err


def test_table_rows():
    row = lambda p, a, b, m: {"problems": p, "avg@4": a, "pass@1": a, "pass@4": b, "maj@4": m}
    res = {
        "n": 4,
        "ks": [4],
        **row(3, 0.5, 0.75, 0.25),
        "mean_length": 10.0,
        "truncated_frac": 0.125,
        "by_source": {
            "a": {**row(1, 1.0, 1.0, 1.0), "mean_length": 5.0, "truncated_frac": 0.0},
            "b": {**row(2, 0.25, 0.5, 0.0), "mean_length": 12.5, "truncated_frac": 0.25},
        },
    }
    text = table(res)
    assert "| data | problems | avg@4 | pass@4 | maj@4 | mean_length | truncated_frac |" in text
    assert "| a | 1 | 1.000 | 1.000 | 1.000 | 5.0 | 0.000 |" in text
    assert "| all | 3 | 0.500 | 0.750 | 0.250 | 10.0 | 0.125 |" in text


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from redjax.tokenizer import make_char_tokenizer

    path = tmp_path_factory.mktemp("model") / "m"
    tok = make_char_tokenizer(str(path))
    make_hf_checkpoint(path, "qwen2", vocab_size=len(tok))
    return str(path)


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_eval_cli_two_files_by_hand(tiny_model, tmp_path, capsys):
    """`redjax eval` on two files with n = 4 on the 8 virtual devices: per-file rows and keys,
    and every figure recomputed from the JSON's per-problem records."""
    from redjax.cli import main

    a = write(
        tmp_path / "a.jsonl", [{"problem": f"{i}+1=", "answer": str(i + 1)} for i in range(3)]
    )
    b = write(
        tmp_path / "b.jsonl", [{"problem": f"{i}*2=", "answer": str(2 * i)} for i in range(2)]
    )
    out = tmp_path / "res.json"
    flags = ["--n", "4", "--k", "1,2", "--max-new-tokens", "6", "--batch-size", "2"]
    main(["eval", "--model", tiny_model, "--data", f"{a},{b}", *flags, "--json", str(out)])
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert list(res["by_file"]) == [a, b]
    assert (res["by_file"][a]["problems"], res["by_file"][b]["problems"]) == (3, 2)
    assert res["n"] == 4 and res["settings"]["temperature"] == 0.6
    probs = res["per_problem"]
    assert [p["file"] for p in probs] == [a] * 3 + [b] * 2
    assert [p["gold"] for p in probs] == ["1", "2", "3", "0", "2"]
    assert [p["prompt"] for p in probs] == ["0+1=", "1+1=", "2+1=", "0*2=", "1*2="]
    from redjax.rewards.extract import extract_answer
    from redjax.rewards.math import math_reward

    for p in probs:
        assert len(p["samples"]) == 4
        for s in p["samples"]:
            assert s["answer"] == extract_answer(s["text"])
            assert s["correct"] == (math_reward(s["text"], p["gold"]) == 1.0)
            assert s["finish"] in ("stop", "length") and 0 <= s["length"] <= 6
            assert s["finish"] != "length" or s["length"] == 6
    for name, group in (("all", probs), (a, probs[:3]), (b, probs[3:])):
        got = res if name == "all" else res["by_file"][name]
        c = [sum(s["correct"] for s in p["samples"]) for p in group]
        lengths = [s["length"] for p in group for s in p["samples"]]
        cut = [s["finish"] == "length" for p in group for s in p["samples"]]
        assert got["avg@4"] == pytest.approx(np.mean([x / 4 for x in c]))
        assert got["pass@2"] == pytest.approx(np.mean([closed_form(4, x, 2) for x in c]))
        assert got["mean_length"] == pytest.approx(np.mean(lengths))
        assert got["truncated_frac"] == pytest.approx(np.mean(cut))
        assert got["maj@4"] == pytest.approx(np.mean([p["maj_correct"] for p in group]))
    md = (tmp_path / "res.md").read_text()
    assert f"| {a} | 3 |" in md and f"| {b} | 2 |" in md and "| all | 5 |" in md
    assert md.strip() in printed


def test_evaluate_rows_follow_their_problems(tiny_model):
    """evaluate() with a reward that reads the gold: each sample's correctness is its own
    problem's (rows prompt-major), majority correctness that of the winning sample."""
    from redjax.models import from_pretrained
    from redjax.rewards import Verifier
    from redjax.sharding import make_mesh
    from redjax.tokenizer import load_tokenizer

    model, tok = from_pretrained(tiny_model), load_tokenizer(tiny_model)
    golds = ["a", "e", "1", "x", " "]
    records = [{"prompt": f"say {g}", "answer": g, "source": "s"} for g in golds]
    reward = lambda completion, gold: float(gold in completion)
    with Verifier(reward, workers=0, timeout=5.0, format_weight=0, think_format=False,
                  extract="boxed") as verifier:  # fmt: skip
        res = ev.evaluate(
            model.params, model.cfg, tok, records, verifier, n=3, ks=[2], temperature=1.0,
            top_p=1.0, max_new_tokens=8, batch_size=2, prompt_suffix="", chat=False,
            system=None, seed=0, extract="any", mesh=make_mesh(),
        )  # fmt: skip
    probs = res["per_problem"]
    assert [p["gold"] for p in probs] == golds and "by_file" in res and not res["by_file"]
    right = [[p["gold"] in s["text"] for s in p["samples"]] for p in probs]
    assert [[s["correct"] for s in p["samples"]] for p in probs] == right
    assert any(map(any, right)) and not all(map(all, right))  # a test that can fail
    for p in probs:
        won = majority([s["answer"] for s in p["samples"]])
        assert p["majority"] == (None if won is None else p["samples"][won]["answer"])
        assert p["maj_correct"] == (won is not None and p["samples"][won]["correct"])
    assert res["avg@3"] == pytest.approx(np.mean([np.mean(r) for r in right]))
    assert list(res["by_source"]) == ["s"]


def test_run_eval_logs_the_same_summary(tiny_model):
    """train.run_eval with eval.k = 3: eval/heldout_acc is avg@3, beside pass@3, maj@3, the
    mean length and the truncated share, each equal to the evaluation's own summary."""
    from types import SimpleNamespace

    from redjax import config, train
    from redjax.models import from_pretrained
    from redjax.rewards import Verifier
    from redjax.sharding import make_mesh
    from redjax.tokenizer import load_tokenizer

    cfg = config.load(None, ["eval.k=3", "eval.temperature=1.0", "rollout.max_new_tokens=5"])
    model = from_pretrained(tiny_model)
    logged = {}
    logger = SimpleNamespace(log=lambda step, m: logged.update(m), samples=lambda *a: None)
    records = [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "source": "t"} for i in range(3)]
    with Verifier("math", workers=0, timeout=5.0, format_weight=0, think_format=False,
                  extract="boxed") as verifier:  # fmt: skip
        r = SimpleNamespace(
            cfg=cfg, policy=model.params, model_cfg=model.cfg, mesh=make_mesh(),
            tokenizer=load_tokenizer(tiny_model), test_records=records, verifier=verifier,
            logger=logger,
        )  # fmt: skip
        res = train.run_eval(r, 7)
    assert set(logged) == {
        "eval/heldout_acc",
        "eval/pass@3",
        "eval/maj@3",
        "eval/mean_length",
        "eval/truncated_frac",
    }
    lengths = [s["length"] for p in res["per_problem"] for s in p["samples"]]
    cut = [s["finish"] == "length" for p in res["per_problem"] for s in p["samples"]]
    assert logged["eval/mean_length"] == pytest.approx(np.mean(lengths))
    assert logged["eval/truncated_frac"] == pytest.approx(np.mean(cut))
    assert logged["eval/heldout_acc"] == res["avg@3"] == res["pass@1"]
    assert logged["eval/pass@3"] == res["pass@3"] and logged["eval/maj@3"] == res["maj@3"]
