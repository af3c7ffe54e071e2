"""The "math_verify" reward backend: Hugging Face's math-verify, for parity with other trainers.

Optional (pip install 'redjax[mathverify]'); it runs inside redjax's time-bounded worker pool
like any reward. extract="boxed" hands math-verify redjax's boxed answer (the same answer the
"math" backend reads); extract="any" lets math-verify find the answer with its own rules.
"""

from __future__ import annotations

import threading
import types

from redjax.rewards.extract import EXTRACT_MODES, boxed_group, extract_answer

INSTALL = "pip install 'redjax[mathverify]'"


def load() -> types.ModuleType:
    """The math_verify module; ImportError naming the extra to install when it is missing."""
    try:
        import math_verify
    except ImportError as err:
        raise ImportError(
            f"reward.fn=math_verify needs the optional package math-verify: {INSTALL}"
        ) from err
    return math_verify


def _wrap(answer: str) -> str:
    """An extracted answer in the form math-verify reads first: one boxed LaTeX answer."""
    return f"$\\boxed{{{answer}}}$"


def math_verify_reward(completion: str, gold: str, *, extract: str = "boxed") -> float:
    """1.0 if math-verify finds the completion's answer equal to the gold, else 0.0."""
    if extract not in EXTRACT_MODES:
        raise ValueError(f"math_verify: extract must be one of {EXTRACT_MODES}, got {extract!r}")
    mv = load()
    from redjax.rewards.math import gold_answer  # sympy: only once the backend is used

    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0.0
    limit = 5 if threading.current_thread() is threading.main_thread() else None  # SIGALRM
    if extract == "boxed":
        group = boxed_group(completion)
        answer = ", ".join(group) if len(group) > 1 else extract_answer(completion)
        if answer is None:
            return 0.0
        completion = _wrap(answer)
    parsed_gold = mv.parse(_wrap(gold_answer(gold, extract)), parsing_timeout=limit)
    parsed = mv.parse(completion, parsing_timeout=limit)
    if not parsed_gold or not parsed:
        return 0.0
    return 1.0 if mv.verify(parsed_gold, parsed, timeout_seconds=limit) else 0.0


def math_verify_reward_any(completion: str, gold: str) -> float:
    """`math_verify_reward` with extract="any" (math-verify's own answer extraction)."""
    return math_verify_reward(completion, gold, extract="any")
