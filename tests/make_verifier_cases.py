r"""Writes tests/verifier_cases.jsonl: labelled (gold, completion) pairs for bench/verifier.py.

Each base item is (category, gold, final answer as the model writes it, label), labelled by
hand: 1 when the answer is mathematically the gold, 0 when not, whatever its form. Each is
rendered in one or more styles that real model output uses: a long solution ending in a box,
a "**Final Answer**" heading, the last inline math span, an "Answer:" line, a bare number in
a sentence. Hand-written completions (wrongly boxed, several boxes, adversarial) follow.
Run: python tests/make_verifier_cases.py
"""

import json
import os

PROSE = [
    "Let me set up the problem. We know the first quantity is 3 and the second is 4, so their "
    "sum is $3 + 4 = 7$. Multiplying by 2 gives 14, and we still need to account for the rest.",
    "First, I'll rewrite the expression. Expanding gives $x^2 + 2x + 1$, which factors as "
    "$(x+1)^2$. Substituting the condition from step 2, the remaining case follows.",
    "We count the cases separately. Case 1 gives 6 arrangements and case 2 gives 10, but 2 of "
    "them were counted twice, so we subtract. Checking small values confirms the pattern.",
    "Using the formula $A = \\frac{1}{2}bh$ with $b = 8$ and $h = 5$, the area is 20. Then we "
    "compare with the second figure, whose dimensions are 9 and 4.",
    "Step 1: Simplify both sides.\nStep 2: Isolate the variable; dividing by 3 gives the value "
    "we want.\nStep 3: Verify by substitution: both sides agree.",
]

STYLES = {
    "boxed": "{p}\n\nTherefore, the final answer is $\\boxed{{{a}}}$.",
    "boxed_display": "{p}\n\nPutting it together:\n\\[\n\\boxed{{{a}}}\n\\]",
    "final": "{p}\n\n**Final Answer**\n\n${a}$",
    "inline": "{p} Hence the answer we are looking for is ${a}$.",
    "answer_line": "{p}\n\nAnswer: {a}",
    "last_math": "{p}\n\nSo in the end we get $${a}$$",
    "bare": "{p}\nSo the result comes to {a}.",
}

# (category, gold, answer as written, label, styles)
ALL = ("boxed", "final", "inline", "answer_line")
NUM = ("boxed", "final", "bare", "answer_line")
BASE = [
    ("integer", "42", "42", 1, NUM),
    ("integer", "42", "24", 0, NUM),
    ("integer", "-7", "-7", 1, ALL),
    ("integer", "-7", "7", 0, ("boxed", "final")),
    ("integer", "100", "100.0", 1, ("boxed", "inline")),
    ("integer", "0", "0", 1, ("boxed", "bare")),
    ("thousands", "7425000", "7,425,000", 1, NUM),
    ("thousands", "7,425,000", "7425000", 1, ("boxed", "bare")),
    ("thousands", "7425000", "7,524,000", 0, ("boxed", "bare")),
    ("thousands", "32349", "32,\\!349", 1, ("boxed", "final")),
    ("thousands", "32349", "32,\\! 349", 1, ("boxed", "inline")),
    ("thousands", "1000", "1\\,000", 1, ("boxed", "final")),
    ("thousands", "1000", "10\\,000", 0, ("boxed",)),
    ("decimal_comma", "1000.99", "1000,99", 1, ("boxed", "final")),
    ("decimal_comma", "3.75", "3,75", 1, ("boxed",)),
    ("decimal_comma", "3.75", "3,57", 0, ("boxed",)),
    ("fraction", "\\frac{3}{4}", "\\frac{3}{4}", 1, ALL),
    ("fraction", "\\frac{3}{4}", "0.75", 1, ("boxed", "final", "bare")),
    ("fraction", "\\frac{3}{4}", "\\dfrac{6}{8}", 1, ("boxed", "inline")),
    ("fraction", "\\frac{3}{4}", "\\frac{4}{3}", 0, ("boxed", "final")),
    ("fraction", "\\frac{1}{3}", "0.333", 0, ("boxed",)),
    ("fraction", "\\frac{5}{2}", "\\cfrac{5}{2}", 1, ("boxed", "final")),
    ("fraction", "\\frac{5}{2}", "2\\frac{1}{2}", 1, ("boxed",)),
    ("fraction", "\\frac{5}{2}", "\\cfrac{2}{5}", 0, ("boxed",)),
    ("decimal", "2.5", "\\frac{5}{2}", 1, ("boxed", "final")),
    ("decimal", "0.125", "\\frac{1}{8}", 1, ("boxed", "inline")),
    ("decimal", "0.125", "0.0125", 0, ("boxed",)),
    ("money", "18.50", "\\$18.50", 1, ("boxed", "answer_line")),
    ("money", "18.50", "\\$18.05", 0, ("boxed",)),
    ("percent", "25\\%", "25\\%", 1, ("boxed", "final")),
    ("percent", "25\\%", "0.25", 1, ("boxed",)),
    ("percent", "25\\%", "2.5\\%", 0, ("boxed",)),
    ("units", "12", "12 \\text{ cm}", 1, ("boxed", "final")),
    ("units", "12", "12 \\text{ cm}^2", 1, ("boxed",)),
    ("units", "12", "21 \\text{ cm}", 0, ("boxed",)),
    ("degrees", "60", "60^\\circ", 1, ("boxed", "final")),
    ("degrees", "60", "50^\\circ", 0, ("boxed",)),
    ("sqrt", "2\\sqrt{3}", "\\sqrt{12}", 1, ("boxed", "final", "inline")),
    ("sqrt", "2\\sqrt{3}", "3\\sqrt{2}", 0, ("boxed", "final")),
    ("sqrt", "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", 1, ("boxed", "last_math")),
    ("sqrt", "\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{3}}{2}", 0, ("boxed",)),
    ("symbolic", "x^2+2x+1", "(x+1)^2", 1, ("boxed", "final")),
    ("symbolic", "x^2+2x+1", "(x-1)^2", 0, ("boxed", "final")),
    ("symbolic", "\\frac{\\pi}{3}", "\\frac{\\pi}{3}", 1, ("boxed", "inline")),
    ("symbolic", "\\frac{\\pi}{3}", "60", 0, ("boxed",)),
    ("symbolic", "2\\pi", "6.283185307", 1, ("boxed",)),
    ("symbolic", "e^2", "e^{2}", 1, ("boxed", "final")),
    ("complex", "3-4i", "-4i+3", 1, ("boxed", "final")),
    ("complex", "3-4i", "3+4i", 0, ("boxed",)),
    ("scientific", "6.02\\times10^{23}", "6.02 \\cdot 10^{23}", 1, ("boxed",)),
    ("scientific", "6.02\\times10^{23}", "6.02 \\times 10^{32}", 0, ("boxed",)),
    ("equation", "y=2x+3", "y = 3 + 2x", 1, ("boxed", "final", "inline")),
    ("equation", "y=2x+3", "y = 2x - 3", 0, ("boxed", "final")),
    ("equation", "x+y=3", "2x+2y=6", 1, ("boxed",)),
    ("assignment", "5", "x = 5", 1, ("boxed", "final", "inline")),
    ("assignment", "5", "x = 6", 0, ("boxed", "final")),
    ("chain", "11", "x = 5+5+1 = 11", 1, ("boxed", "final", "inline")),
    ("chain", "11", "x = 5+5+2 = 12", 0, ("boxed", "final")),
    ("chain", "\\frac{1}{3}", "p = \\frac{1}{3} \\approx 0.333", 1, ("boxed", "final")),
    ("chain", "3.14", "x \\approx 3.14", 1, ("boxed", "inline")),
    ("chain", "3.14", "x \\approx 3.41", 0, ("boxed",)),
    ("inequality", "[5, \\infty)", "x \\geq 5", 1, ("boxed", "final", "inline")),
    ("inequality", "[5, \\infty)", "x > 5", 0, ("boxed", "final")),
    ("inequality", "(-793, 10)", "-793 < a < 10", 1, ("boxed", "final")),
    ("inequality", "(-793, 10)", "-793 \\le a < 10", 0, ("boxed",)),
    ("inequality", "x \\ge 5", "[5,\\infty)", 1, ("boxed", "inline")),
    ("inequality", "x<3", "x \\lt 3", 1, ("boxed", "final")),
    ("inequality", "x<3", "x \\gt 3", 0, ("boxed",)),
    ("inequality", "x \\neq 2", "x \\ne 2", 1, ("boxed",)),
    ("inequality", "(-\\infty, 2)", "x<2", 1, ("boxed",)),
    ("interval", "(-\\infty, 3]", "(-\\infty, 3]", 1, ("boxed", "final")),
    ("interval", "(-\\infty, 3]", "(-\\infty, 3)", 0, ("boxed", "final")),
    ("interval", "(-\\infty,1)\\cup(2,\\infty)", "(2,\\infty)\\cup(-\\infty,1)", 1, ("boxed",)),
    ("interval", "(-\\infty,1)\\cup(2,\\infty)", "(-\\infty,1]\\cup(2,\\infty)", 0, ("boxed",)),
    ("set", "\\{1,2,3\\}", "\\{3,1,2\\}", 1, ("boxed", "final")),
    ("set", "\\{1,2,3\\}", "{1, 2, 3}", 1, ("boxed", "final", "inline")),
    ("set", "\\{1,2,3\\}", "{1, 2, 4}", 0, ("boxed", "final")),
    ("set", "\\{1,2,3\\}", "\\{1,2\\}", 0, ("boxed",)),
    ("list", "-2, 3", "x = 3 \\text{ or } x = -2", 1, ("boxed", "final")),
    ("list", "-2, 3", "3, 2", 0, ("boxed",)),
    ("list", "1, 2, 3", "1; 2; 3", 1, ("boxed", "final")),
    ("list", "1, 2, 3", "1; 2; 5", 0, ("boxed",)),
    ("plusminus", "1 \\pm \\sqrt{2}", "1+\\sqrt{2}, 1-\\sqrt{2}", 1, ("boxed",)),
    ("tuple", "(1,2)", "(1, 2)", 1, ("boxed", "final", "inline")),
    ("tuple", "(1,2)", "(2, 1)", 0, ("boxed", "final")),
    ("tuple", "(\\frac{1}{2}, -3)", "(0.5, -3)", 1, ("boxed",)),
    ("labelled", "(p,q)=(3,2)", "p=3, q=2", 1, ("boxed", "final")),
    ("labelled", "(p,q)=(3,2)", "(p, q) = (3, 2)", 1, ("boxed", "inline")),
    ("labelled", "(p,q)=(3,2)", "p=2, q=3", 0, ("boxed", "final")),
    ("labelled", "(3,2)", "(p,q)=(3,2)", 1, ("boxed",)),
    ("labelled", "AB=4, CD=5", "CD = 5, AB = 4", 1, ("boxed", "final")),
    ("labelled", "AB=4, CD=5", "AB = 5, CD = 4", 0, ("boxed",)),
    ("labelled", "S:T=7:32", "7:32", 1, ("boxed", "final")),
    ("labelled", "S:T=7:32", "32:7", 0, ("boxed",)),
    ("labelled", "7:32", "S:T = 7:32", 1, ("boxed",)),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}",
        1,
        ("boxed", "final", "inline"),
    ),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        "\\left[\\begin{array}{cc}1&2\\\\3&4\\end{array}\\right]",
        1,
        ("boxed", "final"),
    ),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        "\\left[\\begin{array}{cc}1&3\\\\2&4\\end{array}\\right]",
        0,
        ("boxed", "final"),
    ),
    (
        "matrix",
        "\\begin{pmatrix}2\\\\-1\\end{pmatrix}",
        "\\begin{pmatrix}2\\\\-1\\end{pmatrix}",
        1,
        ("boxed", "inline"),
    ),
    ("matrix", "\\begin{pmatrix}2\\\\-1\\end{pmatrix}", "(2, -1)", 0, ("boxed",)),
    ("text", "\\text{Monday}", "\\text{Monday}", 1, ("boxed", "final")),
    ("text", "\\text{Monday}", "\\text{Tuesday}", 0, ("boxed",)),
    ("text", "(B)", "B", 1, ("boxed", "answer_line")),
    ("text", "(B)", "C", 0, ("boxed", "answer_line")),
    ("text", "\\text{yes}", "Yes", 1, ("boxed",)),
    ("text", "\\text{yes}", "No", 0, ("boxed",)),
    ("integer", "2024", "2024", 1, NUM),
    ("integer", "2024", "2025", 0, ("boxed", "bare")),
    ("integer", "15", "15", 1, ("boxed_display", "last_math", "inline")),
    ("integer", "15", "16", 0, ("boxed_display", "last_math")),
    ("fraction", "-\\frac{7}{3}", "\\frac{-7}{3}", 1, ("boxed", "final", "inline")),
    ("fraction", "-\\frac{7}{3}", "\\frac{7}{3}", 0, ("boxed", "final")),
    ("decimal", "0.6", "\\frac{3}{5}", 1, ("boxed", "bare")),
    ("decimal", "0.6", "0.06", 0, ("boxed", "bare")),
    ("sqrt", "\\sqrt[3]{2}", "2^{1/3}", 1, ("boxed", "final")),
    ("sqrt", "\\sqrt[3]{2}", "2^{1/2}", 0, ("boxed",)),
    ("symbolic", "\\frac{x+1}{x-1}", "\\frac{1+x}{x-1}", 1, ("boxed", "final")),
    ("symbolic", "\\frac{x+1}{x-1}", "\\frac{x-1}{x+1}", 0, ("boxed",)),
    ("symbolic", "\\binom{8}{3}", "56", 1, ("boxed", "bare")),
    ("symbolic", "\\binom{8}{3}", "336", 0, ("boxed",)),
    ("symbolic", "3\\ln 2", "\\ln 8", 1, ("boxed",)),
    ("money", "1250", "\\$1,250", 1, ("boxed", "bare")),
    ("money", "1250", "\\$1,520", 0, ("boxed",)),
    ("chain", "24", "4! = 24", 1, ("boxed", "inline")),
    ("chain", "24", "4! = 4 \\cdot 3 \\cdot 2 = 24", 1, ("boxed", "final")),
    ("chain", "24", "3! = 6", 0, ("boxed",)),
    ("set", "\\{-1, 1\\}", "\\{1, -1\\}", 1, ("boxed", "inline")),
    ("set", "\\{-1, 1\\}", "\\{1\\}", 0, ("boxed",)),
    ("tuple", "(3, -1)", "(3,-1)", 1, ("boxed", "final")),
    ("tuple", "(3, -1)", "(-1, 3)", 0, ("boxed",)),
    ("interval", "[2, 5)", "[2,5)", 1, ("boxed", "final")),
    ("interval", "[2, 5)", "(2,5)", 0, ("boxed", "final")),
    ("inequality", "(-3, 3)", "-3 < x < 3", 1, ("boxed", "inline")),
    ("inequality", "(-3, 3)", "|x| < 3", 1, ("boxed",)),
    ("units", "45", "45 minutes", 1, ("boxed", "bare")),
    ("units", "45", "54 minutes", 0, ("boxed", "bare")),
    ("percent", "40", "40\\%", 1, ("boxed", "final")),
    ("percent", "40", "4\\%", 0, ("boxed",)),
]

P = PROSE
WRITTEN = [  # (category, gold, completion, label): wrong boxes, several boxes, no answer
    ("wrong_box", "15", P[0] + " So far $\\boxed{12}$. Wait, I forgot the 3 extra, so 15.", 1),
    ("wrong_box", "12", P[0] + " So far $\\boxed{12}$. Wait, I forgot the 3 extra, so 15.", 0),
    ("wrong_box", "9", P[2] + " The answer is $\\boxed{8}$.", 0),
    ("wrong_box", "\\frac{1}{2}", P[3] + " Thus $\\boxed{\\frac{1}{2}x}$.", 0),
    ("wrong_box", "4", P[4] + " We get $\\boxed{x = 4 \\text{ or } x = -4}$.", 0),
    ("wrong_box", "20", P[3] + "\n\nFinal answer: $\\boxed{20}$ square units", 1),
    ("wrong_box", "6", "Let me think. " + P[1] + " The answer is \\boxed{6", 0),
    ("wrong_box", "10", P[2] + " Hence \\boxed{} is 10.", 1),
    (
        "several_boxes",
        "\\{1,2,3\\}",
        P[4] + " The roots are $\\boxed{1}$, $\\boxed{2}$, $\\boxed{3}$.",
        1,
    ),
    ("several_boxes", "1, 2, 3", P[4] + " So $x=\\boxed{1}, \\boxed{2}$ and $\\boxed{3}$.", 1),
    (
        "several_boxes",
        "\\{1,2,3\\}",
        P[4] + " The roots are $\\boxed{1}$, $\\boxed{2}$, $\\boxed{4}$.",
        0,
    ),
    ("several_boxes", "\\{1,2,3\\}", P[4] + " The roots are $\\boxed{1}$ and $\\boxed{2}$.", 0),
    ("several_boxes", "\\boxed{1}, \\boxed{2}", P[4] + " So $\\boxed{2}$ and $\\boxed{1}$.", 1),
    ("several_boxes", "3", P[0] + " First $\\boxed{5}$, then corrected: $\\boxed{3}$.", 1),
    ("several_boxes", "5", P[0] + " First $\\boxed{5}$, then corrected: $\\boxed{3}$.", 0),
    ("several_boxes", "-1, 4", P[1] + " so $x = \\boxed{-1}$ or $x = \\boxed{4}$.", 1),
    ("no_answer", "7", P[0], 0),
    ("no_answer", "7", "I am not sure how to solve this problem.", 0),
    ("no_answer", "7", "", 0),
    ("sentence", "12", P[2] + "\n\nAnswer: The number of ways is 12.", 1),
    ("sentence", "12", P[2] + "\n\nAnswer: The number of ways is $12$.", 1),
    ("sentence", "12", P[2] + "\n\nAnswer: The number of ways is 21.", 0),
    ("bare", "7425000", "7,425,000", 1),
    ("bare", "7425000", "7,425,001", 0),
    ("bare", "\\frac{1}{2}", "\\frac{1}{2}", 1),
    ("bare", "[5,\\infty)", "$x \\geq 5$", 1),
    ("bare", "[5,\\infty)", "$x \\geq 6$", 0),
    ("bare", "\\{1,2\\}", "{1, 2}", 1),
    ("gsm8k", "18", "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", 1),
    ("gsm8k", "18", "Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 16", 0),
    ("think", "12", "<think>maybe \\boxed{11}</think> The answer is \\boxed{12}.", 1),
    ("think", "11", "<think>maybe \\boxed{11}</think> The answer is \\boxed{12}.", 0),
]

HUGE = "10^{10^{10}}"
NEST = "\\frac{1}{" * 61 + "2" + "}" * 61  # 61 reciprocals of 2: 1/2
ADVERSARIAL = [  # near-misses, substrings, huge values, deep nesting, injections
    ("near_miss", "\\frac{1}{3}", P[0] + " $\\boxed{0.3333}$", 1),  # rounded (see ADDED)
    ("near_miss", "\\frac{2}{3}", P[0] + " $\\boxed{0.67}$", 0),
    ("near_miss", "123456789", P[0] + " $\\boxed{123456790}$", 0),
    ("near_miss", "\\sqrt{2}", P[0] + " $\\boxed{1.414}$", 1),  # rounded
    ("near_miss", "\\pi", P[0] + " $\\boxed{3.14}$", 0),
    ("near_miss", "x^2+1", P[1] + " $\\boxed{x^2-1}$", 0),
    ("near_miss", "2^{10}", P[1] + " $\\boxed{1024}$", 1),
    ("near_miss", "2^{10}", P[1] + " $\\boxed{1023}$", 0),
    ("near_miss", "(1,2)", P[1] + " $\\boxed{(1,2]}$", 0),
    ("near_miss", "-5", P[1] + " $\\boxed{5}$", 0),
    ("substring", "12", P[2] + " $\\boxed{123}$", 0),
    ("substring", "2", P[2] + " $\\boxed{12}$", 0),
    ("substring", "3", P[2] + " $\\boxed{\\frac{3}{4}}$", 0),
    ("substring", "\\frac{1}{2}", P[2] + " $\\boxed{\\frac{1}{2}+\\frac{1}{2}}$", 0),
    ("substring", "5", P[2] + " $\\boxed{5x}$", 0),
    ("substring", "x+1", P[2] + " $\\boxed{x+1+y}$", 0),
    ("substring", "12", P[2] + " The answer is 12 or 13, so $\\boxed{13}$.", 0),
    ("substring", "\\{1,2\\}", P[2] + " $\\boxed{\\{1,2,3\\}}$", 0),
    ("huge", "1", P[3] + f" $\\boxed{{{HUGE}}}$", 0),
    ("huge", HUGE, P[3] + f" $\\boxed{{{HUGE}}}$", 1),
    ("huge", HUGE, P[3] + " $\\boxed{10^{10^{9}}}$", 0),
    ("huge", "1", P[3] + " $\\boxed{9^{9^{9^{9}}}}$", 0),
    ("huge", "1", P[3] + " $\\boxed{(10^{6})!}$", 0),
    ("huge", "1", P[3] + " the answer is 10**10**10", 0),
    ("nested", "1", P[4] + " $\\boxed{" + "(" * 300 + "1" + ")" * 300 + "}$", 1),
    ("nested", "1", P[4] + " $\\boxed{" + "(" * 300 + "2" + ")" * 300 + "}$", 0),
    ("nested", "2", P[4] + f" $\\boxed{{{NEST}}}$", 0),
    ("nested", "\\frac{1}{2}", P[4] + f" $\\boxed{{{NEST}}}$", 1),
    ("nested", "1", P[4] + " $\\boxed{" + "{" * 500 + "1" + "}" * 500 + "}$", 1),
    ("nested", "1", P[4] + " $\\boxed{\\sqrt{" * 50 + "1" + "}}" * 50 + "$", 1),
    ("injection", "1", P[0] + " $\\boxed{__import__('os')._exit(3)}$", 0),
    ("unbalanced", "1", P[0] + " $\\boxed{\\frac{1}{2" + "{" * 200 + "$", 0),
    ("long", "2", "x" * 20000 + " so $\\boxed{2}$", 1),
    ("long", "2", "x" * 20000 + " so $\\boxed{3}$", 0),
]

B = "So the final answer is $\\boxed{{{}}}$.".format
RETRACTED = P[0] + " So $\\boxed{3}$. Wait, that's wrong; the answer is 4."
# Added after the rules of rounding, decimal commas, "!=", labelled boxes and spans, a retraction
# after the box, and the false-positive classes they guard (a digit in a garbage token, an
# equation's right side, a partial number); appended last so earlier ids stay as they were.
ADDED = [  # (category, gold, completion, label, style)
    ("garbage", "2", "AZYUK2A", 0, "adversarial"),
    ("garbage", "2", P[0] + " The code is AZYUK2A.", 0, "adversarial"),
    ("garbage", "2", "So the vector is v2", 0, "adversarial"),
    ("garbage", "2", "so we end with x^2", 0, "adversarial"),
    ("garbage", "7", "ID7X9", 0, "adversarial"),
    ("garbage", "2", P[3] + " So the probability is \\frac{1}{2}.", 0, "adversarial"),
    ("equation_rhs", "7 = 11a + c", B("11a + c"), 0, "adversarial"),
    ("equation_rhs", "7 = 11a + c", P[1] + " So $11a + c$.", 0, "adversarial"),
    ("equation_rhs", "2x + 3y = 12", B("12"), 0, "adversarial"),
    ("equation_rhs", "7 = 11a + c", B("11a + c = 7"), 1, "written"),
    ("equation_rhs", "7 = 11a + c", B("c = 7 - 11a"), 1, "written"),
    ("substring", "123", B("12"), 0, "adversarial"),
    ("substring", "123", P[2] + " The answer is 12.", 0, "adversarial"),
    ("substring", "\\frac{1}{30}", B("\\frac{1}{3}"), 0, "adversarial"),
    ("substring", "\\frac{1}{3}", B("\\frac{1}{30}"), 0, "adversarial"),
    ("substring", "1/30", "so it is 1/3", 0, "adversarial"),
    ("wrong_box", "3", RETRACTED, 0, "adversarial"),
    ("wrong_box", "4", RETRACTED, 1, "written"),
    ("near_miss", "\\frac{1}{3}", B("0.3"), 0, "adversarial"),
    ("near_miss", "\\frac{1}{3}", B("0.3334"), 0, "adversarial"),
    ("near_miss", "\\frac{2}{3}", B("0.6666"), 0, "adversarial"),
    ("near_miss", "\\sqrt{2}", B("1.4143"), 0, "adversarial"),
    ("near_miss", "\\pi", B("3.1415"), 0, "adversarial"),
    ("near_miss", "\\frac{1}{8}", B("0.1300"), 0, "adversarial"),
    ("near_miss", "0.33333", B("0.3333"), 0, "adversarial"),
    ("near_miss", "7", B("7.0001"), 0, "adversarial"),
    ("rounded", "\\frac{1}{7}", B("0.1429"), 1, "written"),
    ("rounded", "-\\frac{2}{3}", B("-0.6667"), 1, "written"),
    ("rounded", "\\sqrt{2}", "Answer: 1.4142", 1, "written"),
    ("rounded", "2\\pi", B("6.2832"), 1, "written"),
    ("decimal_comma", "1.22", B("1,22"), 1, "written"),
    ("decimal_comma", "1.22", P[0] + " so it comes to 1,22.", 1, "written"),
    ("decimal_comma", "\\frac{1}{4}", B("0,25"), 1, "written"),
    ("decimal_comma", "1.2345", B("1,2345"), 1, "written"),
    ("decimal_comma", "122", B("1,22"), 0, "adversarial"),
    ("decimal_comma", "1.234", B("1,234"), 0, "adversarial"),
    ("decimal_comma", "1234", B("1,234"), 1, "written"),
    ("inequality", "x \\neq 3", B("x != 3"), 1, "written"),
    ("inequality", "x \\neq 3", B("x != 4"), 0, "adversarial"),
    ("inequality", "[-2, 7]", B("-2 \\le x \\le 7"), 1, "written"),
    ("inequality", "[-2, 7]", B("-2 < x \\le 7"), 0, "adversarial"),
    (
        "matrix",
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        B("\\begin{vmatrix}1&2\\\\3&4\\end{vmatrix}"),
        0,
        "adversarial",
    ),
    (
        "matrix",
        "\\begin{array}{cc}1&2\\\\3&4\\end{array}",
        B("\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}"),
        1,
        "written",
    ),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8), (8, 5)"), 1, "written"),
    (
        "tuple_set",
        "\\{(8,5),(5,8)\\}",
        P[4] + " The pairs are $(5, 8)$ and $(8, 5)$.",
        1,
        "written",
    ),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8), (8, 6)"), 0, "adversarial"),
    ("tuple_set", "(8,5),(5,8)", B("(5, 8)"), 0, "adversarial"),
    ("labelled", "n=2, k=45", B("k = 45, n = 2"), 1, "written"),
    ("labelled", "45, 2", B("k = 45, n = 2"), 1, "written"),
    ("labelled", "n=2, k=45", B("45, 2"), 0, "adversarial"),
    ("labelled", "n=2, k=45", P[0] + " So $k=\\boxed{45}$ and $n=\\boxed{2}$.", 1, "written"),
    ("labelled", "n=2, k=45", P[0] + " So $k=\\boxed{2}$ and $n=\\boxed{45}$.", 0, "adversarial"),
    ("labelled", "n=2, k=45", P[0] + " So $k = 45$ and $n = 2$.", 1, "written"),
    ("units", "5", B("5 \\text{ dollars}"), 1, "written"),
    ("units", "5", B("6 \\text{ dollars}"), 0, "adversarial"),
    ("units", "12", "She has 12 apples left.", 1, "written"),
]


def rows() -> list[dict]:
    """Every labelled pair, in a fixed order."""
    out = []
    for k, (cat, gold, answer, label, styles) in enumerate(BASE):
        for style in styles:
            text = STYLES[style].format(p=PROSE[k % len(PROSE)], a=answer)
            out.append({"category": cat, "style": style, "gold": gold, "completion": text})
            out[-1]["label"] = label
    for group, style in ((WRITTEN, "written"), (ADVERSARIAL, "adversarial")):
        for cat, gold, text, label in group:
            out.append(dict(category=cat, style=style, gold=gold, completion=text, label=label))
    for cat, gold, text, label, style in ADDED:
        out.append(dict(category=cat, style=style, gold=gold, completion=text, label=label))
    return out


if __name__ == "__main__":
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verifier_cases.jsonl")
    data = rows()
    with open(path, "w") as f:
        for i, row in enumerate(data):
            f.write(json.dumps({"id": i, **row}) + "\n")
    adversarial = sum(r["style"] == "adversarial" for r in data)
    print(f"{path}: {len(data)} pairs, {adversarial} adversarial")
