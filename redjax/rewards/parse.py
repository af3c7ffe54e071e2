"""Structure: read the top-level shape of a cleaned answer (matrix, union, set, tuple, list).

The result is nested tuples that redjax.rewards.compare walks, led by the gold's shape.
"""

from __future__ import annotations

import re

from redjax.rewards.normalise import strip_lhs


def closing(s: str, i: int, pairs: dict[str, str]) -> int:
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


BRACKETS = {"(": ")", "[": "]", "{": "}"}


def split_top(s: str, sep: str = ",") -> list[str]:
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


# vmatrix / Vmatrix are a determinant and a norm (numbers), not matrices: not read here
_MATRIX = re.compile(r"\\begin\{([pbB]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.S)
_LABEL = re.compile(r"(?:[A-Za-z]{1,3}|\\[a-zA-Z]+)(?:_\{?\w+\}?)?")
_VARIABLE = re.compile(r"(?:[A-Za-z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?")
_RELATION_CHARS = re.compile(r"<|>|\\[lg]eq?(?![a-zA-Z])|\\neq")


def last_side(s: str) -> str:
    """The value a chain states: "x = 5+5+1 = 11" -> "11"; with "\\approx", the last exact
    side ("\\frac13 \\approx 0.33" -> "\\frac13"), or the approximation after a lone variable."""
    if ("=" not in s and "\\approx" not in s) or _RELATION_CHARS.search(s):
        return s
    if len(split_top(s)) > 1 or len(split_top(s, ";")) > 1:  # "x = 1, y = 2": a list
        return s
    approx = split_top(s, "\\approx")
    sides = split_top(approx[0], "=")
    if len(approx) == 1:  # "4! = 24": a constant worked out (no letters on either side);
        # "7 = 11a + c" is an equation, not the value 11a + c
        constant = not any(re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", x)) for x in sides)
        stated = len(sides) > 2 or (len(sides) == 2 and constant)
        return sides[-1] if stated and sides[-1] else s
    if len(sides) == 1 and _VARIABLE.fullmatch(sides[0]):  # "x \\approx 3.14"
        return split_top(approx[-1], "=")[-1] or s
    return sides[-1] or s


def labelled(s: str) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """(form, labels, values) of "(p,q)=(3,2)" (form "("), "AB=4, CD=5" (","), "S:T=7:32"
    (":"); None when `s` is not two or more distinct labels with as many values."""
    m = re.fullmatch(r"\((.*)\)\s*=\s*\((.*)\)", s, re.S)
    if (
        m
        and closing(s, 0, BRACKETS) == m.end(1)
        and closing(s, m.start(2) - 1, BRACKETS) == len(s) - 1
    ):
        form, labels, values = "(", split_top(m.group(1)), split_top(m.group(2))
    elif s.count("=") == 1 and ":" in s:
        form = ":"
        labels, values = (split_top(x, ":") for x in s.split("="))
    else:
        pairs = [x.split("=") for x in split_top(s)]
        if any(len(p) != 2 for p in pairs):
            return None
        form, labels, values = ",", [p[0].strip() for p in pairs], [p[1].strip() for p in pairs]
    if len(labels) < 2 or len(labels) != len(values) or len(set(labels)) != len(labels):
        return None
    if not all(_LABEL.fullmatch(x) for x in labels) or not all(values):
        return None
    return form, tuple(labels), tuple(values)


def structure(s: str) -> tuple:
    """Read the top-level shape of a cleaned answer into nested tuples.

    ("matrix", rows) | ("union", parts) | ("seq", open, close, items) | ("scalar", text)
    """
    s = s.strip()
    m = _MATRIX.fullmatch(s)
    if m:
        rows = [r for r in (x.strip() for x in m.group(2).split("\\\\")) if r]
        return ("matrix", tuple(tuple(structure(c) for c in r.split("&")) for r in rows))
    pm = split_top(s, "\\pm")
    if len(pm) == 2 and pm[1]:  # "1 \pm \sqrt{2}": the two solutions, unordered
        a, b = pm[0] or "0", pm[1]
        return ("seq", "", "", (("scalar", f"{a}+({b})"), ("scalar", f"{a}-({b})")))
    parts = split_top(s, "\\cup")
    if len(parts) > 1:
        return ("union", tuple(structure(p) for p in parts))
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("seq", "{", "}", tuple(_item(x) for x in split_top(s[2:-2]) if x))
    if s[:1] in "([{" and s[-1:] in ")]}" and closing(s, 0, BRACKETS) == len(s) - 1:
        if _MATRIX.fullmatch(s[1:-1].strip()):  # "\left[\begin{array}...\end{array}\right]"
            return structure(s[1:-1])
        items = split_top(s[1:-1])
        if len(items) > 1:  # "{1, 2}": a set written with plain braces
            return ("seq", s[0], s[-1], tuple(_item(x) for x in items))
    for sep in (",", ";"):  # "1, 2, 3" or "1; 2; 3"
        items = split_top(s, sep)
        if len(items) > 1:
            return ("seq", "", "", tuple(_item(x) for x in items if x))
    ratio = split_top(s, ":")
    if len(ratio) > 1 and all(ratio):  # "7:32", ordered
        return ("seq", ":", ":", tuple(structure(x) for x in ratio))
    return ("scalar", s)


def _item(s: str):
    """One element of a tuple / set / list: strip its own "x =" and read its structure."""
    return structure(strip_lhs(s.strip()))
