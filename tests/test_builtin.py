"""Built-in arithmetic task: exact answers, worked solutions, disjoint splits, determinism."""

import collections
import operator
import re

import numpy as np
import pytest

from redjax.data import builtin
from redjax.data.builtin import DIFFICULTIES, make_task, write_task
from redjax.data.sources import load_records
from redjax.rewards.math import math_reward

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


def check_teacher(record: dict, difficulty: str) -> None:
    """Verbose: the long trace's column work twice, the sum restated, one sentence a carry.
    Noisy: the long trace, or (on the problems it picks) columns with one slip in a carry,
    ending in the sum those columns write."""
    prompt, solution = record["prompt"], record["solution"]
    a, b = (int(x) for x in re.findall(r"\d+", prompt))
    long = builtin.column_solution(a, b)
    work = long.split(". \\boxed")[0]
    if difficulty == "verbose":
        head = f"{work}. check: {work}, so {a}+{b}={a + b}."
        assert solution.startswith(head) and solution.endswith(f" \\boxed{{{a + b}}}")
        assert solution.count("carry 1 to the") == builtin.carries(a, b)
        return
    if not builtin.noisy_wrong(prompt):
        assert solution == long
        return
    body, boxed = re.fullmatch(r"(.*)\. \\boxed\{(\d+)\}", solution).groups()
    cols = [COLUMN.fullmatch(c).groups() for c in body.split(", ")]
    right = [COLUMN.fullmatch(c).groups() for c in work.split(", ")]
    assert len(cols) == len(right)
    slips, value = 0, 0
    for i, ((x, y, c, t), (_, _, c_right, _)) in enumerate(zip(cols, right, strict=True)):
        assert (int(x), int(y)) == (a // 10**i % 10, b // 10**i % 10)
        assert int(t) == int(x) + int(y) + int(c or 0)  # each column's sum is right
        if i and int(c) != (int(cols[i - 1][3]) // 10 if slips else int(c_right)):
            slips += 1  # the carry written is not the one before's: the slip
        value += int(t) % 10 * 10**i
    value += int(cols[-1][3]) // 10 * 10 ** len(cols)
    assert slips == 1 and int(boxed) == value != a + b


def check_record(record: dict, difficulty: str) -> None:
    """Recomputes the answer from the prompt and every solution step with Python arithmetic."""
    prompt, answer, solution = record["prompt"], int(record["answer"]), record["solution"]
    assert record["answer"] == str(answer) and answer >= 0
    if difficulty != "noisy":
        assert solution.endswith(f"\\boxed{{{answer}}}")
    plain = re.fullmatch(r"What is ([-+* \d]+)\?", prompt)
    if plain:
        assert eval(plain.group(1)) == answer  # the expression with Python's precedence
    if difficulty in ("easy", "long"):
        check_columns(prompt, answer, solution)
        return
    if difficulty in builtin.TEACHERS:
        check_teacher(record, difficulty)
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
    train = load_records(paths["train"], row_columns=[])
    test = load_records(paths["test"], row_columns=[])
    assert train == make_task(40, seed=1, difficulty="medium")
    assert test == make_task(10, seed=1, split="test", difficulty="medium")


BUDGET = 144  # configs/compare/verbose.yaml: rollout.max_new_tokens


@pytest.fixture(scope="module")
def teachers():
    """The long task's 2000 train and 200 held-out problems with each teacher's traces."""
    return {
        d: make_task(2000, seed=0, difficulty=d)
        + make_task(200, seed=0, split="test", difficulty=d)
        for d in ("long", *builtin.TEACHERS)
    }


def test_teachers_share_the_long_problems(teachers):
    """Same prompts and answers, problem by problem, in train and held-out splits alike (for
    any seed); only the traces differ."""
    for d in builtin.TEACHERS:
        assert [(r["prompt"], r["answer"]) for r in teachers[d]] == [
            (r["prompt"], r["answer"]) for r in teachers["long"]
        ]
        test = make_task(100, seed=3, split="test", difficulty=d)
        assert [r["prompt"] for r in test] == [
            r["prompt"] for r in make_task(100, seed=3, split="test", difficulty="long")
        ]
        assert make_task(50, seed=5, difficulty=d) == make_task(50, seed=5, difficulty=d)


def test_verbose_is_correct_long_and_a_third_over_budget(teachers):
    """Every verbose trace scores 1 and is at least twice the long trace; it does not fit the
    budget (with its end token) exactly on the problems with two carries or more, a third."""
    over = []
    for record, long in zip(teachers["verbose"], teachers["long"], strict=True):
        solution = record["solution"]
        assert math_reward(solution, record["answer"]) == 1.0
        assert len(solution) >= 2 * len(long["solution"])
        a, b = (int(x) for x in re.findall(r"\d+", record["prompt"]))
        over.append(len(solution) + 1 > BUDGET)
        assert over[-1] == (builtin.carries(a, b) >= 2)
    assert abs(np.mean(over) - 1 / 3) < 0.03
    assert max(len(r["solution"]) + 1 for r in teachers["verbose"]) <= 224  # max_offline_len


def test_noisy_is_wrong_on_a_fixed_share(teachers):
    """30% +- 2% of the noisy traces (a hash of the problem) score 0, the others 1 and equal
    the long trace; the same problems whatever the seed or split."""
    wrong = []
    for record, long in zip(teachers["noisy"], teachers["long"], strict=True):
        score = math_reward(record["solution"], record["answer"])
        wrong.append(score == 0.0)
        assert score in (0.0, 1.0) and wrong[-1] == builtin.noisy_wrong(record["prompt"])
        assert wrong[-1] or record["solution"] == long["solution"]
    assert abs(np.mean(wrong) - 0.30) < 0.02
    by_prompt = {r["prompt"]: r["solution"] for r in teachers["noisy"]}
    for record in make_task(500, seed=4, difficulty="noisy"):
        assert by_prompt.get(record["prompt"], record["solution"]) == record["solution"]


def test_teacher_slips_and_budget_on_chosen_problems():
    """A dropped carry, an invented one when no carry is passed on, and the budget's edges."""
    assert builtin.columns(245, 85, slip=True)[1] == (4, 8, 0, 12)  # 5+5=10 carries nothing
    assert builtin.columns(50, 60, slip=True)[1] == (5, 6, 1, 12)  # no carry: one invented
    assert builtin._value(builtin.columns(999, 999, slip=True)) == 1998 - 10
    assert len(builtin.verbose_solution(909, 91)) + 1 > BUDGET  # two carries
    assert len(builtin.verbose_solution(999, 900)) + 1 <= BUDGET  # one carry
