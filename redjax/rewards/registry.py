"""Reward functions by name: built-ins ("math", "format", "length", ...) or a user's
"package.module:function"."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from redjax.rewards.extract import EXTRACT_MODES, format_reward

RewardFn = Callable[..., float]  # (completion, gold[, record], **keys of its entry) -> float


def _format_think(completion: str, gold: str) -> float:
    """The format reward with the "<think>...</think>" form required."""
    return format_reward(completion, think=True)


def _format(completion: str, gold: str) -> float:
    """The format reward: 1 if the answer is boxed."""
    return format_reward(completion)


def length_reward(completion: str, gold: str, *, max_chars: int, ramp_chars: int) -> float:
    """The overlong penalty, in characters of the completion: 0 up to max_chars - ramp_chars,
    then falling linearly to -1 at max_chars, and -1 past it (DAPO's soft overlong punishment
    on the text the verifier sees, whatever the tokenizer)."""
    n, start = len(completion), max_chars - ramp_chars
    if n <= start:
        return 0.0
    if n > max_chars:
        return -1.0
    return (start - n) / ramp_chars


def check_length_params(max_chars: int, ramp_chars: int) -> None:
    """ValueError unless 1 <= max_chars and 0 <= ramp_chars <= max_chars (integers)."""
    for key, value in (("max_chars", max_chars), ("ramp_chars", ramp_chars)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{key} must be an integer (characters), got {value!r}")
    if max_chars < 1 or not 0 <= ramp_chars <= max_chars:
        raise ValueError(
            f"length needs max_chars >= 1 and 0 <= ramp_chars <= max_chars, got max_chars="
            f"{max_chars}, ramp_chars={ramp_chars}"
        )


# A built-in's own keys in a reward.fns entry (its keyword arguments) and their check.
PARAMS = {"length": (("max_chars", "ramp_chars"), check_length_params)}


def check_params(name: str, params: dict) -> None:
    """ValueError naming the key when a built-in's entry has an unknown, missing or bad key."""
    keys, check = PARAMS.get(name, ((), None))
    unknown = sorted(set(params) - set(keys))
    missing = [k for k in keys if k not in params]
    if unknown:
        takes = f"takes {', '.join(keys)}" if keys else "takes no keys"
        raise ValueError(f"unknown key {unknown[0]!r}: {name} {takes} besides fn, weight, correct")
    if missing:
        raise ValueError(f"{name} needs {', '.join(keys)}; missing {missing[0]!r}")
    if check is not None:
        check(**params)


def _builtin(name: str, extract: str = "boxed") -> RewardFn | None:
    """A built-in reward; "math" imports sympy and "math_verify" math-verify only when asked."""
    if name == "math":
        from redjax.rewards.math import math_reward, math_reward_any

        return math_reward if extract == "boxed" else math_reward_any
    if name == "math_verify":
        from redjax.rewards import mathverify

        mathverify.load()  # a missing package fails here, naming the extra to install
        if extract == "boxed":
            return mathverify.math_verify_reward
        return mathverify.math_verify_reward_any
    return {"format": _format, "format_think": _format_think, "length": length_reward}.get(name)


BUILTIN_NAMES = ("math", "math_verify", "format", "format_think", "length")


def split_path(name: str) -> tuple[str, str]:
    """(module, attribute) of "package.module:function" or "package.module.function";
    ValueError naming the built-ins for anything else (a built-in name is not a path)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")
    if ":" in name:
        module_name, _, attr = name.partition(":")
    else:
        module_name, _, attr = name.rpartition(".")
    if not module_name or not attr:
        raise ValueError(
            f"unknown reward {name!r}: use one of {list(BUILTIN_NAMES)} or a path "
            "'package.module:function' / 'package.module.function'"
        )
    return module_name, attr


def get_reward_fn(name: str, extract: str = "boxed") -> RewardFn:
    """The reward function `(completion, gold) -> float` named by a built-in or a dotted path.

    extract ("boxed" or "any") picks how the built-in math rewards find the final answer;
    the format rewards and user functions do not take it. A user function may take a third
    argument, the problem record (redjax.rewards.combine says when it gets one).
    """
    if extract not in EXTRACT_MODES:
        raise ValueError(f"reward extract must be one of {list(EXTRACT_MODES)}, got {extract!r}")
    if name in BUILTIN_NAMES:
        return _builtin(name, extract)
    module_name, attr = split_path(name)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(f"reward {name!r}: cannot import module {module_name!r}: {err}") from err
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {attr!r} in {module_name!r} is not callable")
    return fn


def reward_path(fn: RewardFn | str) -> str:
    """A name that worker processes can import for `fn` (a name is returned unchanged)."""
    if isinstance(fn, str):
        return fn
    for name in ("math", "format", "format_think", "length"):  # math_verify may be missing
        if fn is _builtin(name):
            return name
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(
            f"reward function {fn!r} cannot be imported by worker processes (defined in "
            "__main__, a lambda or a local function): move it to a module and pass "
            "'package.module:function', or use workers=0"
        )
    path = f"{module}:{qualname}"
    try:
        ok = get_reward_fn(path) is fn
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"reward function {fn!r} is not importable as {path!r}; use workers=0")
    return path
