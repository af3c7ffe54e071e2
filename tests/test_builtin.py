"""Built-in arithmetic task: exact answers, worked solutions, disjoint splits, determinism."""

import collections
import operator
import re

import pytest

from redjax.data.builtin import DIFFICULTIES, make_task, write_task
from redjax.data.sources import load_records

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
N_OPS = {"easy": 1, "medium": 2, "hard": 3}


COLUMNS = re.compile(r"(\d)\+(\d)=(\d+), (\d)\+(\d)\+([01])=(\d+)\. \\boxed\{(\d+)\}")


def check_columns(prompt: str, answer: int, solution: str) -> None:
    """Easy problems: column addition, ones then tens with the carry."""
    a, b = (int(x) for x in re.findall(r"\d+", prompt))
    a0, b0, ones, a1, b1, carry, tens, boxed = map(int, COLUMNS.fullmatch(solution).groups())
    assert (a0, a1, b0, b1) == (a % 10, a // 10, b % 10, b // 10)
    assert ones == a0 + b0 and carry == ones // 10 and tens == a1 + b1 + carry
    assert boxed == answer == a + b == 10 * tens + ones % 10


def check_record(record: dict, difficulty: str) -> None:
    """Recomputes the answer from the prompt and every solution step with Python arithmetic."""
    prompt, answer, solution = record["prompt"], int(record["answer"]), record["solution"]
    assert record["answer"] == str(answer) and answer >= 0
    assert solution.endswith(f"\\boxed{{{answer}}}")
    plain = re.fullmatch(r"What is ([-+* \d]+)\?", prompt)
    if plain:
        assert eval(plain.group(1)) == answer  # the expression with Python's precedence
    if difficulty == "easy":
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
