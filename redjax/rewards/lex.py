"""LaTeX -> sympy: a lexer over a fixed vocabulary, then sympy's parse_expr with no builtins.

parse_latex needs antlr, so LaTeX is translated here into Python-expression tokens (digits,
single-letter symbols, whitelisted functions), read by parse_expr with no Python builtins.
A first unevaluated parse bounds the size of every power, factorial and binomial before
sympy evaluates anything (9^9^9^9 and 10**10**10 are rejected, not computed).

The lexer is a table: `_BY_CHAR` maps a character to its rule, `_MACROS` a command with
arguments to its rule, `_TOKENS` a plain command to the tokens it stands for.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

import sympy
from sympy.parsing.sympy_parser import auto_number, auto_symbol, parse_expr, rationalize

from redjax.rewards.parse import BRACKETS, closing

MAX_DIGITS = 10_000  # bound on log10 of any value in an expression


class Reject(Exception):
    """An answer the normaliser refuses to hand to sympy (falls back to text comparison)."""


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
_WORDS = {"pi": "pi", "inf": "oo", "infty": "oo", "infinity": "oo"}
# A plain command -> the tokens it stands for (functions are "@name": they take an argument).
_TOKENS: dict[str, list[str]] = {
    **{g: ["lamda" if g == "lambda" else g.removeprefix("var")] for g in _GREEK},
    "pi": ["pi"], "infty": ["oo"],
    "cdot": ["*"], "times": ["*"], "ast": ["*"], "div": ["/"],
}  # fmt: skip
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


class _Lexer:
    """The text, the read position, the tokens so far and the count of "|" bars seen."""

    def __init__(self, s: str):
        self.s, self.i, self.out, self.bars = s, 0, [], 0

    def arg(self) -> str:
        """One macro argument at the position: a {group}, a \\command or one character."""
        s, i = self.s, self.i
        while i < len(s) and s[i] == " ":
            i += 1
        if i >= len(s):
            raise Reject("missing argument")
        if s[i] == "{":
            j = closing(s, i, {"{": "}"})
            if j < 0:
                raise Reject("unbalanced")
            self.i = j + 1
            return s[i + 1 : j]
        if s[i] == "\\":
            self.i = _command_end(s, i)[1]
            return s[i : self.i]
        self.i = i + 1
        return s[i]

    def bar(self) -> None:
        """An absolute-value bar: opens on the 1st, 3rd, ... and closes on the others."""
        self.out += ["@Abs", "("] if self.bars % 2 == 0 else [")"]
        self.bars += 1


def _command_end(s: str, i: int) -> tuple[str, int]:
    """(name, end) of the LaTeX command starting with the backslash at s[i]."""
    m = _COMMAND.match(s, i)
    if m is None:
        raise Reject("dangling backslash")
    return m.group(1), m.end()


def _space(lx: _Lexer) -> None:
    lx.i += 1


def _number(lx: _Lexer) -> None:
    m = _NUMBER.match(lx.s, lx.i)
    if m is None:  # a "." not followed by a digit
        raise Reject("character '.'")
    lx.out.append(m.group(0))
    lx.i = m.end()
    if lx.s.startswith(".", lx.i):  # "1.2.3" is not a number
        raise Reject("number")


def _word(lx: _Lexer) -> None:
    m = _WORD.match(lx.s, lx.i)
    word, lx.i = m.group(0), m.end()
    if word in _FUNCS:
        lx.out.append("@" + _FUNCS[word])
    elif word in _WORDS:
        lx.out.append(_WORDS[word])
    elif len(word) > 3:
        raise Reject("text")  # a word, not a product of symbols
    else:
        lx.out.extend(word)


def _group(lx: _Lexer) -> None:
    j = closing(lx.s, lx.i, BRACKETS)
    if j < 0:
        raise Reject("unbalanced")
    lx.out += ["(", *lex(lx.s[lx.i + 1 : j]), ")"]
    lx.i = j + 1


def _power(lx: _Lexer) -> None:
    lx.i += 1
    lx.out += ["**", "(", *lex(lx.arg()), ")"]


def _subscript(lx: _Lexer) -> None:
    lx.i += 1
    a = lx.arg()
    if not lx.out or not re.fullmatch(r"[a-zA-Z]", lx.out[-1]) or not a.isalnum():
        raise Reject("subscript")
    lx.out[-1] += "_" + a


def _pipe(lx: _Lexer) -> None:
    lx.bar()
    lx.i += 1


def _operator(lx: _Lexer) -> None:
    if lx.s.startswith("**", lx.i):
        lx.out.append("**")
        lx.i += 2
    else:
        lx.out.append(lx.s[lx.i])
        lx.i += 1


def _frac(lx: _Lexer) -> None:
    a, b = lx.arg(), lx.arg()
    lx.out += ["(", "(", *lex(a), ")", "/", "(", *lex(b), ")", ")"]


def _sqrt(lx: _Lexer) -> None:
    s, root = lx.s, None
    if lx.i < len(s) and s[lx.i] == "[":
        j = closing(s, lx.i, {"[": "]"})
        if j < 0:
            raise Reject("unbalanced")
        root, lx.i = s[lx.i + 1 : j], j + 1
    a = lex(lx.arg())
    if root is None:
        lx.out += ["@sqrt", "(", *a, ")"]
    else:
        lx.out += ["(", "(", *a, ")", "**", "(", "1", "/", "(", *lex(root), ")", ")", ")"]


def _binom(lx: _Lexer) -> None:
    a, b = lx.arg(), lx.arg()
    lx.out += ["@binomial", "(", *lex(a), ",", *lex(b), ")"]


def _function(name: str) -> Callable[[_Lexer], None]:
    def rule(lx: _Lexer) -> None:
        if lx.s.startswith("_", lx.i):
            raise Reject("log base")
        lx.out.append("@" + name)

    return rule


_MACROS: dict[str, Callable[[_Lexer], None]] = {
    "frac": _frac, "cfrac": _frac, "sqrt": _sqrt, "binom": _binom,
    **{bar: _Lexer.bar for bar in ("lvert", "rvert", "vert", "|", "mid")},
    **{name: _function(sym) for name, sym in _FUNCS.items() if name != "sqrt"},
}  # fmt: skip


def _backslash(lx: _Lexer) -> None:
    name, lx.i = _command_end(lx.s, lx.i)
    if name in _MACROS:
        _MACROS[name](lx)
    elif name in _TOKENS:
        lx.out += _TOKENS[name]
    else:
        raise Reject(f"unknown command \\{name}")


_BY_CHAR: dict[str, Callable[[_Lexer], None]] = {
    **dict.fromkeys(_DIGITS + ".", _number),
    **dict.fromkeys("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", _word),
    **dict.fromkeys(" \t\n\r\f\v", _space),
    **dict.fromkeys("{([", _group),
    **dict.fromkeys("+-*/!,", _operator),
    "\\": _backslash, "^": _power, "_": _subscript, "|": _pipe,
}  # fmt: skip


def lex(s: str) -> list[str]:
    """Translate LaTeX math into Python-expression tokens over a fixed vocabulary."""
    lx = _Lexer(s)
    while lx.i < len(s):
        rule = _BY_CHAR.get(s[lx.i], _space if s[lx.i].isspace() else None)
        if rule is None:
            raise Reject(f"character {s[lx.i]!r}")
        rule(lx)
    if lx.bars % 2:
        raise Reject("unbalanced |")
    return lx.out


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
                    raise Reject("function without argument")
                out += ["(", nxt, ")"]
                k += 1
        else:
            out.append(t)
        k += 1
    return " ".join(out)


def _atom_start(out: list[str]) -> int:
    """Index in `out` where the last atom (number, symbol, call or group) begins."""
    if not out:
        raise Reject("dangling !")
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
        raise Reject("!!")
    if out[k][0].isalnum() or out[k][0] == ".":
        return k
    raise Reject("dangling !")


def _log10_bound(e: sympy.Basic) -> float:
    """Upper bound on log10|e| of an unevaluated expression; raises Reject when too big."""
    if e.is_Rational:
        return max(abs(e.p).bit_length(), abs(e.q).bit_length()) * 0.30103
    if e.is_Float:
        return math.log10(abs(float(e)) + 1.0)
    if not e.args:
        return 1.0  # a symbol or a constant such as pi
    if e.is_Pow:
        base, exp = _log10_bound(e.args[0]), _log10_bound(e.args[1])
        if exp > (3.1 if e.args[0].free_symbols else 6.0):  # x^1000 / 2^(10^6) at most
            raise Reject("huge exponent")
        bound = max(base, 1.0) * 10.0**exp
    elif e.func in (_INERT["factorial"], _INERT["binomial"]):
        n = _log10_bound(e.args[0])
        if n > 4.0:  # 10000! at most
            raise Reject("huge factorial")
        bound = 10.0**n * max(n, 1.0)
    elif e.is_Add:
        bound = max(_log10_bound(a) for a in e.args) + math.log10(len(e.args))
    else:
        bound = sum(_log10_bound(a) for a in e.args)
    if bound > MAX_DIGITS:
        raise Reject("huge value")
    return bound


@functools.lru_cache(maxsize=4096)  # a gold's items are read once per answer item
def to_sympy(latex: str) -> sympy.Expr:
    """Parse one cleaned scalar LaTeX answer into sympy; raises Reject if it cannot or must not."""
    py = _to_python(lex(latex))
    if not py or not _SAFE_PY.fullmatch(py):
        raise Reject("empty or unsafe")
    try:
        _log10_bound(parse_expr(py, dict(_LOCALS), _TRANSFORMS, dict(_INERT), evaluate=False))
        expr = parse_expr(py, dict(_LOCALS), _TRANSFORMS, dict(_GLOBALS))
    except Reject:
        raise
    except Exception as err:  # sympy/Python syntax errors, recursion, overflow
        raise Reject(str(err)[:100]) from None
    if not isinstance(expr, sympy.Expr):
        raise Reject("not an expression")
    return expr
