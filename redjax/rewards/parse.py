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


def structure(s: str):
    """Read the top-level shape of a cleaned answer into nested tuples.

    ("matrix", rows) | ("union", parts) | ("seq", open, close, items) | ("scalar", text)
    """
    s = s.strip()
    m = re.fullmatch(r"\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s, re.S)
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
    if s[:1] in "([" and s[-1:] in ")]" and closing(s, 0, {"(": ")", "[": "]"}) == len(s) - 1:
        items = split_top(s[1:-1])
        if len(items) > 1:
            return ("seq", s[0], s[-1], tuple(_item(x) for x in items))
    items = split_top(s)
    if len(items) > 1:
        return ("seq", "", "", tuple(_item(x) for x in items if x))
    return ("scalar", s)


def _item(s: str):
    """One element of a tuple / set / list: strip its own "x =" and read its structure."""
    return structure(strip_lhs(s.strip()))
