"""Math answer checking: normalise LaTeX, then compare gold and answer as strings, numbers, sympy.

Pipeline for one (gold, answer) pair, gold first:
  1. clean both strings (dollars, \\left/\\right, spacing, \\dfrac, \\text{}, units, degrees,
     thousands separators "1,234", a trailing period, "x =" on the left);
  2. read the structure of the gold: a matrix, a union of intervals, a set, a bracketed
     tuple or interval, a bare comma list (also "a \\pm b"), or one scalar; the answer likewise;
  3. compare by the gold's structure, item by item. Two scalars are equal when their
     normalised strings match; else, for constants, when their values agree within `rtol`
     relative to the gold (two integers must be equal exactly); else, with free symbols, when
     they agree at fixed irrational points and sympy's simplify(gold - answer) is 0 (agreement
     at >= 3 points alone is accepted when simplify cannot decide). Equations and
     inequalities ("x+y=3", "x>3") are equal up to a constant factor (positive for "<").

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
("30^\\circ" equals "30", not "\\pi/6"). Known units and \\text{} units are dropped.

Safety: parse_latex needs antlr, so LaTeX is translated here into a token list over a fixed
vocabulary (digits, single-letter symbols, whitelisted functions), then read by sympy's
parse_expr with no Python builtins. Inputs that are too long or too deeply nested are
rejected, and a first unevaluated parse bounds the size of every power, factorial and
binomial before sympy evaluates anything (9^9^9^9 and 10**10**10 are rejected, not computed).
"""

from __future__ import annotations

import math
import re
import warnings

import sympy
from sympy.parsing.sympy_parser import auto_number, auto_symbol, parse_expr, rationalize

from redjax.rewards.extract import extract_answer

RTOL = 1e-6  # default relative tolerance of the numeric comparison
MAX_CHARS = 1000  # longer answers (or golds) are not parsed
MAX_DEPTH = 40  # deeper bracket nesting is not parsed
MAX_DIGITS = 10_000  # bound on log10 of any value in an expression
MAX_ITEMS = 32  # longest tuple / set / matrix row compared
MAX_OPS = 200  # larger expressions skip sympy's simplify (random points still apply)


class _Reject(Exception):
    """An answer the normaliser refuses to hand to sympy (falls back to text comparison)."""


# ----------------------------------------------------------------------------- cleaning

_UNITS = (
    "units?|square units?|sq units?|cubic units?|cm|centimeters?|centimetres?|mm|millimeters?|"
    "km|kilometers?|meters?|metres?|inch(?:es)?|in|ft|feet|foot|yards?|yd|miles?|mi|"
    "kg|kilograms?|grams?|mg|lbs?|pounds?|ounces?|oz|tons?|liters?|litres?|ml|gallons?|"
    "seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|"
    "dollars?|cents?|euros?|mph|km/h|degrees?|radians?|people|persons?|students?|"
    "apples?|cookies?|marbles?|pages?|times|ways|points?|sq|square|cubic"
)
_UNIT_WORD = re.compile(rf"(?:\s+|(?<=\d))(?:{_UNITS})(?:\^\{{?[23]\}}?|\^[23])?\.?\s*$", re.I)
_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mathsf|mbox|operatorname)"
    r"\s*\{([^{}]*)\}"
)
_TEXT_UNIT = re.compile(  # a trailing \text{...} label after a number: "10 \text{ toys}"
    r"\\(?:text|textrm|mathrm|mbox)\s*\{\s*[a-zA-Z][a-zA-Z .]*(?:\^[23])?\}"
    r"(?:\^\{?[23]\}?)?\s*$"
)
_NUMBER_WORDS = re.compile(  # "10 toys", but not "2 sin x"
    r"([-+]?[\d.,/]*\d)\s+(?!(?:sin|cos|tan|sqrt|log|exp|sec|csc|cot)\b)[a-zA-Z]{3,}(?: [a-zA-Z]+)*"
)
_SPACING = re.compile(r"\\\\|\\[,;: ]|\\q?quad\b|~|\\displaystyle\b|\\limits\b|\\nolimits\b")
_SIZING = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])"
)
_UNICODE = {
    "\u2212": "-",
    "\u00d7": "*",
    "\u00b7": "*",
    "\u00f7": "/",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
}
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
_LHS = re.compile(
    r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z]\))?\s*(?:=|\\in(?![a-zA-Z]))\s*"
)
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_THIN_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_MIXED = re.compile(r"(-?)(\d+)\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}")


def clean(s: str, lhs: bool = True) -> str:
    """Strip LaTeX dressing that never changes a value; keeps the structure (brackets, commas).

    With `lhs`, a leading "x =" / "f(x) =" / "x \\in" is dropped too.
    """
    s = s.replace("\x00", "").strip()
    s = re.sub(r"\\left\.|\\right\.", "", s)
    s = _SIZING.sub("", s)
    s = s.replace("\\!", "")  # negative space, as in "32,\\!348"
    s = _SPACING.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\(", "").replace("\\)", "") if s.startswith("\\(") else s
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "%").replace("{,}", "")
    s = re.sub(r"\s*\bpercent\b", "%", s)
    if _TEXT_UNIT.search(s) and re.search(r"\d", _TEXT_UNIT.sub("", s)):
        s = _TEXT_UNIT.sub("", s)
    s = re.sub(r"\\text\s*\{\s*(?:or|and)\s*\}|\s+(?:or|and)\s+", ",", s)
    for _ in range(3):  # nested \text{\textbf{...}}
        s = _TEXT_CMD.sub(r" \1 ", s)
    s = s.strip()
    for _ in range(3):
        stripped = _UNIT_WORD.sub("", s).strip()
        if stripped == s or not re.search(r"\d", stripped):
            break
        s = stripped
    s = s.rstrip(" .;:").strip()
    m = _NUMBER_WORDS.fullmatch(s)
    if m:
        s = m.group(1)
    s = _strip_lhs(s) if lhs else s
    if _THOUSANDS.fullmatch(s) or _THIN_THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    m = _MIXED.fullmatch(s)
    if m:  # a mixed number: 3\frac{1}{2} is 7/2, not 3/2
        s = f"{m.group(1)}({m.group(2)}+\\frac{{{m.group(3)}}}{{{m.group(4)}}})"
    return re.sub(r"\s+", " ", s).strip()


def _strip_lhs(s: str) -> str:
    """Drop "x =" / "f(x) =" / "x \\in" on the left when the rest has no other relation."""
    m = _LHS.match(s)
    if m and not re.search(r"=|\\[lg]eq?\b|<|>", s[m.end() :]):
        return s[m.end() :].strip()
    return s


def _key(s: str) -> str:
    """String used for exact comparison: no spaces, "_{2}" written "_2"."""
    return re.sub(r"_\{(\w+)\}", r"_\1", re.sub(r"\s+", "", s))


def _text_key(s: str) -> str:
    """Case-free text used for word answers and choice letters: "(B)" -> "b"."""
    s = _key(s).lower()
    m = re.fullmatch(r"\(([a-z])\)", s)
    return m.group(1) if m else s


# ---------------------------------------------------------------------------- structure


def _closing(s: str, i: int, pairs: dict[str, str]) -> int:
    """Index of the bracket that closes the one at s[i] (any kind in `pairs`), or -1."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] in pairs:
            depth += 1
        elif s[j] in pairs.values():
            depth -= 1
            if depth == 0:
                return j
    return -1


_ALL = {"(": ")", "[": "]", "{": "}"}


def _split_top(s: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside any bracket (\\{ \\} count as brackets)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s) and s[i + 1] in "{}":
            depth += 1 if s[i + 1] == "{" else -1
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def structure(s: str):
    """Read the top-level shape of a cleaned answer into nested tuples.

    ("matrix", rows) | ("union", parts) | ("seq", open, close, items) | ("scalar", text)
    """
    s = s.strip()
    m = re.fullmatch(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s, re.S)
    if m:
        rows = [r for r in (x.strip() for x in m.group(2).split("\\\\")) if r]
        return ("matrix", tuple(tuple(structure(c) for c in r.split("&")) for r in rows))
    pm = _split_top(s, "\\pm")
    if len(pm) == 2 and pm[1]:  # "1 \pm \sqrt{2}": the two solutions, unordered
        a, b = pm[0] or "0", pm[1]
        return ("seq", "", "", (("scalar", f"{a}+({b})"), ("scalar", f"{a}-({b})")))
    parts = _split_top(s, "\\cup")
    if len(parts) > 1:
        return ("union", tuple(structure(p) for p in parts))
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("seq", "{", "}", tuple(_item(x) for x in _split_top(s[2:-2]) if x))
    if s[:1] in "([" and s[-1:] in ")]" and _closing(s, 0, {"(": ")", "[": "]"}) == len(s) - 1:
        items = _split_top(s[1:-1])
        if len(items) > 1:
            return ("seq", s[0], s[-1], tuple(_item(x) for x in items))
    items = _split_top(s)
    if len(items) > 1:
        return ("seq", "", "", tuple(_item(x) for x in items if x))
    return ("scalar", s)


def _item(s: str):
    """One element of a tuple / set / list: strip its own "x =" and read its structure."""
    return structure(_strip_lhs(s.strip()))


# ------------------------------------------------------------------------ LaTeX -> sympy

_FUNCS = {
    "sin": "sin", "cos": "cos", "tan": "tan", "sec": "sec", "csc": "csc", "cot": "cot",
    "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh",
    "tanh": "tanh", "ln": "log", "log": "log", "exp": "exp", "sqrt": "sqrt", "abs": "Abs",
    "asin": "asin", "acos": "acos", "atan": "atan",
}  # fmt: skip
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon",
    "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
    "Phi", "Psi", "Omega",
}  # fmt: skip
_OPS = {"cdot": "*", "times": "*", "ast": "*", "div": "/"}
_WORDS = {"pi": "pi", "inf": "oo", "infty": "oo", "infinity": "oo"}
_DIGITS = "0123456789"
_WORD = re.compile(r"[a-zA-Z]+")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_COMMAND = re.compile(r"\\([a-zA-Z]+|.)")
_SAFE_PY = re.compile(r"[A-Za-z0-9_+\-*/()., ]*")

_SYMPY_NAMES = (
    "Integer", "Float", "Rational", "Symbol", "Function", "Add", "Mul", "Pow",
    "sqrt", "sin", "cos", "tan", "sec", "csc", "cot", "asin", "acos", "atan",
    "sinh", "cosh", "tanh", "log", "exp", "Abs", "factorial", "binomial",
)  # fmt: skip
_GLOBALS = {"__builtins__": {}, **{n: getattr(sympy, n) for n in _SYMPY_NAMES}}
# For the bounding parse nothing may evaluate: every function is an inert placeholder.
_INERT = {**_GLOBALS, **{n: sympy.Function(n) for n in _SYMPY_NAMES[8:]}}
_LOCALS = {"e": sympy.E, "i": sympy.I, "pi": sympy.pi, "oo": sympy.oo}
_TRANSFORMS = (auto_symbol, auto_number, rationalize)


def _arg(s: str, i: int) -> tuple[str, int]:
    """One macro argument starting at s[i]: a {group}, a \\command or one character."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        raise _Reject("missing argument")
    if s[i] == "{":
        j = _closing(s, i, {"{": "}"})
        if j < 0:
            raise _Reject("unbalanced")
        return s[i + 1 : j], j + 1
    if s[i] == "\\":
        _, j = _command(s, i)
        return s[i:j], j
    return s[i], i + 1


def _command(s: str, i: int) -> tuple[str, int]:
    """(name, end) of the LaTeX command starting with the backslash at s[i]."""
    m = _COMMAND.match(s, i)
    if m is None:
        raise _Reject("dangling backslash")
    return m.group(1), m.end()


def _lex(s: str) -> list[str]:
    """Translate LaTeX math into Python-expression tokens over a fixed vocabulary."""
    out: list[str] = []
    i, bars = 0, 0
    while i < len(s):
        c = s[i]
        if c.isspace():
            i += 1
        elif c in _DIGITS or (c == "." and i + 1 < len(s) and s[i + 1] in _DIGITS):
            m = _NUMBER.match(s, i)
            out.append(m.group(0))
            i = m.end()
            if s.startswith(".", i):  # "1.2.3" is not a number
                raise _Reject("number")
        elif c.isascii() and c.isalpha():
            m = _WORD.match(s, i)
            word, i = m.group(0), m.end()
            if word in _FUNCS:
                out.append("@" + _FUNCS[word])
            elif word in _WORDS:
                out.append(_WORDS[word])
            elif len(word) > 3:
                raise _Reject("text")  # a word, not a product of symbols
            else:
                out.extend(word)
        elif c == "\\":
            name, i = _command(s, i)
            if name == "frac":
                a, i = _arg(s, i)
                b, i = _arg(s, i)
                out += ["(", "(", *_lex(a), ")", "/", "(", *_lex(b), ")", ")"]
            elif name == "sqrt":
                root = None
                if i < len(s) and s[i] == "[":
                    j = _closing(s, i, {"[": "]"})
                    if j < 0:
                        raise _Reject("unbalanced")
                    root, i = s[i + 1 : j], j + 1
                a, i = _arg(s, i)
                if root is None:
                    out += ["@sqrt", "(", *_lex(a), ")"]
                else:
                    out += ["(", "(", *_lex(a), ")", "**", "(", "1", "/", "(", *_lex(root), ")"]
                    out += [")", ")"]
            elif name == "binom":
                a, i = _arg(s, i)
                b, i = _arg(s, i)
                out += ["@binomial", "(", *_lex(a), ",", *_lex(b), ")"]
            elif name in _FUNCS:
                if s.startswith("_", i):
                    raise _Reject("log base")
                out.append("@" + _FUNCS[name])
            elif name in _GREEK:
                out.append("lamda" if name == "lambda" else name.removeprefix("var"))
            elif name == "pi":
                out.append("pi")
            elif name == "infty":
                out.append("oo")
            elif name in _OPS:
                out.append(_OPS[name])
            elif name in ("lvert", "rvert", "vert", "|", "mid"):
                out += ["@Abs", "("] if bars % 2 == 0 else [")"]
                bars += 1
            else:
                raise _Reject(f"unknown command \\{name}")
        elif c == "{" or c == "(" or c == "[":
            j = _closing(s, i, _ALL)
            if j < 0:
                raise _Reject("unbalanced")
            out += ["(", *_lex(s[i + 1 : j]), ")"]
            i = j + 1
        elif c == "^":
            a, i = _arg(s, i + 1)
            out += ["**", "(", *_lex(a), ")"]
        elif c == "_":
            a, i = _arg(s, i + 1)
            if not out or not re.fullmatch(r"[a-zA-Z]", out[-1]) or not a.isalnum():
                raise _Reject("subscript")
            out[-1] += "_" + a
        elif c == "|":
            out += ["@Abs", "("] if bars % 2 == 0 else [")"]
            bars += 1
            i += 1
        elif c in "+-*/!,":
            if c == "*" and s.startswith("**", i):
                out.append("**")
                i += 2
                continue
            out.append(c)
            i += 1
        else:
            raise _Reject(f"character {c!r}")
    if bars % 2:
        raise _Reject("unbalanced |")
    return out


_CALLABLE = {*_FUNCS.values(), "binomial", "factorial"}


def _is_atom_end(t: str) -> bool:
    return t == ")" or (t[0].isalnum() or t[0] == ".") and t not in _CALLABLE


def _is_atom_start(t: str) -> bool:
    return t == "(" or t[0] in "@." or t[0].isalnum()


def _to_python(tokens: list[str]) -> str:
    """Join tokens: explicit "*" for juxtaposition, f(x) for "\\sin x", factorial for "!"."""
    out: list[str] = []
    k = 0
    while k < len(tokens):
        t = tokens[k]
        if t == "!":
            start = _atom_start(out)
            out[start:] = ["factorial", "(", *out[start:], ")"]
            k += 1
            continue
        if out and _is_atom_end(out[-1]) and _is_atom_start(t):
            out.append("*")
        if t.startswith("@"):
            out.append(t[1:])
            nxt = tokens[k + 1] if k + 1 < len(tokens) else ""
            if nxt != "(":  # "\sin x": the function takes the next atom
                if not nxt or not (nxt[0].isalnum() or nxt[0] == "."):
                    raise _Reject("function without argument")
                out += ["(", nxt, ")"]
                k += 1
        else:
            out.append(t)
        k += 1
    return " ".join(out)


def _atom_start(out: list[str]) -> int:
    """Index in `out` where the last atom (number, symbol, call or group) begins."""
    if not out:
        raise _Reject("dangling !")
    k = len(out) - 1
    if out[k] == ")":
        depth = 0
        while k >= 0:
            depth += out[k] == ")"
            depth -= out[k] == "("
            if depth == 0:
                break
            k -= 1
        if k > 0 and out[k - 1] in _GLOBALS:
            k -= 1
        return k
    if out[k] == "factorial":
        raise _Reject("!!")
    if out[k][0].isalnum() or out[k][0] == ".":
        return k
    raise _Reject("dangling !")


def _log10_bound(e: sympy.Basic) -> float:
    """Upper bound on log10|e| of an unevaluated expression; raises _Reject when too big."""
    if e.is_Rational:
        return max(abs(e.p).bit_length(), abs(e.q).bit_length()) * 0.30103
    if e.is_Float:
        return math.log10(abs(float(e)) + 1.0)
    if not e.args:
        return 1.0  # a symbol or a constant such as pi
    if e.is_Pow:
        base, exp = _log10_bound(e.args[0]), _log10_bound(e.args[1])
        if exp > (3.1 if e.args[0].free_symbols else 6.0):  # x^1000 / 2^(10^6) at most
            raise _Reject("huge exponent")
        bound = max(base, 1.0) * 10.0**exp
    elif e.func in (_INERT["factorial"], _INERT["binomial"]):
        n = _log10_bound(e.args[0])
        if n > 4.0:  # 10000! at most
            raise _Reject("huge factorial")
        bound = 10.0**n * max(n, 1.0)
    elif e.is_Add:
        bound = max(_log10_bound(a) for a in e.args) + math.log10(len(e.args))
    else:
        bound = sum(_log10_bound(a) for a in e.args)
    if bound > MAX_DIGITS:
        raise _Reject("huge value")
    return bound


def to_sympy(latex: str) -> sympy.Expr:
    """Parse one cleaned scalar LaTeX answer into sympy; raises _Reject if it cannot or must not."""
    py = _to_python(_lex(latex))
    if not py or not _SAFE_PY.fullmatch(py):
        raise _Reject("empty or unsafe")
    try:
        _log10_bound(parse_expr(py, dict(_LOCALS), _TRANSFORMS, dict(_INERT), evaluate=False))
        expr = parse_expr(py, dict(_LOCALS), _TRANSFORMS, dict(_GLOBALS))
    except _Reject:
        raise
    except Exception as err:  # sympy/Python syntax errors, recursion, overflow
        raise _Reject(str(err)[:100]) from None
    if not isinstance(expr, sympy.Expr):
        raise _Reject("not an expression")
    return expr


# ---------------------------------------------------------------------------- comparison

_RELATION = re.compile(r"\\leq?(?![a-zA-Z])|\\geq?(?![a-zA-Z])|\\neq(?![a-zA-Z])|<=|>=|<|>|=")
_REL_OPS = {"\\le": "<=", "\\leq": "<=", "\\ge": ">=", "\\geq": ">=", "\\neq": "!="}


def _relation(s: str):
    """("rel", op, lhs - rhs) for a single (in)equation, normalised to op in {=, !=, <, <=}."""
    parts = _RELATION.split(s)
    ops = _RELATION.findall(s)
    if len(ops) != 1:
        raise _Reject("not one relation")
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

    With free symbols, a difference at fixed points rejects at once (most wrong answers);
    otherwise simplify(gold - answer) == 0 proves equality, and agreement at >= 3 points
    is accepted when simplify cannot decide.
    """
    if g == a:
        return True
    if g.has(sympy.zoo, sympy.nan) or a.has(sympy.zoo, sympy.nan):
        return False
    if not g.free_symbols and not a.free_symbols:
        return _num_equal(g, a, rtol)
    points = _points_equal(g, a, rtol)
    if points is False:
        return False
    if sympy.count_ops(g) + sympy.count_ops(a) <= MAX_OPS and sympy.simplify(g - a) == 0:
        return True
    return bool(points)


def _relation_equal(g, a, rtol: float) -> bool:
    """Same relation up to a constant factor (positive for inequalities)."""
    if a[0] != "rel" or a[1] != g[1]:
        return False
    dg, da = g[2], a[2]
    if _expr_equal(dg, da, rtol):
        return True
    if da == 0 or sympy.count_ops(dg) + sympy.count_ops(da) > MAX_OPS:
        return False
    ratio = sympy.simplify(dg / da)
    if ratio.free_symbols or not ratio.is_number or ratio == 0:
        return False
    return g[1] in ("=", "!=") or bool(ratio > 0)


_CHOICE = re.compile(r"\([A-Za-z]\)")  # a multiple-choice letter: "(B)"
_TEXT_GOLD = re.compile(r"\\text(?:bf|rm|normal)?\s*\{\s*\(?[A-Za-z][A-Za-z ]*\)?\s*\}")


def _scalar_equal(g: str, a: str, rtol: float) -> bool:
    """Gold scalar vs answer scalar: string, then text, then sympy."""
    if _key(g) == _key(a):
        return True
    if _CHOICE.fullmatch(g) and _text_key(g) == _text_key(a):  # "(B)" vs "b"
        return True
    try:
        gv, gpct = _parse_scalar(g)
    except _Reject:  # a word or choice letter: text comparison
        return _text_key(g) == _text_key(a)
    try:
        av, apct = _parse_scalar(a)
    except _Reject:
        return False
    if isinstance(gv, tuple) or isinstance(av, tuple):
        return isinstance(gv, tuple) and isinstance(av, tuple) and _relation_equal(gv, av, rtol)
    if _expr_equal(gv, av, rtol):  # the numbers as written ("50\%" vs "50")
        return True
    if gpct or apct:  # the values ("50\%" vs "0.5")
        return _expr_equal(gv / 100 if gpct else gv, av / 100 if apct else av, rtol)
    return False


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


def _node_equal(g, a, rtol: float) -> bool:
    """Compare two structures, led by the gold's kind (see the module docstring)."""
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
        if _key(g) == _key(a):
            return True
        if _TEXT_GOLD.fullmatch(gold.strip()):  # "\\text{Yes}": a word, compared as text
            return _text_key(g) == _text_key(a)
        if _too_deep(g) or _too_deep(a):
            return False
        if _node_equal(structure(g), structure(a), rtol):
            return True
        g_eq, a_eq = clean(gold, lhs=False), clean(answer, lhs=False)
        if (g_eq, a_eq) != (g, a) and _RELATION.search(g_eq) and _RELATION.search(a_eq):
            # "x+y=3" vs "y=3-x": with their left sides kept, both are equations
            return _node_equal(("scalar", g_eq), ("scalar", a_eq), rtol)
        return False
    except Exception:  # never let a malformed answer raise (RecursionError, MemoryError, ...)
        return False


def gold_answer(gold: str) -> str:
    """The answer in a gold string: its boxed / "####" answer if it has one, else all of it."""
    if not isinstance(gold, str):
        return ""
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold:
        return extract_answer(gold) or gold
    return gold


def math_reward(completion: str, gold: str, *, rtol: float = RTOL) -> float:
    """1.0 if the completion's final answer equals the gold answer, else 0.0; never raises."""
    try:
        answer = extract_answer(completion)
        if answer is None:
            return 0.0
        return 1.0 if is_equiv(gold_answer(gold), answer, rtol=rtol) else 0.0
    except Exception:
        return 0.0
