"""math_reward / is_equiv against a table of cases; extraction, format reward, registry, fuzzing."""

import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reward_cases import CASES, B

from redjax.rewards import (
    extract_answer,
    format_reward,
    get_reward_fn,
    is_equiv,
    math_reward,
    reward_path,
)

SAFETY_BOUND = 5.0  # seconds: the per-item time-out of a run (reward.timeout)


@pytest.mark.parametrize(
    "category, gold, completion, expected",
    CASES,
    ids=[f"{i:03d}-{case[0]}" for i, case in enumerate(CASES)],
)
def test_math_reward_table(category, gold, completion, expected):
    assert math_reward(completion, gold) == float(expected)


def test_table_covers_every_category_both_ways():
    kinds = {}
    for category, _, _, expected in CASES:
        kinds.setdefault(category, set()).add(expected)
    assert len(CASES) >= 150
    assert all(v == {0, 1} for v in kinds.values()), kinds
    for name in ("fraction", "sqrt", "units", "degrees", "percent", "thousands", "assignment",
                 "tuple", "set", "interval", "matrix", "symbolic", "text", "negative",
                 "scientific", "decimal", "asymmetry"):  # fmt: skip
        assert name in kinds


def test_asymmetry_is_gold_led():
    """The same two strings give different rewards when swapped."""
    assert is_equiv("\\{1,2\\}", "(2,1)") and not is_equiv("(2,1)", "\\{1,2\\}")
    assert is_equiv("1, 2", "(2,1)") and not is_equiv("(2,1)", "1, 2")
    assert is_equiv("\\{5\\}", "5") and not is_equiv("5", "\\{5\\}")
    assert is_equiv("(C)", "c") and not is_equiv("c", "(C)")


def test_rtol_is_configurable():
    assert math_reward(B("1.001"), "1.0") == 0.0
    assert math_reward(B("1.001"), "1.0", rtol=1e-2) == 1.0
    assert math_reward(B("1.1"), "1.0", rtol=1e-2) == 0.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed {  7 }", "7"),
        ("\\fbox{x+1}", "x+1"),
        ("$\\boxed 5$", "5"),
        ("The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("The answer is 3.5.", "3.5"),
        ("Answer: 12", "12"),
        ("**Final Answer:** 12", "12"),
        ("blah\n#### 1,234", "1,234"),
        ("no answer here", None),
        ("\\boxed{unbalanced", None),
        ("\\boxed{}", None),
        ("\\boxed", None),
        ("", None),
        ("\x00\\boxed{3}\x00", "3"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_non_string():
    assert extract_answer(None) is None
    assert math_reward(None, "1") == 0.0
    assert math_reward(B("1"), None) == 0.0


@pytest.mark.parametrize(
    "completion, think, expected",
    [
        ("so \\boxed{3}", False, 1.0),
        ("so 3", False, 0.0),
        ("Answer: 3", False, 0.0),
        ("<think>work</think> so \\boxed{3}", True, 1.0),
        ("  <think>\nwork\n</think>\n\\boxed{3}", True, 1.0),
        ("<think>work \\boxed{3}</think> done", True, 0.0),
        ("work</think> \\boxed{3}", True, 0.0),
        ("<think>a</think><think>b</think> \\boxed{3}", True, 0.0),
        ("<think>work \\boxed{3}", True, 0.0),
        ("so \\boxed{3}", True, 0.0),
    ],
)
def test_format_reward(completion, think, expected):
    assert format_reward(completion, think=think) == expected


def test_registry_builtins_and_paths():
    assert get_reward_fn("math")(B("2"), "2") == 1.0
    assert get_reward_fn("format")(B("2"), "3") == 1.0
    assert get_reward_fn("format_think")(B("2"), "2") == 0.0
    for name in ("_reward_plugins:exact", "_reward_plugins.exact", "redjax.rewards:math_reward"):
        assert get_reward_fn(name)("a", "a") in (1.0, 0.0)
    assert get_reward_fn("_reward_plugins.exact")("a", "a") == 1.0
    assert reward_path(math_reward) == "math"
    import _reward_plugins

    assert reward_path(_reward_plugins.exact) == "_reward_plugins:exact"


@pytest.mark.parametrize(
    "name", ["", "nope", "no_such_module:fn", "_reward_plugins:missing", "_reward_plugins.nope"]
)
def test_registry_bad_names(name):
    with pytest.raises(ValueError, match=repr(name) if name else "non-empty"):
        get_reward_fn(name)


def test_reward_path_rejects_unimportable():
    with pytest.raises(ValueError, match="workers=0"):
        reward_path(lambda c, g: 1.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "answer",
    [
        "9^{9^{9^{9}}}",
        "9^9^9^9",
        "10**10**10",
        "2^{10^{7}}",
        "(x+1)^{100000}",
        "1000000!",
        "\\binom{10^{9}}{10^{5}}",
        "(" * 500 + "1" + ")" * 500,
        "{" * 200 + "1" + "}" * 200,
        "\\frac{" * 100 + "1" + "}{2}" * 100,
        "\\sqrt{" * 300 + "2" + "}" * 300,
        "1" * 5000,
        "x" * 3000,
        "{{{{1",
        "}}}}1",
        "\\frac{1}{",
        "1\x00 2",
        "__import__('os').system('echo unsafe')",
        "\\text{" + "a" * 500 + "}",
    ],
)
def test_guards_reject_huge_or_malformed_answers(answer):
    """Refused by the normaliser before sympy evaluates anything (a hang would fail the test)."""
    start = time.monotonic()
    assert math_reward(f"\\boxed{{{answer}}}", "1") == 0.0
    assert math_reward(f"The answer is {answer}", "1") == 0.0
    assert is_equiv(answer, "1") is False
    assert time.monotonic() - start < SAFETY_BOUND


@pytest.mark.parametrize("answer", ["2(1,2)", "(1,2)(3,4)", "x(1,2)"])
def test_sympy_warnings_on_model_text_stay_quiet(answer):
    """Tuples times numbers make SymPy warn (deprecated Mul of a Tuple); the verifier scores
    such text without a warning reaching the trainer's output."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert math_reward(f"\\boxed{{{answer}}}", "3") == 0.0
    assert [str(w.message)[:60] for w in seen] == []


LATEX_FRAGMENTS = [
    "\\frac", "\\dfrac", "\\sqrt", "\\boxed{", "\\boxed", "\\fbox{", "{", "}", "(", ")", "[",
    "]", "\\{", "\\}", "^", "_", "9", "10", "0", "1", ".", ",", "1,000", "x", "y", "e", "i",
    "\\pi", "\\infty", "+", "-", "*", "**", "/", "=", "<", "\\le", "!", "%", "\\%", "$", "\\$",
    "\\left(", "\\right)", "\\cdot", "\\times", "\\text{", "\\mathrm{", " cm", "^\\circ", "|",
    "\\pm", "\\cup", "&", "\\\\", "\\begin{pmatrix}", "\\end{pmatrix}", "\\sin", "\\log",
    "\\binom", "answer:", "The final answer is ", "#### ", "<think>", "</think>", "\n", " ",
    "\x00", "\\",
]  # fmt: skip
latex_text = st.lists(st.sampled_from(LATEX_FRAGMENTS), max_size=40).map("".join)
fast = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@fast
@given(st.text(max_size=400), st.text(max_size=40))
def test_fuzz_arbitrary_text_never_raises(completion, gold):
    start = time.monotonic()
    answer = extract_answer(completion)
    assert answer is None or isinstance(answer, str)
    assert math_reward(completion, gold) in (0.0, 1.0)
    assert format_reward(completion, think=True) in (0.0, 1.0)
    assert time.monotonic() - start < SAFETY_BOUND


@fast
@given(latex_text, latex_text)
def test_fuzz_latex_fragments_never_raise(completion, gold):
    start = time.monotonic()
    answer = extract_answer(completion)
    assert answer is None or isinstance(answer, str)
    assert math_reward(completion, gold) in (0.0, 1.0)
    assert math_reward(f"\\boxed{{{completion}}}", completion) in (0.0, 1.0)
    assert is_equiv(gold, completion) in (True, False)
    assert time.monotonic() - start < SAFETY_BOUND


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(-(10**5), 10**5), st.integers(1, 999))
def test_fuzz_fractions_and_thousands(a, b):
    """Numbers written differently are equal; a neighbour (relative gap > 1e-6) is not."""
    assert math_reward(B(f"\\frac{{{a * b}}}{{{b}}}"), str(a)) == 1.0
    assert math_reward(B(f"{a:,}"), str(a)) == 1.0
    assert math_reward(B(str(a)), f"{a:,}") == 1.0
    assert math_reward(B(str(a + 1)), f"{a:,}") == 0.0
    assert math_reward(B(f"\\frac{{{a}}}{{{b}}}"), f"{a / b!r}") == 1.0
    assert math_reward(B(f"\\frac{{{a + 1}}}{{{b}}}"), f"\\frac{{{a}}}{{{b}}}") == 0.0
