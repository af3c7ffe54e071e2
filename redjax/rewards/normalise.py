"""Cleaning: strip the LaTeX dressing that never changes a value, keep the structure.

Dollars, \\left/\\right, spacing, \\dfrac, \\text{}, units, degrees, thousands separators
("1,234"), a trailing period and "x =" on the left go; brackets and commas stay for
redjax.rewards.parse. `key` and `text_key` are the strings used for exact comparison.
"""

from __future__ import annotations

import re

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
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\neq ",
}
_ALIAS = {
    "dfrac": "\\frac", "tfrac": "\\frac", "cfrac": "\\frac", "dbinom": "\\binom",
    "tbinom": "\\binom", "lt": "<", "gt": ">", "ne": "\\neq ", "leqslant": "\\le ",
    "geqslant": "\\ge ",
}  # fmt: skip
_ALIASES = re.compile(r"\\(" + "|".join(_ALIAS) + r")(?![a-zA-Z])")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\degree")
_LHS = re.compile(
    r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?(?:\([a-zA-Z]\))?\s*(?:=|\\in(?![a-zA-Z]))\s*"
)
_NOT_EQUAL = re.compile(r"(?<![\d)}\]!])!=")
# "1,234": a group of 1-3 digits not led by 0 ("0,125" is the decimal 0.125), then ",ddd"s.
_THOUSANDS = re.compile(r"[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
_THIN_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_MIXED = re.compile(r"(-?)(\d+)\s*\\frac\s*\{(\d+)\}\s*\{(\d+)\}")


def clean(s: str, lhs: bool = True) -> str:
    """Strip LaTeX dressing that never changes a value; keeps the structure (brackets, commas).

    With `lhs`, a leading "x =" / "f(x) =" / "x \\in" is dropped too.
    """
    s = s.replace("\x00", "").strip()
    s = re.sub(r"\\left\.|\\right\.", "", s)
    s = _SIZING.sub("", s)
    s = re.sub(r",\s*\\!\s*", ",", s).replace("\\!", "")  # "32,\\! 348": one number
    s = _SPACING.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    for old, new in _UNICODE.items():
        s = s.replace(old, new)
    s = _ALIASES.sub(lambda m: _ALIAS[m.group(1)], s)
    s = _NOT_EQUAL.sub(r"\\neq ", s)  # "x != 3"; "5!=120" and "(n+1)!=..." are factorials
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
    s = strip_lhs(s) if lhs else s
    if _THOUSANDS.fullmatch(s) or _THIN_THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")
    m = _MIXED.fullmatch(s)
    if m:  # a mixed number: 3\frac{1}{2} is 7/2, not 3/2
        s = f"{m.group(1)}({m.group(2)}+\\frac{{{m.group(3)}}}{{{m.group(4)}}})"
    return re.sub(r"\s+", " ", s).strip()


def strip_lhs(s: str) -> str:
    """Drop "x =" / "f(x) =" / "x \\in" on the left when the rest has no other relation."""
    m = _LHS.match(s)
    if m and not re.search(r"=|\\[lg]eq?\b|<|>", s[m.end() :]):
        return s[m.end() :].strip()
    return s


def key(s: str) -> str:
    """String used for exact comparison: no spaces, "_{2}" written "_2"."""
    return re.sub(r"_\{(\w+)\}", r"_\1", re.sub(r"\s+", "", s))


def text_key(s: str) -> str:
    """Case-free text used for word answers and choice letters: "(B)" -> "b"."""
    s = key(s).lower()
    m = re.fullmatch(r"\(([a-z])\)", s)
    return m.group(1) if m else s
