"""Final-answer extraction and the format reward: plain string scanning, no sympy.

Every function here is linear in the length of the text (no regex that can backtrack
badly), so megabytes of model output cost milliseconds.
"""

from __future__ import annotations

import re

BOX_COMMANDS = ("\\boxed", "\\fbox")
# Phrases that introduce a final answer when there is no box, longest first.
ANSWER_MARKERS = ("final answer is", "the answer is", "answer is", "answer:", "####")


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
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":  # an escaped brace (\{ or \}) does not count
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                content = text[i + 1 : j].strip()
                return content or None
        j += 1
    return None


def _marker_answer(text: str) -> str | None:
    """The answer after the last "final answer is" / "answer:" / "####" marker, if any."""
    lower = text.lower()
    best, end = -1, -1
    for marker in ANSWER_MARKERS:
        pos = lower.rfind(marker)
        if pos >= 0 and pos + len(marker) > end:
            best, end = pos, pos + len(marker)
    if best < 0:
        return None
    rest = text[end:].lstrip(" \t*:")  # markdown bold and a colon often follow the marker
    rest = rest.split("\n", 1)[0].strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            close = rest.find(right, len(left))
            rest = rest[len(left) : close] if close >= 0 else rest[len(left) :]
            break
    else:
        m = re.search(r"\.(\s|$)", rest)  # end of sentence; a decimal point is kept
        if m:
            rest = rest[: m.start()]
    rest = rest.strip().strip("*").strip()
    return rest or None


def extract_answer(text: str) -> str | None:
    """The final answer in a completion: last \\boxed{}, else a "final answer is"/"answer:" line."""
    if not isinstance(text, str):
        return None
    text = text.replace("\x00", "")
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
