"""Built-in task: procedurally generated arithmetic word problems with exact answers.

It lets the embedded default run train and evaluate with no download. Every record has a
short worked solution ending in ``\\boxed{ANSWER}`` that serves as the offline trace.
Which split a problem belongs to is a hash of its text, independent of the seed, so a
held-out ("test") problem never appears in any train split. Two imperfect teachers write other
traces for the long task's problems (same prompts, answers and splits): "verbose" (correct but
padded with re-checking, over the rollout budget on the problems with two carries or more) and
"noisy" (a fixed share of the traces, by a hash of the problem, end in a wrong answer).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

DIFFICULTIES = ("easy", "medium", "hard", "long", "verbose", "noisy")
TEACHERS = ("verbose", "noisy")  # imperfect teachers of the long task's problems
SPLITS = ("train", "test")
TEST_PERCENT = 10  # share of all possible problems reserved for the held-out split
NOISY_PERMILLE = 300  # noisy task: share (of 1000) of the problems whose trace ends wrong
VERBOSE_BUDGET = 144  # verbose task: tokens (with the end token) that fit the traces of
# problems with at most one carry, and not those with two carries or more (a third of them)
PLACES = ("ones", "tens", "hundreds", "thousands")

# Word templates: text with {} for the numbers in order, and the operators between them.
# The value is the expression with usual precedence (multiplication first).
WORD_TEMPLATES = {
    "medium": (
        ("{} birds sit on a tree. {} more land and {} fly off. How many birds are there?", "+-"),
        ("Ann has {} cards. She gets {} more and gives {} away. How many cards has she?", "+-"),
        ("A shop had {} pens. It sold {} and got {} more. How many pens does it have?", "-+"),
        ("Tom read {} pages, then {} pages, then {} pages. How many pages did he read?", "++"),
    ),
    "hard": (
        (
            "A box holds {} eggs. Sam buys {} boxes, breaks {} eggs and gets {} more. "
            "How many eggs has he?",
            "*-+",
        ),
        (
            "{} kids each bring {} apples. They eat {} and buy {} more. How many apples are left?",
            "*-+",
        ),
        (
            "Mia has {} coins. She gets {} bags of {} coins each and spends {}. "
            "How many coins has she?",
            "+*-",
        ),
        (
            "A hall has {} rows of {} chairs. {} chairs are added and {} removed. "
            "How many chairs are there?",
            "*+-",
        ),
    ),
}


def _hash(text: str) -> int:
    """A stable hash of a text (the same in every process and Python version)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _in_test(prompt: str) -> bool:
    """Whether a problem belongs to the held-out split (a stable hash of its text)."""
    return _hash(prompt) % 100 < TEST_PERCENT


def noisy_wrong(prompt: str) -> bool:
    """Whether the noisy teacher's trace of a problem ends wrong: a hash of the problem (salted,
    so independent of the split), NOISY_PERMILLE of 1000."""
    return _hash(f"noisy/{prompt}") % 1000 < NOISY_PERMILLE


def solve(numbers: list[int], ops: str) -> tuple[int, str] | None:
    """Returns (value, worked solution) of the expression, or None if a step goes negative."""
    nums, ops_left, steps = list(numbers), list(ops), []
    while ops_left:
        i = ops_left.index("*") if "*" in ops_left else 0
        a, op, b = nums[i], ops_left[i], nums[i + 1]
        value = a * b if op == "*" else a + b if op == "+" else a - b
        if value < 0:
            return None
        steps.append(f"{a} {op} {b} = {value}.")
        nums[i : i + 2] = [value]
        del ops_left[i]
    return nums[0], " ".join(steps) + f" \\boxed{{{nums[0]}}}"


def columns(a: int, b: int, slip: bool = False) -> list[tuple[int, int, int, int]]:
    """The columns of a + b, ones first, as (digit of a, digit of b, carry in, total); at least
    two. `slip`: the first carry passed on is dropped (with none, a carry 1 goes into the tens),
    and the later columns follow from it, so they write a wrong sum."""
    n, carry, out, at = max(len(str(a)), len(str(b)), 2), 0, [], -1
    if slip:
        passed = [t // 10 for *_, t in columns(a, b)[:-1]]
        at = passed.index(1) + 1 if 1 in passed else 1
    for i in range(n):
        x, y = a // 10**i % 10, b // 10**i % 10
        carry = 1 - carry if i == at else carry
        out.append((x, y, carry, x + y + carry))
        carry = (x + y + carry) // 10
    return out


def carries(a: int, b: int) -> int:
    """How many columns of a + b carry (the last column's carry included)."""
    return sum(t >= 10 for *_, t in columns(a, b))


def _work(cols: list[tuple[int, int, int, int]]) -> str:
    """The column work: "4+9=13, 5+5+1=11" (the ones column without a carry in)."""
    steps = [
        f"{x}+{y}={t}" if i == 0 else f"{x}+{y}+{c}={t}" for i, (x, y, c, t) in enumerate(cols)
    ]
    return ", ".join(steps)


def _value(cols: list[tuple[int, int, int, int]]) -> int:
    """The number the columns write: each total's last digit, and the last column's carry."""
    return sum(t % 10 * 10**i for i, (*_, t) in enumerate(cols)) + cols[-1][3] // 10 * 10 ** len(
        cols
    )


def column_solution(a: int, b: int) -> str:
    """Column addition, ones first, each later column with the carry, e.g. 54 + 59:
    "4+9=13, 5+5+1=11. \\boxed{113}". Two columns below 100 (the easy task), one more per
    extra digit (the long task: 154 + 59 is "4+9=13, 5+5+1=11, 1+0+1=2. \\boxed{213}"). Each
    written digit is a small local step, which a tiny model learns from a few thousand traces
    (a bare "54 + 59 = 113" takes far longer)."""
    return f"{_work(columns(a, b))}. \\boxed{{{a + b}}}"


def verbose_solution(a: int, b: int) -> str:
    """The verbose teacher: the column work, again as a check, the sum restated, then every
    carry explained once more. Correct, and at least twice the long trace; with two carries or
    more over VERBOSE_BUDGET tokens, with at most one within it (checked for all a, b < 1000)."""
    cols, s = columns(a, b), a + b
    text = f"{_work(cols)}. check: {_work(cols)}, so {a}+{b}={s}."
    for i, (*_, t) in enumerate(cols):
        if t >= 10:
            text += f" {PLACES[i]} {t}, keep {t % 10}, carry 1 to the {PLACES[i + 1]}."
    return text + f" \\boxed{{{s}}}"


def noisy_solution(prompt: str, a: int, b: int) -> str:
    """The noisy teacher: the long trace, except on the problems `noisy_wrong` picks, where
    the column work has a slip in a carry and the trace ends in the wrong sum it gives."""
    if not noisy_wrong(prompt):
        return column_solution(a, b)
    cols = columns(a, b, slip=True)
    return f"{_work(cols)}. \\boxed{{{_value(cols)}}}"


def teacher_solution(difficulty: str, prompt: str) -> str:
    """The trace of an imperfect teacher (TEACHERS) for a long problem "What is A + B?"."""
    a, b = (int(n) for n in re.findall(r"\d+", prompt))
    return verbose_solution(a, b) if difficulty == "verbose" else noisy_solution(prompt, a, b)


def _operands(rng: random.Random, ops: str, low: int) -> list[int]:
    """Draws numbers for `ops`: small factors around '*', [low, 99] elsewhere."""
    nums = [rng.randint(low, 99) for _ in range(len(ops) + 1)]
    if "*" in ops:
        i = ops.index("*")
        nums[i], nums[i + 1] = rng.randint(2, 20), rng.randint(2, 9)
    return nums


def _draw(rng: random.Random, difficulty: str) -> tuple[str, int, str]:
    """Draws one problem: (prompt, answer, solution)."""
    while True:
        if difficulty in ("easy", "long"):
            ops, template = "+", None
            nums = _operands(rng, ops, low=0)
            if difficulty == "long":  # each operand three-digit with probability 1/2
                nums = [n if rng.random() < 0.5 else rng.randint(100, 999) for n in nums]
        elif rng.random() < 0.5:
            template, ops = rng.choice(WORD_TEMPLATES[difficulty])
            nums = _operands(rng, ops, low=10)
        else:
            template = None
            if difficulty == "medium":
                ops = rng.choice("+-") + rng.choice("+-")
            else:
                ops = [rng.choice("+-") for _ in range(2)]
                ops.insert(rng.randint(0, 2), "*")
                ops = "".join(ops)
            nums = _operands(rng, ops, low=10)
        solved = solve(nums, ops)
        if solved is None:
            continue
        if difficulty in ("easy", "long"):
            solved = (solved[0], column_solution(*nums))
        if template is None:
            expr = " ".join(f"{n} {op}" for n, op in zip(nums, ops, strict=False)) + f" {nums[-1]}"
            prompt = f"What is {expr}?"
        else:
            prompt = template.format(*nums)
        return prompt, solved[0], solved[1]


def make_task(n: int, *, seed: int, split: str = "train", difficulty: str = "easy") -> list[dict]:
    """Returns `n` problems as records {prompt, answer, solution, source}.

    Train records may repeat; test records are distinct, and no test problem is ever a
    train problem (the split is a hash of the problem text, whatever the seed).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    # The teachers' tasks draw the long task's problems (the same prompts for a seed and split).
    problems = "long" if difficulty in TEACHERS else difficulty
    rng = random.Random(f"redjax-builtin/{problems}/{split}/{seed}")
    want_test = split == "test"
    records, seen, attempts = [], set(), 0
    while len(records) < n:
        attempts += 1
        if attempts > 100 * n + 10_000:
            raise ValueError(
                f"could draw only {len(records)} distinct {split} problems of difficulty "
                f"{difficulty!r}; ask for fewer"
            )
        prompt, answer, solution = _draw(rng, problems)
        if _in_test(prompt) != want_test or (want_test and prompt in seen):
            continue
        seen.add(prompt)
        if difficulty in TEACHERS:
            solution = teacher_solution(difficulty, prompt)
        records.append(
            {
                "prompt": prompt,
                "answer": str(answer),
                "solution": solution,
                "source": f"builtin-{difficulty}",
            }
        )
    return records


def write_task(
    dir: str, n_train: int, n_test: int, seed: int, difficulty: str = "easy"
) -> dict[str, str]:
    """Writes train.jsonl and test.jsonl of the built-in task to `dir`; returns their paths."""
    os.makedirs(dir, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        path = os.path.join(dir, f"{split}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for record in make_task(n, seed=seed, split=split, difficulty=difficulty):
                f.write(json.dumps(record) + "\n")
        paths[split] = path
    return paths
