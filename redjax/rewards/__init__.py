"""Verifiable rewards: math answer checking, the format and length rewards, a registry, the
weighted reward list (reward.fns, `combine`), a process pool.

Import-light on purpose: worker processes import this package, so sympy (math) and numpy
(pool) load only when `math_reward` / `is_equiv` / `Verifier` are first used.
"""

import importlib

from redjax.rewards.extract import extract_answer, format_reward
from redjax.rewards.registry import get_reward_fn, reward_path

_LAZY = {
    "math_reward": "redjax.rewards.math",
    "is_equiv": "redjax.rewards.math",
    "Verifier": "redjax.rewards.pool",
}

__all__ = ["Verifier", "extract_answer", "format_reward", "get_reward_fn", "is_equiv"]
__all__ += ["math_reward", "reward_path"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
