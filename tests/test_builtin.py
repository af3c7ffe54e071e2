"""Built-in arithmetic task: exact answers, worked solutions, disjoint splits, determinism."""

import collections
import operator
import re

import numpy as np
import pytest

from redjax.data.builtin import DIFFICULTIES, make_task, write_task
from redjax.data.sources import load_records

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
N_OPS = {"easy": 1, "medium": 2, "hard": 3}


COLUMN = re.compile(r"(\d)\+(\d)(?:\+([01]))?=(\d+)")


def check_columns(prompt: str, answer: int, solution: str) -> None:
    """Easy and long problems: column addition, ones first, each later column with the carry
    of the one before; two columns below 100, one per digit beyond."""
    a, b = (int(x) for x in re.findall(r"\d+", prompt))
    body, boxed = re.fullmatch(r"(.*)\. \\boxed\{(\d+)\}", solution).groups()
    cols = [COLUMN.fullmatch(c).groups() for c in body.split(", ")]
    assert len(cols) == max(2, len(str(a)), len(str(b)))
    carry, value = 0, 0
    for i, (x, y, c, total) in enumerate(cols):
        assert (int(x), int(y)) == (a // 10**i % 10, b // 10**i % 10)
        assert (c is None) == (i == 0) and int(c or 0) == carry
        assert int(total) == int(x) + int(y) + carry
        carry = int(total) // 10
        value += int(total) % 10 * 10**i
    value += carry * 10 ** len(cols)
    assert int(boxed) == answer == a + b == value


def check_record(record: dict, difficulty: str) -> None:
    """Recomputes the answer from the prompt and every solution step with Python arithmetic."""
    prompt, answer, solution = record["prompt"], int(record["answer"]), record["solution"]
    assert record["answer"] == str(answer) and answer >= 0
    assert solution.endswith(f"\\boxed{{{answer}}}")
    plain = re.fullmatch(r"What is ([-+* \d]+)\?", prompt)
    if plain:
        assert eval(plain.group(1)) == answer  # the expression with Python's precedence
    if difficulty in ("easy", "long"):
        check_columns(prompt, answer, solution)
        return
    steps = [(int(a), op, int(b), int(c)) for a, op, b, c in STEP.findall(solution)]
    assert len(steps) == N_OPS[difficulty]
    for a, op, b, c in steps:
        assert OPS[op](a, b) == c
    assert steps[-1][3] == answer
    if difficulty == "hard":
        assert any(op == "*" for _, op, _, _ in steps)
    # The operands are the prompt's numbers plus each intermediate result used once.
    operands = collections.Counter(x for a, _, b, _ in steps for x in (a, b))
    given = collections.Counter(int(x) for x in re.findall(r"\d+", prompt))
    given.update(c for _, _, _, c in steps[:-1])
    assert operands == given


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_answers_and_solutions_are_correct(difficulty):
    records = make_task(300, seed=0, difficulty=difficulty)
    records += make_task(100, seed=0, split="test", difficulty=difficulty)
    for record in records:
        check_record(record, difficulty)
        assert record["source"] == f"builtin-{difficulty}"


def test_long_extends_easy():
    """Each operand three-digit with probability 1/2: about a quarter of the problems are easy
    ones, written the same way (the warm start of bench/compare.py solves exactly those)."""
    long = make_task(2000, seed=1, difficulty="long")
    digits = [[len(x) == 3 for x in re.findall(r"\d+", r["prompt"])] for r in long]
    assert abs(np.mean([not any(d) for d in digits]) - 0.25) < 0.03
    assert abs(np.mean([all(d) for d in digits]) - 0.25) < 0.03
    easy = {r["prompt"]: r["solution"] for r in make_task(3000, seed=1)}
    shared = [r for r in long if r["prompt"] in easy]
    assert len(shared) > 50 and all(easy[r["prompt"]] == r["solution"] for r in shared)


def test_easy_is_short_and_regular():
    for record in make_task(1000, seed=3):
        assert len(record["prompt"]) < 48 and len(record["solution"]) < 32
        assert re.fullmatch(r"What is \d{1,2} \+ \d{1,2}\?", record["prompt"])


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
def test_train_and_test_are_disjoint(difficulty):
    train = {r["prompt"] for s in range(3) for r in make_task(2000, seed=s, difficulty=difficulty)}
    for seed in range(2):
        test = [r["prompt"] for r in make_task(300, seed=seed, split="test", difficulty=difficulty)]
        assert len(set(test)) == len(test)
        assert not train & set(test)


def test_deterministic_for_a_seed():
    assert make_task(50, seed=7, difficulty="hard") == make_task(50, seed=7, difficulty="hard")
    assert make_task(50, seed=7) != make_task(50, seed=8)
    assert make_task(50, seed=7, split="test") != make_task(50, seed=7)


def test_bad_arguments_and_too_many_test_problems():
    with pytest.raises(ValueError, match="difficulty"):
        make_task(3, seed=0, difficulty="extreme")
    with pytest.raises(ValueError, match="split"):
        make_task(3, seed=0, split="valid")
    with pytest.raises(ValueError, match="distinct test problems"):
        make_task(1500, seed=0, split="test")  # easy has about 1000 test problems


def test_write_task_reads_back(tmp_path):
    paths = write_task(str(tmp_path / "task"), 40, 10, seed=1, difficulty="medium")
    train = load_records(paths["train"])
    test = load_records(paths["test"])
    assert train == make_task(40, seed=1, difficulty="medium")
    assert test == make_task(10, seed=1, split="test", difficulty="medium")
