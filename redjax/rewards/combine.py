"""reward.fns: a weighted list of reward functions, and the one entry that says an answer is right.

An entry is {fn, weight[, correct][, keys of the function]}: fn a built-in (math, math_verify,
format, format_think, length) or "package.module:function"; any other key is passed to the
function as a keyword argument. For one completion:

    reward  = sum_i weight_i * fn_i(completion, gold[, record], **keys_i)
    correct = the deciding entry's own value >= CORRECT (0.5), whatever the weights

The deciding entry is the one marked `correct: true`, else the one math / math_verify entry
not marked `correct: false`; a list with none, or with two candidates, is refused. A function
gets the problem record as a third argument when it takes three positional arguments besides
its keys. An item whose function raises or returns a non-finite number scores 0 and wrong.
The old reward.fn + reward.format_weight are the list [{fn, weight: 1, correct: true},
{fn: format, weight: format_weight}] (the second left out at weight 0): `entries`, the one
place that says so.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redjax.rewards.registry import BUILTIN_NAMES, RewardFn, check_params, get_reward_fn, split_path

if TYPE_CHECKING:
    from redjax.config import RewardCfg

CORRECT = 0.5  # the deciding entry's value from which an answer counts as correct
DECIDERS = ("math", "math_verify")  # built-ins that decide correctness unless one is marked
ENTRY_KEYS = ("fn", "weight", "correct")  # every other key of an entry is the function's


@dataclasses.dataclass(frozen=True)
class Entry:
    """One reward function of the list, as configured."""

    fn: str | RewardFn  # a built-in name, "package.module:function", or a function (in process)
    weight: float
    correct: bool  # this entry's value decides correctness
    params: dict[str, Any]  # keyword arguments of the function (the entry's other keys)
    where: str  # the config field naming its function, for errors: "reward.fns[2].fn"


@dataclasses.dataclass(frozen=True)
class Bound:
    """An entry with its function loaded, ready to score."""

    name: str
    fn: RewardFn
    weight: float
    correct: bool
    params: dict[str, Any]
    takes_record: bool  # called as fn(completion, gold, record, **params)


def _check_name(fn: Any, where: str) -> None:
    """ValueError naming `where` unless fn is a built-in name, a dotted path or a function."""
    if callable(fn) or fn in BUILTIN_NAMES:
        return
    try:
        split_path(fn)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def _entry(raw: Any, at: str) -> tuple[Entry, bool | None]:
    """(the entry, its `correct` flag as written or None) of one item of reward.fns."""
    if not isinstance(raw, dict):
        raise ValueError(f"{at}: expected a mapping {{fn, weight[, correct, ...]}}, got {raw!r}")
    if "fn" not in raw:
        raise ValueError(f"{at}.fn: missing (one of {', '.join(BUILTIN_NAMES)} or a path)")
    _check_name(raw["fn"], f"{at}.fn")
    weight = raw.get("weight")
    number = isinstance(weight, int | float) and not isinstance(weight, bool)
    if not number or not math.isfinite(weight):
        raise ValueError(f"{at}.weight: expected a finite number, got {weight!r}")
    flag = raw.get("correct")
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"{at}.correct: expected true or false, got {flag!r}")
    params = {k: v for k, v in raw.items() if k not in ENTRY_KEYS}
    if isinstance(raw["fn"], str) and raw["fn"] in BUILTIN_NAMES:
        try:
            check_params(raw["fn"], params)
        except ValueError as err:
            raise ValueError(f"{at}: {err}") from None
    return Entry(raw["fn"], float(weight), False, params, f"{at}.fn"), flag


def parse_entries(fns: Sequence[Any], where: str = "reward.fns") -> list[Entry]:
    """The entries of a reward.fns list, the deciding one marked (module doc); a ValueError
    naming the entry's field for a bad one."""
    parsed = [_entry(raw, f"{where}[{i}]") for i, raw in enumerate(fns)]
    marked = [i for i, (_, flag) in enumerate(parsed) if flag is True]
    if len(marked) > 1:
        raise ValueError(f"{where}: entries {marked} are all marked correct: true; mark one")
    if not marked:
        marked = [
            i for i, (e, flag) in enumerate(parsed) if e.fn in DECIDERS and flag is not False
        ]  # fmt: skip
        if len(marked) > 1:
            raise ValueError(
                f"{where}: entries {marked} are math / math_verify; mark the one that decides "
                "correctness with correct: true"
            )
    if not marked:
        raise ValueError(
            f"{where}: no entry decides correctness: add a math or math_verify entry, or mark "
            "one with correct: true"
        )
    return [dataclasses.replace(e, correct=i == marked[0]) for i, (e, _) in enumerate(parsed)]


def entries(reward: str | RewardFn | Sequence[Any], format_weight: float) -> list[Entry]:
    """The list a reward section scores with: reward.fns as given, or the old reward.fn (which
    decides correctness) plus format_weight times the format reward."""
    if isinstance(reward, list | tuple):
        if format_weight:
            raise ValueError(
                "reward.format_weight: with reward.fns, give the format reward its own entry "
                "{fn: format, weight: W}"
            )
        return parse_entries(reward)
    number = isinstance(format_weight, int | float) and not isinstance(format_weight, bool)
    if not number or not format_weight >= 0 or not math.isfinite(format_weight):
        raise ValueError(f"reward.format_weight must be a number >= 0, got {format_weight!r}")
    _check_name(reward, "reward.fn")
    one = [Entry(reward, 1.0, True, {}, "reward.fn")]
    if not format_weight:
        return one
    return [*one, Entry("format", float(format_weight), False, {}, "reward.format_weight")]


def section_entries(rw: RewardCfg) -> list[Entry]:
    """`entries` of a config's reward section; reward.fns and a changed reward.fn are refused
    together (the list replaces it)."""
    if rw.fns and rw.fn != type(rw)().fn:
        raise ValueError(
            f"reward.fn: {rw.fn!r} is set beside reward.fns, which replaces it: give it an "
            "entry {fn: ..., weight: 1} in reward.fns instead"
        )
    return entries(rw.fns or rw.fn, rw.format_weight)


def _takes_record(fn: RewardFn, params: dict) -> bool:
    """Whether fn takes a third positional argument (the record) besides its keyword keys."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a C function): two arguments
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    values = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in values):
        return True
    return sum(p.kind in positional and p.name not in params for p in values) >= 3


def _load(e: Entry, extract: str, think: bool) -> tuple[str, RewardFn]:
    """(name, function) of an entry; "format" is the think form under reward.think_format."""
    if callable(e.fn):
        return getattr(e.fn, "__name__", repr(e.fn)), e.fn
    name = "format_think" if e.fn == "format" and think else e.fn
    try:
        return e.fn, get_reward_fn(name, extract)
    except ValueError as err:
        raise ValueError(f"{e.where}: {err}") from None
    except ImportError as err:  # math_verify without its extra: the message names it
        raise ImportError(f"{e.where}: {err}") from None


def bind(items: Sequence[Entry], extract: str, think: bool) -> list[Bound]:
    """The entries with their functions imported and their keys checked against each
    function's signature; a ValueError naming the entry otherwise."""
    out = []
    for e in items:
        name, fn = _load(e, extract, think)
        takes = _takes_record(fn, e.params)
        try:
            inspect.signature(fn).bind("", "", *([{}] if takes else []), **e.params)
        except TypeError as err:
            keys = "".join(f", {k}=" for k in e.params)
            raise ValueError(
                f"{e.where}: {name} cannot be called as fn(completion, gold[, record]{keys}): {err}"
            ) from None
        except ValueError:  # no signature to read: the call itself will tell
            pass
        out.append(Bound(name, fn, e.weight, e.correct, dict(e.params), takes))
    return out


def describe(items: Sequence[Entry]) -> str:
    """A short name of the list for messages: "math", or "1 * math + 0.2 * format"."""
    names = [e.fn if isinstance(e.fn, str) else getattr(e.fn, "__name__", "fn") for e in items]
    if len(items) == 1 and items[0].weight == 1:
        return names[0]
    return " + ".join(f"{e.weight:g} * {n}" for e, n in zip(items, names, strict=True))


def score_item(
    bound: Sequence[Bound], completion: str, gold: str, record: dict | None
) -> tuple[float, bool, str | None]:
    """(reward, correct, error message or None) of one completion (module doc); (0, False,
    message) when a function fails."""
    total, correct = 0.0, False
    for b in bound:
        try:
            args = (completion, gold, record) if b.takes_record else (completion, gold)
            value = float(b.fn(*args, **b.params))
        except Exception as err:
            return 0.0, False, f"{b.name}: {type(err).__name__}: {err}"[:500]
        if not math.isfinite(value):
            return 0.0, False, f"{b.name} returned {value}"
        total += b.weight * value
        correct = correct or (b.correct and value >= CORRECT)
    return total, correct, None
