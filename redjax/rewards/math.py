"""Math answer checking: extract the final answer, normalise LaTeX, compare with the gold.

Pipeline for one (gold, answer) pair, gold first, one module per job:
  1. redjax.rewards.extract: the completion's final answer: with extract="boxed" (the
     default) the last \\boxed{}, else an "answer is" / "answer:" / "####" line; with
     extract="any" also a "Final Answer" heading, a short answer-only text, the last math
     span or the last number (one standing alone: not touching a letter, "_", "^" or ".",
     not a brace group and not cut from a longer number, so "AZYUK2A", "x^2", "\\sqrt{2}"
     and "1,234,5" give none; "1,22" and "\\frac{3}{5}" are one number). With extract="any"
     an answer line after the last box takes it back ("\\boxed{3}. Wait, the answer is 4."
     is 4) when its answer has a digit and no prose (a number and one word, "4 apples", counts).
     A run of boxes ("\\boxed{1}, \\boxed{2}", each keeping a "k =" written just before it)
     answers a gold set or list as that list, and with extract="any" and no box so does a
     run of $ spans ("$(5,8)$ and $(8,5)$"); otherwise the last box counts;
  2. redjax.rewards.normalise: clean both strings (dollars, \\left/\\right, spacing, \\dfrac,
     \\text{}, units, degrees, thousands separators "1,234" (a first group of 1-3 digits
     not led by 0, then groups of exactly 3), a trailing period, "x =");
  3. redjax.rewards.parse: read the structure of the gold: a matrix, a union of intervals, a
     set, a bracketed tuple or interval, a bare comma list (also "a \\pm b"), or one scalar;
  4. redjax.rewards.lex: translate each scalar into tokens over a fixed vocabulary for sympy;
  5. redjax.rewards.compare: compare by the gold's structure, item by item. Two scalars are
     equal when their normalised strings match; else, for constants, when their values agree
     within `rtol` relative to the gold (two integers must be equal exactly); else, with free
     symbols, when they agree at fixed irrational points and sympy's simplify(gold - answer)
     is 0 (agreement at >= 3 points alone is accepted when simplify cannot decide).
     Equations and inequalities ("x+y=3", "x>3") are equal up to a constant factor (positive
     for "<").

Forms read as the same answer (each rule has negative tests in tests/test_verifier.py):
  - a chain states its last side ("x = 5+5+1 = 11" is 11; "4! = 24" is 24, two sides only
    when neither has a letter outside a \\command: "7 = 11a + c" is an equation, not
    11a + c); with \\approx, the last exact side ("x = \\frac13 \\approx 0.33" is 1/3;
    "x \\approx 3.14" is 3.14);
  - labels: "(p,q)=(3,2)", "q=2, p=3" and "S:T=7:32" are compared value by label when both
    sides carry labels; an unlabelled gold takes a labelled answer's values ("45, 2" vs
    "k=45, n=2"), but a labelled gold tuple or list needs a labelled answer ("(1,2)" does not
    say which is x; "45, 2" does not say which is n); a labelled ratio "S:T=7:32" is
    answered by "7:32", a ratio stating its order;
  - an inequality in one variable is an interval: "-1 < x \\le 3" is "(-1, 3]", "x \\ge 5"
    is "[5, \\infty)", "x < 2 \\text{ or } x > 3" a union;
  - "\\cfrac", "\\lt", "\\gt", "\\ne", "\\leqslant", unicode "\u2264"; "!=" is "\\neq" unless
    it follows a digit, ")", "]", "}" or "!" ("5!=120" is a factorial); "32,\\! 349" and
    "1\\,000" are numbers; "{1,2}" is a set; "1; 2; 3" a list; "7:32" a ratio; "pmatrix",
    "bmatrix", "Bmatrix", "matrix" and "\\left[\\begin{array}...\\end{array}\\right]" are one
    matrix (not "vmatrix"/"Vmatrix": a determinant and a norm are numbers);
  - decimal commas: an answer "d,d" (digits, one comma, digits, no space) that is not a
    thousands number ("1,22", "1,2345", "0,125") is a decimal against a gold with no comma
    ("1,22" is 1.22, never 122; "1,234" stays 1234, "1, 2" a list); a gold "1000,99" is a
    decimal only with 4+ digits on one side ("2,3" is the list 2, 3);
  - rounding: a decimal answer equals a real constant gold that no decimal writes exactly
    (irrational, or p/q with a prime other than 2, 5 in q) when it is the gold rounded half
    away from zero to the answer's own decimals and has >= 4 significant digits ("0.3333"
    and "0.1429" are 1/3 and 1/7; "0.333", "0.3334" are not; "0.13" is not 1/8; a gold
    written as a number, "7" or "0.33333", is never rounded);

The comparison is deliberately gold-led, not symmetric:
  - the gold decides the structure: a gold set or bare list ("1, 2") is unordered and the
    answer may write it as a set, a bare list or a parenthesised tuple (a lone scalar
    answers a one-element gold set); a gold tuple, interval or matrix is ordered and the
    answer must use the same kind of brackets: gold "\\{1,2\\}" vs answer "(2,1)" is right,
    gold "(2,1)" vs answer "\\{1,2\\}" is wrong;
  - the numeric tolerance is relative to the gold's value, |gold - answer| <= rtol * |gold|
    (a gold of exactly 0 needs an answer of exactly 0);
  - a gold that sympy cannot read (a word of 4+ letters, "\\text{yes}", a choice "(B)") is
    compared as text, case-insensitively; an answer that sympy cannot read only matches such
    a gold; gold "(C)" vs answer "c" is right, gold "c" vs answer "(C)" is wrong (symbols);
  - a gold containing \\boxed{} or "####" is reduced to that answer, otherwise the gold is
    used whole (GSM8K-style "1,234"); a completion with no extractable answer scores 0.
Percent: "50\\%" equals "50" (the sign dropped) and "0.5" (the value). Degrees are dropped
("30^\\circ" equals "30", not "\\pi/6"). Known units, \\text{} units and the words after a
lone number ("5 cm", "12 apples", "5 \\text{ dollars}") are dropped.

Safety: inputs that are too long or too deeply nested are rejected, and powers, factorials
and binomials are bounded before sympy evaluates anything (see redjax.rewards.lex).
"""

from __future__ import annotations

from redjax.rewards.compare import MAX_CHARS, MAX_DEPTH, MAX_ITEMS, MAX_OPS, RTOL, is_equiv
from redjax.rewards.extract import (
    ANSWER_MARKERS,
    EXTRACT_MODES,
    boxed_group,
    extract_answer,
    span_group,
)
from redjax.rewards.lex import MAX_DIGITS, Reject, to_sympy
from redjax.rewards.normalise import clean
from redjax.rewards.parse import structure

__all__ = ["MAX_CHARS", "MAX_DEPTH", "MAX_DIGITS", "MAX_ITEMS", "MAX_OPS", "RTOL", "Reject"]
__all__ += ["clean", "gold_answer", "is_equiv", "math_reward", "math_reward_any", "structure"]
__all__ += ["to_sympy"]


def gold_answer(gold: str, extract: str = "boxed") -> str:
    """The answer in a gold string: its boxed answer (several boxes in a row: their list) or
    "####" answer (with extract="any", also an "answer is" line), else all of it."""
    if not isinstance(gold, str):
        return ""
    if "\\boxed" in gold or "\\fbox" in gold:
        group = boxed_group(gold)
        return ", ".join(group) if group else gold
    lower = gold.lower()
    if "####" in gold or (extract == "any" and any(m in lower for m in ANSWER_MARKERS)):
        return extract_answer(gold) or gold
    return gold


def _is_collection(gold: str) -> bool:
    """Whether a gold is a set or a bare list of two or more items (several boxes answer it)."""
    shape = structure(clean(gold))
    return shape[0] == "seq" and shape[1] in ("{", "") and len(shape[3]) > 1


def _group_answer(completion: str, gold: str, answer: str, extract: str) -> str:
    """A gold set or list is answered by the run of boxes ending in the extracted answer (each
    box keeping a "k =" written before it), or with extract="any" by such a run of $ spans."""
    if not _is_collection(gold):
        return answer
    boxes = sum(completion.count(cmd) for cmd in ("\\boxed", "\\fbox"))
    if boxes > 1:
        group = boxed_group(completion)
        if len(group) > 1 and group[-1] == answer:
            return ", ".join(boxed_group(completion, labels=True))
    elif boxes == 0 and extract == "any":
        group = span_group(completion)
        if len(group) > 1 and group[-1] == answer:
            return ", ".join(group)
    return answer


def math_reward(completion: str, gold: str, *, rtol: float = RTOL, extract: str = "boxed") -> float:
    """1.0 if the completion's final answer equals the gold answer, else 0.0; never raises.

    extract: "boxed" reads the last \\boxed{} (else an "answer is" line); "any" reads the
    final answer wherever the model put it (see redjax.rewards.extract). When the gold is a
    set or list, a run of boxes "\\boxed{1}, \\boxed{2}" (with "any" and no box, a run of $
    spans) is compared as that list.
    """
    if extract not in EXTRACT_MODES:
        raise ValueError(f"math_reward: extract must be one of {EXTRACT_MODES}, got {extract!r}")
    try:
        answer = extract_answer(completion, extract)
        if answer is None:
            return 0.0
        gold = gold_answer(gold, extract)
        answer = _group_answer(completion, gold, answer, extract)
        return 1.0 if is_equiv(gold, answer, rtol=rtol) else 0.0
    except Exception:
        return 0.0


def math_reward_any(completion: str, gold: str) -> float:
    """`math_reward` with extract="any": the built-in reward "math" under reward.extract=any."""
    return math_reward(completion, gold, extract="any")
