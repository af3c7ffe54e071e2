"""Final-answer extraction and the format reward: plain string scanning, no sympy.

Every function here is linear in the length of the text (no regex that can backtrack
badly), so megabytes of model output cost milliseconds.
"""

from __future__ import annotations

import re

BOX_COMMANDS = ("\\boxed", "\\fbox")
# Phrases that introduce a final answer when there is no box, longest first.
ANSWER_MARKERS = ("final answer is", "the answer is", "answer is", "answer:", "####")
ANY_MARKERS = (*ANSWER_MARKERS, "final answer")  # mode "any": a "**Final Answer**" heading too


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}) in `text`; None if absent or unbalanced."""
    start = max(text.rfind(cmd) for cmd in BOX_COMMANDS)
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":  # "\boxed 5": the answer runs to the next "$" or the line end
        m = re.match(r"[^$\n]*", text[i:])
        content = m.group(0).strip() if m else ""
        return content or None
    j = _closing_brace(text, i, len(text))
    return (text[i + 1 : j].strip() or None) if j >= 0 else None


_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.S)  # an escaped brace (\{ or \}) does not count


def _closing_brace(text: str, i: int, limit: int) -> int:
    """Index of the "}" closing the "{" at text[i], searched before `limit`; -1 if none.
    The regex skips ordinary characters in C: a megabyte box costs milliseconds."""
    depth = 0
    for m in _BRACE_TOKENS.finditer(text, i, limit):
        c = m.group(0)
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.start()
    return -1


def _box_at(text: str, start: int, limit: int) -> tuple[str | None, int]:
    """(content, end) of the box command at text[start]; (None, -1) if it does not close
    before `limit` (a scan never passes `limit`, so walking back over boxes stays linear)."""
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    while i < limit and text[i] == " ":
        i += 1
    if i >= limit or text[i] != "{":
        return None, -1
    j = _closing_brace(text, i, limit)
    return (text[i + 1 : j].strip() or None, j + 1) if j >= 0 else (None, -1)


_CONNECTOR = re.compile(  # between boxes of one answer: ", ", " and ", "$ or $x = "
    r"[\s,;$.]*(?:(?:and|or|\\text\{\s*(?:and|or)\s*\}|\\q?quad)[\s,;$.]*)?"
    r"(?:[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*)?"
)
MAX_BOXES = 32  # longest run of boxes read as one list


_BOX_LABEL = re.compile(r"(?<![\w\\])([a-zA-Z](?:_\{?\w+\}?)?)\s*=\s*\$?\s*")


def boxed_group(text: str, labels: bool = False) -> list[str]:
    """The last box and the boxes just before it joined only by ",", "and", "$": "\\boxed{1},
    \\boxed{2} and \\boxed{3}" -> ["1", "2", "3"]; [] when the text has no readable box.
    With `labels`, "$k=\\boxed{45}$ and $n=\\boxed{2}$" -> ["k=45", "n=2"] (every box labelled)."""
    if not isinstance(text, str):
        return []
    last = last_boxed(text)
    if last is None:
        return []
    group, start = [last], max(text.rfind(cmd) for cmd in BOX_COMMANDS)
    starts = [start]
    while len(group) < MAX_BOXES:
        prev = max(text.rfind(cmd, 0, start) for cmd in BOX_COMMANDS)
        if prev < 0:
            break
        content, end = _box_at(text, prev, start)
        if content is None or not _CONNECTOR.fullmatch(text[end:start]):
            break
        group.append(content)
        start = prev
        starts.append(start)
    if labels and len(group) > 1:
        found = [_label_before(text, i) for i in starts]
        if all(found) and not any("=" in x for x in group):
            group = [f"{label}={x}" for label, x in zip(found, group, strict=True)]
    return group[::-1]


def _label_before(text: str, i: int) -> str | None:
    """The "k" of a "k = " (or "$k = $") written just before the box at text[i], or None."""
    window = text[max(0, i - 24) : i]
    for m in _BOX_LABEL.finditer(window):
        if m.end() == len(window):
            return m.group(1)
    return None


_SPAN_OF = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$(.+?)(?<!\\)\$", re.S)
_IS = re.compile(r".*\b(?:is|are|equals|be)\s+|.*=\s*", re.S)


def _trim(rest: str) -> str:
    """An answer line cut to its answer: its math span, or what follows "is" in a sentence."""
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            close = rest.find(right, len(left))
            return rest[len(left) : close] if close >= 0 else rest[len(left) :]
    m = re.search(r"\.(\s|$)", rest)  # end of sentence; a decimal point is kept
    if m:
        rest = rest[: m.start()]
    if re.search(r"[a-zA-Z]{4,}", rest):  # a sentence: "The number of ways is $12$"
        spans = _SPAN_OF.findall(rest)
        if spans:
            return next(x for x in spans[-1] if x)
        m = _IS.match(rest)
        if m and re.search(r"\d", rest[m.end() :]):
            return rest[m.end() :]
    return rest


def _marker_answer(text: str, markers: tuple[str, ...] = ANSWER_MARKERS) -> str | None:
    """The answer after the last "final answer is" / "answer:" / "####" marker, if any."""
    lower = text.lower()
    best, end = -1, -1
    for marker in markers:
        pos = lower.rfind(marker)
        if pos >= 0 and pos + len(marker) > end:
            best, end = pos, pos + len(marker)
    if best < 0:
        return None
    rest = text[end:].lstrip(" \t*:")  # markdown bold and a colon often follow the marker
    if markers is not ANSWER_MARKERS:  # mode "any": the answer may be on the next line
        rest = rest.lstrip(" \t\n*:")
    rest = _trim(rest.split("\n", 1)[0].strip()[:2000])
    rest = rest.strip().strip("*").strip()
    return rest or None


def _last_span(text: str) -> tuple[str | None, int]:
    """(content, end) of the last $...$, $$...$$, \\(...\\) or \\[...\\] span; linear."""
    best, best_end = None, -1
    for left, right in (("\\[", "\\]"), ("\\(", "\\)")):
        close = text.rfind(right)
        start = text.rfind(left, 0, close) if close >= 0 else -1
        if start >= 0 and close + 2 > best_end:
            best, best_end = text[start + 2 : close], close + 2
    dollars = [m.start() for m in re.finditer(r"(?<!\\)\$", text)]
    if len(dollars) >= 2 and dollars[-1] + 1 > best_end:
        start, close = dollars[-2] + 1, dollars[-1]
        if start == close and len(dollars) >= 4:  # "$$...$$"
            start, close = dollars[-3] + 1, dollars[-2]
        best, best_end = text[start:close], dollars[-1] + 1
    return (best.strip() or None) if best is not None else None, best_end


_SPAN_CONNECTOR = re.compile(r"\s*[,;]?\s*(?:(?:and|or)\s+)?")


def span_group(text: str) -> list[str]:
    """The last $...$ span and the spans just before it joined only by ",", "and", "or": "$(5,8)$
    and $(8,5)$." -> ["(5,8)", "(8,5)"]; single-dollar spans only, at most MAX_BOXES."""
    if not isinstance(text, str):
        return []
    text = text[-20000:]  # a run of spans ends the text: its tail is enough
    dollars = [m.start() for m in re.finditer(r"(?<!\\)\$", text)]
    group, k, after = [], len(dollars) - 1, len(text)
    while k >= 1 and len(group) < MAX_BOXES:
        left, right = dollars[k - 1], dollars[k]
        content = text[left + 1 : right].strip()
        if not content or (group and not _SPAN_CONNECTOR.fullmatch(text[right + 1 : after])):
            break
        group.append(content)
        after, k = left, k - 2
    return group[::-1]


# A number standing alone: not glued to a letter, digit, "_", "^" or "." on either side, not
# a brace group ("AZYUK2A", "x^2", "v2", the 2 of "\\sqrt{2}" hold no answer), not cut out of a
# longer number ("1,234,5"); "1,22" (a comma not followed by exactly three digits) is kept
# whole for the decimal rule, and "\\frac{3}{5}" is one number.
_LAST_NUMBER = re.compile(
    r"(?:(?<![\w)\]}])-)?\\[dt]?frac\{\d+\}\{\d+\}"
    r"|(?<![\w.^])(?<!\d,)(?!(?<=\{)[\d.,/]+\})"
    r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+,\d+|\d+(?:\.\d+)?(?:/\d+)?|\.\d+)"
    r"(?![\w^]|[.,/]\d)"
)
_MATH_LIKE = re.compile(r"[^\n]{1,300}")


def _whole(text: str) -> str | None:
    """The text itself when it is one short line of math ("7,425,000", "\\frac{1}{2}",
    "$1$, $2$ and $3$": its dollars dropped) or one or two words without math ("Yes")."""
    s = re.sub(r"(?<!\\)\$", " ", text).strip()
    if not _MATH_LIKE.fullmatch(s):
        return None
    if "$" not in text and len(s.split()) <= 2 and not re.search(r"\d", s):
        return s
    bare = re.sub(r"\\text\w*\s*\{[^{}]*\}|\\[a-zA-Z]+|\b(?:and|or)\b", " ", s)
    prose = re.search(r"[a-zA-Z]{4,}|[a-zA-Z]\s+[a-zA-Z]", bare)  # "we get x=3"
    return None if prose else s


def _retraction(text: str) -> str | None:
    """Mode "any": the answer on a "the answer is" / "Answer:" line after the last box, when it
    is a short answer with a digit ("\\boxed{3}. Wait, the answer is 4." -> "4"), else None."""
    start = max(text.rfind(cmd) for cmd in BOX_COMMANDS)
    _, end = _box_at(text, start, len(text))
    after = text[end:] if end >= 0 else ""
    found = _marker_answer(after, ANY_MARKERS) if after.strip() else None
    if found is None or not re.search(r"\d", found) or len(found) > 300:
        return None
    if _NUMBER_UNIT.fullmatch(found):  # "4 apples"
        return found
    bare = re.sub(r"\\text\w*\s*\{[^{}]*\}|\\[a-zA-Z]+|\b(?:and|or)\b", " ", found)
    return None if re.search(r"[a-zA-Z]{4,}|[a-zA-Z]\s+[a-zA-Z]", bare) else found


_NUMBER_UNIT = re.compile(r"\\?\$?-?\d[\d.,]*\s*[a-zA-Z]+")  # one word: "4 apples"


def _any_answer(text: str) -> str | None:
    """Mode "any": the last box (or an answer line that takes it back, see `_retraction`),
    else a final-answer line, else the text if it is only an answer, else the last math span
    or the last number, whichever comes later."""
    if any(cmd in text for cmd in BOX_COMMANDS):
        boxed = last_boxed(text)
        if boxed is not None:
            return _retraction(text) or boxed
    found = _marker_answer(text, ANY_MARKERS) or _whole(text)
    if found is not None:
        return found
    span, span_end = _last_span(text)
    tail = text[max(0, span_end, len(text) - 2000) :]
    numbers = _LAST_NUMBER.findall(tail)
    if numbers:
        return numbers[-1]
    return span


EXTRACT_MODES = ("boxed", "any")


def extract_answer(text: str, mode: str = "boxed") -> str | None:
    """The final answer in a completion. mode "boxed": the last \\boxed{}, else a "final
    answer is" / "answer:" line; mode "any": wherever a model puts it (see `_any_answer`)."""
    if mode not in EXTRACT_MODES:
        raise ValueError(f"extract mode must be one of {EXTRACT_MODES}, got {mode!r}")
    if not isinstance(text, str):
        return None
    text = text.replace("\x00", "")
    if mode == "any":
        return _any_answer(text)
    if any(cmd in text for cmd in BOX_COMMANDS):
        return last_boxed(text)  # a malformed last box is no answer, not a fall-back
    return _marker_answer(text)


def format_reward(completion: str, think: bool = False) -> float:
    """1.0 if the answer is in a \\boxed{}; with `think`, also "<think>...</think>" before it."""
    if not isinstance(completion, str):
        return 0.0
    if not think:
        return 1.0 if last_boxed(completion) is not None else 0.0
    text = completion.lstrip()
    if not text.startswith("<think>") or text.count("<think>") != 1:
        return 0.0
    if text.count("</think>") != 1:
        return 0.0
    after = text.split("</think>", 1)[1]
    return 1.0 if last_boxed(after) is not None else 0.0
