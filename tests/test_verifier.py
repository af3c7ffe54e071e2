"""The verifier's answer extraction modes, its comparator rules (each with negative cases),
the labelled verifier set, the optional math_verify backend and reward.extract."""

import json
import os
import sys
import time

import pytest
from helpers import VERIFIER
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_verifier_cases import rows
from reward_cases import B

from redjax import config
from redjax.rewards import Verifier, extract_answer, get_reward_fn, is_equiv, math_reward
from redjax.rewards.extract import boxed_group, span_group

HERE = os.path.dirname(os.path.abspath(__file__))
SAFETY_BOUND = 5.0  # seconds: the per-item time-out of a run (reward.timeout)

# (rule, gold, completion, expected) for the default extraction; every rule both ways.
RULES = [
    ("boxes", "\\{1,2,3\\}", "\\boxed{1}, \\boxed{2}, \\boxed{3}", 1),
    ("boxes", "\\{1,2,3\\}", "$\\boxed{1}$, $\\boxed{2}$ and $\\boxed{3}$", 1),
    ("boxes", "\\{1,2,3\\}", "\\boxed{1}, \\boxed{2}, \\boxed{4}", 0),
    ("boxes", "\\{1,2,3\\}", "\\boxed{1}, \\boxed{2}", 0),
    ("boxes", "1, 2", "\\boxed{1} then we check that \\boxed{2}", 0),
    ("boxes", "-1, 4", "so $x = \\boxed{-1}$ or $x = \\boxed{4}$.", 1),
    ("boxes", "3", "\\boxed{1}, \\boxed{2}, \\boxed{3}", 1),
    ("boxes", "\\boxed{1}, \\boxed{2}", "\\boxed{2} and \\boxed{1}", 1),
    ("boxes", "\\boxed{1}, \\boxed{2}", "\\boxed{2} and \\boxed{3}", 0),
    ("labels", "(p,q)=(3,2)", B("p=3, q=2"), 1),
    ("labels", "(p,q)=(3,2)", B("q=2, p=3"), 1),
    ("labels", "(p,q)=(3,2)", B("(p, q) = (3, 2)"), 1),
    ("labels", "(p,q)=(3,2)", B("p=2, q=3"), 0),
    ("labels", "(p,q)=(3,2)", B("a=3, b=2"), 0),
    ("labels", "(3,2)", B("(p,q)=(3,2)"), 1),
    ("labels", "(3,2)", B("p=3, q=2"), 1),
    ("labels", "(3,2)", B("(p,q)=(2,3)"), 0),
    ("labels", "AB=4, CD=5", B("CD=5, AB=4"), 1),
    ("labels", "AB=4, CD=5", B("AB=5, CD=4"), 0),
    ("labels", "S:T=7:32", B("7:32"), 1),
    ("labels", "S:T=7:32", B("T:S=32:7"), 1),
    ("labels", "S:T=7:32", B("32:7"), 0),
    ("labels", "7:32", B("S:T=7:32"), 1),
    ("labels", "7:32", B("S:T=7:31"), 0),
    ("chain", "11", B("x = 5+5+1 = 11"), 1),
    ("chain", "11", B("x = 5+5+1 = 12"), 0),
    ("chain", "24", B("4! = 24"), 1),
    ("chain", "24", B("4! = 25"), 0),
    ("chain", "4", B("2+2 = 5"), 0),
    ("chain", "\\frac13", B("x=\\frac13 \\approx 0.33"), 1),
    ("chain", "0.33", B("\\frac13 \\approx 0.33"), 0),
    ("chain", "3.14", B("x \\approx 3.14"), 1),
    ("chain", "3.14", B("x \\approx 3.15"), 0),
    ("interval", "(-793, 10)", B("-793 < a < 10"), 1),
    ("interval", "(-793, 10)", B("10 > a > -793"), 1),
    ("interval", "(-793, 10)", B("-793 \\le a < 10"), 0),
    ("interval", "-793 < a < 10", B("(-793, 10)"), 1),
    ("interval", "-793 < a < 10", B("(-793, 10]"), 0),
    ("interval", "x \\geq 5", B("[5, \\infty)"), 1),
    ("interval", "x \\geq 5", B("(5, \\infty)"), 0),
    ("interval", "[5,\\infty)", B("x \\ge 5"), 1),
    ("interval", "[5,\\infty)", B("x > 5"), 0),
    ("interval", "(-\\infty, 2)", B("x<2"), 1),
    ("interval", "(-\\infty, 2)", B("x>2"), 0),
    ("interval", "(-\\infty, 2)", B("x<y"), 0),
    ("interval", "-1 < x < 3", B("-1 < y < 3"), 1),
    ("interval", "-1 < x < 3", B("-1 < x \\le 3"), 0),
    ("union", "(-\\infty,2)\\cup(3,\\infty)", B("x < 2 \\text{ or } x > 3"), 1),
    ("union", "(-\\infty,2)\\cup(3,\\infty)", B("x < 2 \\text{ or } x \\geq 3"), 0),
    ("union", "(-\\infty,2)\\cup(3,\\infty)", B("x < 2 \\text{ or } y > 3"), 0),
    ("union", "x<2 \\text{ or } x>3", B("(-\\infty,2)\\cup(3,\\infty)"), 1),
    ("union", "x<2 \\text{ or } x>3", B("(-\\infty,2]\\cup(3,\\infty)"), 0),
    ("commands", "\\frac{1}{2}", B("\\cfrac{1}{2}"), 1),
    ("commands", "\\frac{1}{2}", B("\\cfrac{1}{3}"), 0),
    ("commands", "x<3", B("x \\lt 3"), 1),
    ("commands", "x>3", B("x \\gt 3"), 1),
    ("commands", "x>3", B("x \\lt 3"), 0),
    ("commands", "x \\neq 3", B("x \\ne 3"), 1),
    ("commands", "x \\neq 3", B("x \\ne 4"), 0),
    ("commands", "x \\le 3", B("x \u2264 3"), 1),
    ("commands", "x \\le 3", B("x \u2265 3"), 0),
    ("decimal_comma", "1000.99", B("1000,99"), 1),
    ("decimal_comma", "1000,99", B("1000.99"), 1),
    ("decimal_comma", "1000.99", B("1000,98"), 0),
    ("decimal_comma", "1.5", B("1, 5"), 0),
    ("decimal_comma", "-2,3", B("-2.3"), 0),
    ("decimal_comma", "1,5", B("1.5"), 0),
    ("decimal_comma", "3.75", B("3,75"), 1),
    ("decimal_comma", "1500", B("1,5"), 0),
    ("thousands", "32349", B("32,\\! 349"), 1),
    ("thousands", "32349", B("32,\\!349"), 1),
    ("thousands", "32349", B("32,\\! 348"), 0),
    ("thousands", "1000", B("1\\,000"), 1),
    ("thousands", "1000", B("1\\,001"), 0),
    ("braces", "\\{1,2,3\\}", B("{3,2,1}"), 1),
    ("braces", "\\{1,2,3\\}", B("{3,2,4}"), 0),
    ("braces", "{1,2}", B("\\{2,1\\}"), 1),
    ("braces", "{1,2}", B("\\{2,3\\}"), 0),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        B("\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]"),
        1,
    ),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        B("\\left[\\begin{array}{cc}1&2\\\\4&3\\end{array}\\right]"),
        0,
    ),
    (
        "matrix",
        "\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]",
        B("\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
        1,
    ),
    ("matrix", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", B("[1, 2]"), 0),
    ("semicolons", "1, 2, 3", B("1; 2; 3"), 1),
    ("semicolons", "1, 2, 3", B("1; 2; 4"), 0),
    ("semicolons", "1; 2", B("2, 1"), 1),
    ("semicolons", "1; 2", B("2; 2"), 0),
    ("equation_rhs", "7 = 11a + c", B("11a + c"), 0),
    ("equation_rhs", "7 = 11a + c", B("11a + c = 7"), 1),
    ("equation_rhs", "7 = 11a + c", B("c = 7 - 11a"), 1),
    ("equation_rhs", "7 = 11a + c", B("7"), 0),
    ("equation_rhs", "2x + 3y = 12", B("12"), 0),
    ("equation_rhs", "24", B("4! = 24"), 1),
    ("equation_rhs", "0.5", B("\\frac{1}{2} = 0.5"), 1),
    ("decimal_comma", "1.22", B("1,22"), 1),
    ("decimal_comma", "122", B("1,22"), 0),
    ("decimal_comma", "1, 22", B("1,22"), 1),
    ("decimal_comma", "1234", B("1,234"), 1),
    ("decimal_comma", "1.234", B("1,234"), 0),
    ("decimal_comma", "1.2345", B("1,2345"), 1),
    ("decimal_comma", "12345", B("1,2345"), 0),
    ("decimal_comma", "\\frac{1}{4}", B("0,25"), 1),
    ("decimal_comma", "\\frac{1}{8}", B("0,125"), 1),
    ("decimal_comma", "125", B("0,125"), 0),
    ("decimal_comma", "1.22", B("1, 22"), 0),
    ("not_equal", "x \\neq 3", B("x != 3"), 1),
    ("not_equal", "x \\neq 3", B("x!=3"), 1),
    ("not_equal", "x \\neq 3", B("x != 4"), 0),
    ("not_equal", "x != 3", B("x \\neq 3"), 1),
    ("not_equal", "x \\neq 3", B("x = 3"), 0),
    ("not_equal", "120", B("5!=120"), 1),
    ("not_equal", "120", B("5!=121"), 0),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        B("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"),
        1,
    ),
    (
        "matrix",
        "\\begin{array}{cc}1&2\\\\3&4\\end{array}",
        B("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}"),
        1,
    ),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        B("\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix}"),
        0,
    ),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        B("\\begin{Vmatrix}1&2\\\\3&4\\end{Vmatrix}"),
        0,
    ),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8), (8, 5)"), 1),
    ("tuple_set", "\\{(8,5),(5,8)\\}", B("(5, 8), (8, 5)"), 1),
    ("tuple_set", "(8,5),(5,8)", B("\\{(5, 8), (8, 5)\\}"), 1),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8) \\text{ and } (8, 5)"), 1),
    ("tuple_set", "(8,5),(5,8)", B("(8, 5), (8, 5)"), 0),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8)"), 0),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8), (8, 5), (1, 1)"), 0),
    ("tuple_set", "((8,5),(5,8))", B("((5, 8), (8, 5))"), 0),
    ("labels", "n=2, k=45", B("k = 45, n = 2"), 1),
    ("labels", "n=2, k=45", B("k = 2, n = 45"), 0),
    ("labels", "45, 2", B("k = 45, n = 2"), 1),
    ("labels", "45, 2", B("k = 45, n = 3"), 0),
    ("labels", "n=2, k=45", B("45, 2"), 0),
    ("labels", "n=2, k=45", B("2, 45"), 0),
    ("labels", "n=2, k=45", "So $k=\\boxed{45}$ and $n=\\boxed{2}$.", 1),
    ("labels", "n=2, k=45", "So $k=\\boxed{2}$ and $n=\\boxed{45}$.", 0),
    ("labels", "n=2, k=45", "So \\boxed{k = 45} and \\boxed{n = 2}.", 1),
    ("labels", "-1, 4", "So $x=\\boxed{-1}$ or $x=\\boxed{4}$.", 1),
    ("interval", "[-2, 7]", B("-2 \\le x \\le 7"), 1),
    ("interval", "[-2, 7]", B("-2 \\leq x \\leq 7"), 1),
    ("interval", "[-2, 7]", B("7 \\ge x \\ge -2"), 1),
    ("interval", "[-2, 7]", B("-2 < x \\le 7"), 0),
    ("interval", "[-2, 7]", B("-2 \\le x \\le 8"), 0),
    ("rounded", "\\frac{1}{3}", B("0.3333"), 1),
    ("rounded", "\\frac{1}{3}", B("0.33333"), 1),
    ("rounded", "\\frac{1}{7}", B("0.1429"), 1),
    ("rounded", "-\\frac{2}{3}", B("-0.6667"), 1),
    ("rounded", "\\sqrt{2}", B("1.414"), 1),
    ("rounded", "2\\pi", B("6.2832"), 1),
    ("rounded", "(\\frac{1}{3}, \\frac{2}{3})", B("(0.3333, 0.6667)"), 1),
    ("rounded", "\\frac{1}{3}", B("0.3"), 0),
    ("rounded", "\\frac{1}{3}", B("0.333"), 0),
    ("rounded", "\\frac{1}{3}", B("0.3334"), 0),
    ("rounded", "\\frac{2}{3}", B("0.6666"), 0),
    ("rounded", "\\pi", B("3.1415"), 0),
    ("rounded", "-\\frac{2}{3}", B("0.6667"), 0),
    ("rounded", "\\frac{1}{8}", B("0.1300"), 0),
    ("rounded", "\\frac{1}{3}", B("0.0333"), 0),
    ("rounded", "0.33333", B("0.3333"), 0),
    ("rounded", "7", B("7.0001"), 0),
    ("rounded", "\\frac{10}{3}", B("3.333"), 1),
    ("rounded", "x+\\frac{1}{3}", B("x+0.3333"), 0),
    ("units", "5", B("5 cm"), 1),
    ("units", "5", B("6 cm"), 0),
    ("units", "12", B("12 apples"), 1),
    ("units", "12", B("13 apples"), 0),
    ("units", "5", "\\boxed{5 \\text{ dollars}}", 1),
    ("units", "5", "\\boxed{50 \\text{ dollars}}", 0),
]


@pytest.mark.parametrize(
    "rule, gold, completion, expected", RULES, ids=[f"{i:02d}-{r[0]}" for i, r in enumerate(RULES)]
)
def test_comparator_rules(rule, gold, completion, expected):
    assert math_reward(completion, gold) == float(expected)


def test_every_rule_has_negative_cases():
    kinds = {}
    for rule, *_, expected in RULES:
        kinds.setdefault(rule, set()).add(expected)
    assert all(v == {0, 1} for v in kinds.values()), kinds


RETRACTED = "So $\\boxed{3}$. Wait, that's wrong; the answer is 4."
# (rule, gold, completion, expected) with extract="any".
ANY_RULES = [
    ("garbage", "2", "AZYUK2A", 0),
    ("garbage", "2", "The code is AZYUK2A.", 0),
    ("garbage", "2", "the vector v2", 0),
    ("garbage", "2", "so we end with x^2", 0),
    ("garbage", "2", "so we end with x_2", 0),
    ("garbage", "2", "so the count is 2.", 1),
    ("garbage", "2", "so the count is (2)", 1),
    ("garbage", "1234", "the total is 1,234.", 1),
    ("garbage", "234", "the total is 1,234.", 0),
    ("garbage", "5", "the total is 1,234,5", 0),
    ("garbage", "2", "so the probability is \\frac{1}{2}.", 0),
    ("garbage", "\\frac{1}{2}", "so the probability is \\frac{1}{2}.", 1),
    ("garbage", "-\\frac{7}{3}", "so the slope is -\\dfrac{7}{3}", 1),
    ("garbage", "2", "so we end with \\sqrt{2}", 0),
    ("partial", "123", "so the answer is 12", 0),
    ("partial", "123", "so it is 123", 1),
    ("partial", "1/30", "so it is 1/3", 0),
    ("partial", "1/30", "so it is 1/30", 1),
    ("decimal_comma", "1.22", "so it comes to 1,22.", 1),
    ("decimal_comma", "122", "so it comes to 1,22.", 0),
    ("retraction", "4", RETRACTED, 1),
    ("retraction", "3", RETRACTED, 0),
    ("retraction", "4", "So $\\boxed{3}$.\n\n**Final Answer**\n\n$4$", 1),
    ("retraction", "4", "So $\\boxed{3}$. Actually the answer is 4 apples.", 1),
    ("retraction", "3", "So $\\boxed{3}$. The answer is correct.", 1),
    ("retraction", "3", "So $\\boxed{3}$. So the answer is in the box, see step 2.", 1),
    ("retraction", "3", "The answer is $\\boxed{3}$.", 1),
    ("retraction", "2", "So $\\boxed{12}$. Note the answer is 2 times bigger.", 0),
    ("retraction", "12", "So $\\boxed{12}$. Note the answer is 2 times bigger.", 1),
    ("retraction", "4", "The answer is 4, so $\\boxed{3}$.", 0),
    ("spans", "(8,5),(5,8)", "The pairs are $(5, 8)$ and $(8, 5)$.", 1),
    ("spans", "(8,5),(5,8)", "The pairs are $(5, 8)$ and $(8, 6)$.", 0),
    ("spans", "(8,5),(5,8)", "We try $(5, 8)$, then find $(8, 5)$.", 0),
    ("spans", "n=2, k=45", "So $k = 45$ and $n = 2$.", 1),
    ("spans", "n=2, k=45", "So $k = 2$ and $n = 45$.", 0),
    ("spans", "\\{1,2,3\\}", "the roots are $1$, $2$, and $3$.", 1),
    ("spans", "3", "the roots are $1$, $2$, and $3$.", 1),
]


@pytest.mark.parametrize(
    "rule, gold, completion, expected",
    ANY_RULES,
    ids=[f"{i:02d}-{r[0]}" for i, r in enumerate(ANY_RULES)],
)
def test_any_mode_rules(rule, gold, completion, expected):
    assert math_reward(completion, gold, extract="any") == float(expected)


def test_retraction_is_read_only_in_any_mode():
    assert math_reward(RETRACTED, "4") == 0.0
    assert math_reward(RETRACTED, "3") == 1.0  # extract="boxed": the last box counts
    assert extract_answer(RETRACTED, "any") == "4"
    assert extract_answer(RETRACTED) == "3"


def test_every_any_rule_has_negative_cases():
    kinds = {}
    for rule, *_, expected in ANY_RULES:
        kinds.setdefault(rule, set()).add(expected)
    assert all(v == {0, 1} for v in kinds.values()), kinds


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is $x \\geq 5$.", "x \\geq 5"),
        ("7,425,000", "7,425,000"),
        ("The total is 7,425,000 dollars.", "7,425,000"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("Answer: The number of ways is 12.", "12"),
        ("Answer: The number of ways is $12$.", "12"),
        ("**Final Answer**\n\n$\\begin{pmatrix}1\\\\2\\end{pmatrix}$", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ("we get $$x=3$$", "x=3"),
        ("Therefore \\[ y = 2x+1 \\] and we are done", "y = 2x+1"),
        ("It costs \\$5, so $x=2$", "x=2"),
        ("We get $x = 2$, so there are 5 boxes left.", "5"),
        ("so it must be 7", "7"),
        ("first \\boxed{3} then \\boxed{4", "4"),
        ("Yes", "Yes"),
        ("I cannot solve this problem.", None),
        ("", None),
    ],
)  # fmt: skip
def test_extract_any(text, expected):
    assert extract_answer(text, "any") == expected


def test_extract_modes_differ_where_they_should():
    assert extract_answer("The total is 7,425,000 dollars.") is None
    assert math_reward("The total is 7,425,000 dollars.", "7425000") == 0.0
    assert math_reward("The total is 7,425,000 dollars.", "7425000", extract="any") == 1.0
    assert math_reward("The total is 7,425,001 dollars.", "7425000", extract="any") == 0.0
    assert math_reward("So we need $x \\geq 5$.", "[5,\\infty)", extract="any") == 1.0
    assert math_reward("So we need $x > 5$.", "[5,\\infty)", extract="any") == 0.0
    assert math_reward("$1$, $2$, and $3$", "\\{1,2,3\\}", extract="any") == 1.0
    assert math_reward("$1$, $2$, and $4$", "\\{1,2,3\\}", extract="any") == 0.0
    assert math_reward("$x<2$ or $x>3$", "(-\\infty,2)\\cup(3,\\infty)", extract="any") == 1.0
    gold = "The roots satisfy $x^2 = 4$, so the answer is $\\{-2, 2\\}$."
    assert math_reward(B("\\{2,-2\\}"), gold, extract="any") == 1.0
    with pytest.raises(ValueError, match="extract"):
        math_reward(B("1"), "1", extract="last")
    with pytest.raises(ValueError, match="extract"):
        extract_answer("1", "last")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{1}, \\boxed{2}, and \\boxed{3}", ["1", "2", "3"]),
        ("$\\boxed{1}$ or $\\boxed{2}$", ["1", "2"]),
        ("\\boxed{1} then we see \\boxed{2}", ["2"]),
        ("\\boxed{\\frac{1}{\\boxed{2}}}", ["2"]),
        ("\\boxed{1", []),
        ("no box", []),
    ],
)
def test_boxed_group(text, expected):
    assert boxed_group(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$k=\\boxed{45}$ and $n=\\boxed{2}$", ["k=45", "n=2"]),
        ("$a_1 = \\boxed{3}$, $a_2 = \\boxed{5}$", ["a_1=3", "a_2=5"]),
        ("$k=\\boxed{45}$ and \\boxed{2}", ["45", "2"]),  # one box unlabelled: no labels
        ("\\boxed{k=45}, \\boxed{n=2}", ["k=45", "n=2"]),
        ("$k=\\boxed{45}$", ["45"]),
    ],
)
def test_boxed_group_labels(text, expected):
    assert boxed_group(text, labels=True) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The pairs are $(5, 8)$ and $(8, 5)$.", ["(5, 8)", "(8, 5)"]),
        ("$1$, $2$, and $3$", ["1", "2", "3"]),
        ("$1$; $2$ or $3$", ["1", "2", "3"]),
        ("we get $3$ then $4$", ["4"]),
        ("$$x$$ and $y$", ["y"]),
        ("no math", []),
    ],
)
def test_span_group(text, expected):
    assert span_group(text) == expected


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        "\\(" * 300_000,
        "$" * 600_000,
        "$a" * 300_000,
        "1," * 300_000,
        "\\boxed{1}, " * 50_000,
        "\\boxed{" * 100_000 + "\\boxed{1}",
        "Answer: " + "\\(" * 200_000,
        "final answer" * 50_000,
        "x" * 1_000_000,
        "AZYUK2A 1,2" * 100_000,
        "1," + "2" * 500_000 + "A",
        "$1$, " * 200_000,
        "\\boxed{1}" + " the answer is 2" * 60_000,
        "$k=\\boxed{1}$ and " * 50_000,
        "\\frac{1}{2} \\frac{" * 100_000,
    ],
    ids=[
        "parens",
        "dollars",
        "spans",
        "numbers",
        "boxes",
        "open_boxes",
        "answer",
        "markers",
        "x",
        "garbage",
        "comma_number",
        "span_run",
        "retraction",
        "labelled_boxes",
        "fractions",
    ],  # fmt: skip
)
def test_any_extraction_is_fast_on_megabytes(text):
    start = time.monotonic()
    for mode in ("boxed", "any"):
        for gold in ("1", "1, 2"):  # a scalar gold, and a list (box and span runs are read)
            math_reward(text, gold, extract=mode)
    assert time.monotonic() - start < SAFETY_BOUND


fast = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
FRAGMENTS = ["\\boxed{", "}", "$", "$$", "\\(", "\\)", "\\[", "\\]", "Answer:", "final answer",
             "1", "2,5", "x", "=", "\\approx", "<", "\\le", ":", ";", "{", "(", ")", "\n", " ",
             "and", "\\!", "\\,", "\\begin{array}{c}", "\\end{array}", "&", "\\\\"]  # fmt: skip


@fast
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join), st.sampled_from(FRAGMENTS))
def test_fuzz_any_mode_never_raises(completion, gold):
    start = time.monotonic()
    answer = extract_answer(completion, "any")
    assert answer is None or isinstance(answer, str)
    assert math_reward(completion, gold, extract="any") in (0.0, 1.0)
    assert is_equiv(completion, gold) in (True, False)
    assert time.monotonic() - start < SAFETY_BOUND


# ------------------------------------------------------------------ the labelled verifier set


def _load_cases() -> list[dict]:
    with open(os.path.join(HERE, "verifier_cases.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_labelled_set_is_shipped_as_generated():
    cases = _load_cases()
    assert [{k: v for k, v in c.items() if k != "id"} for c in cases] == rows()
    assert len(cases) >= 300
    assert sum(c["style"] == "adversarial" for c in cases) >= len(cases) // 10
    assert {c["label"] for c in cases} == {0, 1}


@pytest.mark.timeout(120)
def test_labelled_set_agreement():
    """Hand labels are the reference: no wrong answer accepted except abandoned boxes ("So far
    \\boxed{12}. Wait, ... so 15": a box cannot tell it was taken back; with extract="boxed"
    also a box that a later "the answer is 4" line takes back)."""
    cases = _load_cases()
    for mode, floor, taken_back in (("boxed", 0.69, 2), ("any", 0.95, 1)):
        scores = [math_reward(c["completion"], c["gold"], extract=mode) for c in cases]
        fp = [c["id"] for c, s in zip(cases, scores, strict=True) if s and not c["label"]]
        agree = sum(s == c["label"] for c, s in zip(cases, scores, strict=True)) / len(cases)
        assert all(cases[i]["category"] == "wrong_box" for i in fp), fp
        assert len(fp) <= taken_back, (mode, fp)
        assert agree >= floor, (mode, agree)


# ------------------------------------------------------------ backends and configuration


def test_math_verify_backend():
    pytest.importorskip("math_verify")
    fn = get_reward_fn("math_verify")
    assert fn(B("\\frac{1}{2}"), "0.5") == 1.0
    assert fn(B("\\frac{1}{3}"), "0.5") == 0.0
    assert fn("The total is 7425000.", "7425000") == 0.0  # boxed: no box, no answer
    assert get_reward_fn("math_verify", "any")("so $x = \\frac{1}{2}$", "0.5") == 1.0
    with Verifier("math_verify", workers=1, **dict(VERIFIER, timeout=30.0, extract="any")) as v:
        assert v.score([B("2"), "We get $2$.", B("3")], ["2", "2", "2"]).tolist() == [1, 1, 0]


def test_math_verify_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify now fails
    with pytest.raises(ImportError, match=r"redjax\[mathverify\]"):
        get_reward_fn("math_verify")
    with pytest.raises(ImportError, match=r"redjax\[mathverify\]"):
        Verifier("math_verify", workers=0, **VERIFIER)


def test_verifier_passes_extract_to_workers():
    texts, golds = ["The total is 7,425,000.", B("7,425,000")], ["7425000", "7425000"]
    with Verifier("math", workers=1, **dict(VERIFIER, extract="any")) as v:
        assert v.score(texts, golds).tolist() == [1.0, 1.0]
    with Verifier("math", workers=1, **VERIFIER) as v:
        assert v.name == "math" and v.score(texts, golds).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="extract"):
        Verifier("math", workers=0, **dict(VERIFIER, extract="last"))


def test_config_reward_extract():
    assert config.load(overrides=[]).reward.extract == "boxed"
    assert config.load(overrides=["reward.extract=any"]).reward.extract == "any"
    with pytest.raises(ValueError, match="reward.extract"):
        config.load(overrides=["reward.extract=last"])
