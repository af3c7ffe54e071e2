"""Comparison: gold-led equality of two cleaned answers (see redjax.rewards.math).

Scalars by string, then text, then sympy (numbers within `rtol` of the gold, or a decimal
answer rounded from it, expressions by fixed irrational points and simplify); structures item
by item, led by the gold's kind.
Before that, chains are cut to their last side, labels matched, decimal commas read, and an
inequality meets an interval as an interval.
"""

from __future__ import annotations

import math
import re
import warnings
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import sympy

from redjax.rewards.lex import Reject, to_sympy
from redjax.rewards.normalise import clean, key, text_key
from redjax.rewards.parse import labelled, last_side, structure

_VARIABLE = re.compile(r"(?:[A-Za-z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?")

RTOL = 1e-6  # default relative tolerance of the numeric comparison
MAX_CHARS = 1000  # longer answers (or golds) are not parsed
MAX_DEPTH = 40  # deeper bracket nesting is not parsed
MAX_ITEMS = 32  # longest tuple / set / matrix row compared
MAX_OPS = 200  # larger expressions skip sympy's simplify (random points still apply)
MIN_ROUNDED_DIGITS = 4  # a rounded decimal answer needs this many significant digits

_RELATION = re.compile(r"\\leq?(?![a-zA-Z])|\\geq?(?![a-zA-Z])|\\neq(?![a-zA-Z])|<=|>=|<|>|=")
_REL_OPS = {"\\le": "<=", "\\leq": "<=", "\\ge": ">=", "\\geq": ">=", "\\neq": "!="}


def _relation(s: str):
    """("rel", op, lhs - rhs) for a single (in)equation, normalised to op in {=, !=, <, <=}."""
    parts = _RELATION.split(s)
    ops = _RELATION.findall(s)
    if len(ops) != 1:
        raise Reject("not one relation")
    op = _REL_OPS.get(ops[0], ops[0])
    lhs, rhs = to_sympy(parts[0]), to_sympy(parts[1])
    if op in (">", ">="):
        op, lhs, rhs = op.replace(">", "<"), rhs, lhs
    return ("rel", op, lhs - rhs)


def _parse_scalar(s: str):
    """(value, percent) of a scalar: a sympy expression or relation tuple, and a % flag."""
    pct = s.endswith("%")
    s = s.rstrip("%").strip()
    if _RELATION.search(s):
        return _relation(s), pct
    return to_sympy(s), pct


def _num_equal(g: sympy.Expr, a: sympy.Expr, rtol: float) -> bool:
    """Numeric equality of two constant expressions, relative to the gold."""
    if g.is_infinite or a.is_infinite or g.has(sympy.zoo, sympy.nan):
        return g == a
    gv, av = complex(sympy.N(g, 30)), complex(sympy.N(a, 30))
    if not all(map(math.isfinite, (gv.real, gv.imag, av.real, av.imag))):
        return False
    if g.is_Integer and a.is_Integer:  # exact counts: 123456790 is not 123456789
        return g == a
    if gv == 0:
        return av == 0
    return abs(gv - av) <= rtol * abs(gv)


_POINTS = (0.5772156649, 1.3247179572, -0.7390851332, 2.2360679775, -1.6180339887)


def _points_equal(g: sympy.Expr, a: sympy.Expr, rtol: float) -> bool | None:
    """Compare at fixed irrational points of the free symbols: None if < 3 points are usable."""
    symbols = sorted(g.free_symbols | a.free_symbols, key=str)
    agree = 0
    for k in range(len(_POINTS)):
        subs = {x: _POINTS[(k + j) % len(_POINTS)] + 0.1 * j for j, x in enumerate(symbols)}
        try:
            gv = complex(sympy.N(g.subs(subs), 20))
            av = complex(sympy.N(a.subs(subs), 20))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if not all(map(math.isfinite, (gv.real, gv.imag, av.real, av.imag))):
            continue
        if abs(gv - av) > rtol * max(abs(gv), 1e-9):
            return False
        agree += 1
    return True if agree >= 3 else None


def _expr_equal(g: sympy.Expr, a: sympy.Expr, rtol: float) -> bool:
    """Two sympy expressions: structurally, numerically (constants), or symbolically.

    With free symbols, a difference at fixed points rejects at once (most wrong answers) and
    agreement at >= 3 points accepts; with fewer usable points, simplify(gold - answer) == 0
    decides.
    """
    if g == a:
        return True
    if g.has(sympy.zoo, sympy.nan) or a.has(sympy.zoo, sympy.nan):
        return False
    if not g.free_symbols and not a.free_symbols:
        return _num_equal(g, a, rtol)
    points = _points_equal(g, a, rtol)
    if points is not None:
        return points
    return sympy.count_ops(g) + sympy.count_ops(a) <= MAX_OPS and sympy.simplify(g - a) == 0


def _point_ratio(dg: sympy.Expr, da: sympy.Expr) -> complex | bool | None:
    """dg / da at the fixed points: its value when >= 3 points agree on one, False when two
    differ (no constant factor), None when fewer than 3 points are usable."""
    symbols = sorted(dg.free_symbols | da.free_symbols, key=str)
    values = []
    for k in range(len(_POINTS)):
        subs = {x: _POINTS[(k + j) % len(_POINTS)] + 0.1 * j for j, x in enumerate(symbols)}
        try:
            r = complex(sympy.N((dg / da).subs(subs), 20))
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if not (math.isfinite(r.real) and math.isfinite(r.imag)):
            continue
        if values and abs(r - values[0]) > 1e-6 * max(abs(values[0]), 1e-9):
            return False
        values.append(r)
    return values[0] if len(values) >= 3 else None


def _relation_equal(g, a, rtol: float) -> bool:
    """Same relation up to a constant factor (positive for inequalities), the factor read at
    the fixed points like `_expr_equal` (simplify when fewer than 3 points are usable)."""
    if a[0] != "rel" or a[1] != g[1]:
        return False
    dg, da = g[2], a[2]
    if _expr_equal(dg, da, rtol):
        return True
    if da == 0 or sympy.count_ops(dg) + sympy.count_ops(da) > MAX_OPS:
        return False
    ratio = _point_ratio(dg, da)  # decides most pairs without simplify
    if ratio is False:
        return False
    if ratio is None:
        ratio = sympy.simplify(dg / da)
        if ratio.free_symbols or not ratio.is_number:
            return False
        ratio = complex(ratio)
    if abs(ratio) < 1e-12:
        return False
    return g[1] in ("=", "!=") or (abs(ratio.imag) < 1e-12 and ratio.real > 0)


_CHOICE = re.compile(r"\([A-Za-z]\)")  # a multiple-choice letter: "(B)"
_TEXT_GOLD = re.compile(r"\\text(?:bf|rm|normal)?\s*\{\s*\(?[A-Za-z][A-Za-z ]*\)?\s*\}")


_PLAIN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")  # "72", "-0.5", "72.", ".5": < 1000 chars


def _plain_equal(g: Fraction, a: Fraction, rtol: float) -> bool:
    """`_num_equal` for two plain numbers: integers exactly, else within rtol of the gold."""
    if g.denominator == 1 and a.denominator == 1 or g == 0:
        return g == a
    return abs(g - a) <= Fraction(rtol) * abs(g)


def _scalar_equal(g: str, a: str, rtol: float) -> bool:
    """Gold scalar vs answer scalar: string, then text, then sympy."""
    if key(g) == key(a):
        return True
    if _CHOICE.fullmatch(g) and text_key(g) == text_key(a):  # "(B)" vs "b"
        return True
    if _PLAIN.fullmatch(g) and _PLAIN.fullmatch(a):  # two plain numbers: no sympy needed
        return _plain_equal(Fraction(g), Fraction(a), rtol)
    try:
        gv, gpct = _parse_scalar(g)
    except Reject:  # a word or choice letter: text comparison
        return text_key(g) == text_key(a)
    try:
        av, apct = _parse_scalar(a)
    except Reject:
        return False
    if isinstance(gv, tuple) or isinstance(av, tuple):
        return isinstance(gv, tuple) and isinstance(av, tuple) and _relation_equal(gv, av, rtol)
    if _expr_equal(gv, av, rtol):  # the numbers as written ("50\%" vs "50")
        return True
    if gpct or apct:  # the values ("50\%" vs "0.5")
        return _expr_equal(gv / 100 if gpct else gv, av / 100 if apct else av, rtol)
    return not _PLAIN.fullmatch(g) and _rounded(gv, a)


_ROUNDED = re.compile(r"-?(\d*)\.(\d+)")  # a decimal answer: "0.3333", "-1.41"


def _rounded(g: sympy.Expr, a: str) -> bool:
    """Whether a decimal answer is the gold rounded (half away from zero) to its own decimals,
    with >= MIN_ROUNDED_DIGITS significant digits, for a real gold no decimal writes exactly."""
    m = _ROUNDED.fullmatch(a)
    if m is None or len(a) > 100 or g.free_symbols or g.is_real is not True:
        return False
    if len((m.group(1) + m.group(2)).lstrip("0")) < MIN_ROUNDED_DIGITS:  # "0.333" is not 1/3
        return False
    if g.is_Rational:  # exact as a decimal when its denominator is 2^i 5^j (1/8 = 0.125)
        q = int(g.q)
        for p in (2, 5):
            while q % p == 0:
                q //= p
        if q == 1:
            return False
    elif g.is_rational:  # a rational sympy cannot reduce to p/q: no rounding decided
        return False
    places, whole = len(m.group(2)), len(str(int(abs(sympy.N(g, 20)))))
    value = Decimal(str(sympy.N(g, places + whole + 30)))  # 30 guard digits
    step = Decimal(1).scaleb(-places)
    return value.quantize(step, rounding=ROUND_HALF_UP) == Decimal(a)


def _matching(gold_items, answer_items, rtol: float) -> bool:
    """A perfect matching between gold and answer items (unordered comparison)."""
    n = len(gold_items)
    eq = [[_node_equal(g, a, rtol) for a in answer_items] for g in gold_items]
    owner = [-1] * n  # answer index -> gold index

    def augment(gi: int, seen: list[bool]) -> bool:
        for ai in range(n):
            if eq[gi][ai] and not seen[ai]:
                seen[ai] = True
                if owner[ai] < 0 or augment(owner[ai], seen):
                    owner[ai] = gi
                    return True
        return False

    return all(augment(gi, [False] * n) for gi in range(n))


def _constant(s: str) -> bool:
    """Whether `s` is a number (infinities included): an interval's end."""
    try:
        return not to_sympy(s).free_symbols
    except Reject:
        return False


def _interval(s: str):
    """An inequality in one variable as an interval: "-1 < x \\le 3" -> ("seq", "(", "]", ...);
    None for anything else (two variables, "=", mixed directions)."""
    parts = [p.strip() for p in _RELATION.split(s)]
    ops = [_REL_OPS.get(o, o) for o in _RELATION.findall(s)]
    if not 1 <= len(ops) <= 2 or any(o in ("=", "!=") for o in ops):
        return None
    if all(o[0] == ">" for o in ops):
        parts, ops = parts[::-1], [o.replace(">", "<") for o in ops[::-1]]
    if not all(o[0] == "<" for o in ops):
        return None
    if len(ops) == 2:
        (lo, var, hi), (lo_op, hi_op) = parts, ops
    elif _VARIABLE.fullmatch(parts[0]):
        lo, var, hi, lo_op, hi_op = "-\\infty", parts[0], parts[1], "<", ops[0]
    else:
        lo, var, hi, lo_op, hi_op = parts[0], parts[1], "\\infty", ops[0], "<"
    if not _VARIABLE.fullmatch(var) or not _constant(lo) or not _constant(hi):
        return None
    left, right = "[" if lo_op == "<=" else "(", "]" if hi_op == "<=" else ")"
    return ("seq", left, right, (("scalar", lo), ("scalar", hi)))


def _union(items):
    """A list of inequalities ("x < 2, x > 3", from "or") as a union of intervals, or None."""
    parts = [_interval(x[1]) if x[0] == "scalar" else None for x in items]
    if len(parts) < 2 or not all(parts):
        return None
    names = {re.sub(r"\\[a-zA-Z]+|[^a-zA-Z]", "", x[1]) for x in items}  # "x < 2", "y > 3"
    return ("union", tuple(parts)) if len(names) == 1 else None


def _node_equal(g, a, rtol: float) -> bool:
    """Compare two structures, led by the gold's kind (see the module docstring)."""
    kind = g[0]
    if kind == "scalar" and a[0] != "scalar" and _RELATION.search(g[1]):
        g = _interval(g[1]) or g  # gold "x \\ge 5" vs answer "[5, \\infty)"
        kind = g[0]
    if a[0] == "scalar" and kind != "scalar" and _RELATION.search(a[1]):
        a = _interval(a[1]) or a  # gold "(-1, 3)" vs answer "-1 < x < 3"
    if kind == "union" and a[0] == "seq" and a[1] == "":
        a = _union(a[3]) or a  # "x < 2 \\text{ or } x > 3"
    if kind == "seq" and g[1] == "" and a[0] == "union":
        g = _union(g[3]) or g
        kind = g[0]
    if kind == "scalar" and a[0] == "scalar" and len(_RELATION.findall(g[1])) == 2:
        g, a = _interval(g[1]) or g, _interval(a[1]) or a  # "-1 < x < 3": not one relation
        kind = g[0]
    if kind == "scalar":
        return a[0] == "scalar" and _scalar_equal(g[1], a[1], rtol)
    if kind == "matrix":
        if a[0] != "matrix" or [len(r) for r in a[1]] != [len(r) for r in g[1]]:
            return False
        cells = zip(sum(g[1], ()), sum(a[1], ()), strict=True)
        return all(_node_equal(x, y, rtol) for x, y in cells)
    if kind == "union":
        return a[0] == "union" and len(a[1]) == len(g[1]) and _matching(g[1], a[1], rtol)
    _, left, right, items = g
    if len(items) > MAX_ITEMS:
        return False
    if left in ("{", ""):  # unordered: any of set / bare list / parenthesised tuple
        if a[0] == "scalar":
            a = ("seq", "", "", (a,))
        if a[0] != "seq" or a[1] not in ("{", "", "(") or len(a[3]) != len(items):
            return False
        return _matching(items, a[3], rtol)
    if a[0] != "seq" or (a[1], a[2]) != (left, right) or len(a[3]) != len(items):
        return False
    return all(_node_equal(x, y, rtol) for x, y in zip(items, a[3], strict=True))


def _too_deep(s: str) -> bool:
    depth = best = 0
    for c in s:
        if c in "([{":
            depth += 1
            best = max(best, depth)
        elif c in ")]}":
            depth -= 1
    return best > MAX_DEPTH


_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")  # "1000,99" (a thousands "1,000" is gone by now)
# A gold "2,3" is a list: only a side no list of small numbers looks like is read as decimal.
_GOLD_DECIMAL_COMMA = re.compile(r"-?(?:\d{4,},\d+|\d+,\d{4,})")
_DECIMAL = re.compile(r"-?\d*\.\d+")


def _decimal_comma(g: str, a: str) -> tuple[str, str]:
    """Read an answer "1,22" as 1.22 when the gold has no comma (a thousands "1,234" is gone
    by now), and a gold "1000,99" when the answer is a decimal (a gold "2,3" is a list)."""
    if _DECIMAL_COMMA.fullmatch(a) and "," not in g:  # a list "1,22" never equals such a gold
        return g, a.replace(",", ".")
    if _GOLD_DECIMAL_COMMA.fullmatch(g) and _DECIMAL.fullmatch(a):
        return g.replace(",", "."), a
    return g, a


def _read_labels(g: str, a: str, rtol: float) -> tuple[str, str] | bool:
    """Labelled answers: the verdict when both carry labels ("(p,q)=(3,2)" vs "q=2, p=3",
    value by label), else (gold, answer) with the labels an unlabelled other side lacks
    dropped. A gold tuple "(x,y)=(1,2)" keeps its labels: "(1,2)" does not say which is x."""
    gl, al = labelled(g), labelled(a)
    if gl and al:
        if sorted(gl[1]) != sorted(al[1]):
            return False
        by_label = dict(zip(al[1], al[2], strict=True))
        pairs = [(structure(v), structure(by_label[x])) for x, v in zip(gl[1], gl[2], strict=True)]
        return all(_node_equal(x, y, rtol) for x, y in pairs)
    if gl and gl[0] != ":":  # "n=2, k=45" vs "45, 2": which is n?
        return False
    if gl:  # a ratio states its order: "S:T=7:32" vs "7:32"
        g = ":".join(gl[2])
    if al:
        joined = ":".join(al[2]) if al[0] == ":" else ", ".join(al[2])
        a = f"({joined})" if al[0] == "(" or g.startswith("(") else joined
    return g, a


def is_equiv(gold: str, answer: str, *, rtol: float = RTOL) -> bool:
    """Whether an extracted answer equals the gold answer (gold-led; see the module docstring)."""
    with warnings.catch_warnings():  # model text makes SymPy warn (deprecated forms): not news
        warnings.simplefilter("ignore")
        return _is_equiv(gold, answer, rtol)


def _is_equiv(gold: str, answer: str, rtol: float) -> bool:
    try:
        if not isinstance(gold, str) or not isinstance(answer, str):
            return False
        if len(gold) > MAX_CHARS or len(answer) > MAX_CHARS:
            return False
        g, a = clean(gold), clean(answer)
        if not g or not a:
            return False
        if key(g) == key(a):
            return True
        if _TEXT_GOLD.fullmatch(gold.strip()):  # "\\text{Yes}": a word, compared as text
            return text_key(g) == text_key(a)
        if _too_deep(g) or _too_deep(a):
            return False
        g, a = _decimal_comma(last_side(g), last_side(a))
        read = _read_labels(g, a, rtol)
        if isinstance(read, bool):
            return read
        if _node_equal(structure(read[0]), structure(read[1]), rtol):
            return True
        g_eq, a_eq = clean(gold, lhs=False), clean(answer, lhs=False)
        if (g_eq, a_eq) != (g, a) and _RELATION.search(g_eq) and _RELATION.search(a_eq):
            # "x+y=3" vs "y=3-x": with their left sides kept, both are equations
            return _node_equal(("scalar", g_eq), ("scalar", a_eq), rtol)
        return False
    except Exception:  # never let a malformed answer raise (RecursionError, MemoryError, ...)
        return False
