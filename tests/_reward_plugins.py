"""Custom rewards for the Verifier tests, importable by worker processes as "_reward_plugins:NAME"."""

import os
import signal
import sys
import time


def exact(completion: str, gold: str) -> float:
    """1 if the completion equals the gold string."""
    return float(completion == gold)


def misbehave(completion: str, gold: str) -> float:
    """Acts out the failure named in the completion, else compares exactly."""
    if completion == "SLEEP":
        time.sleep(10_000)
    if completion == "EXIT":
        os._exit(1)
    if completion == "SEGV":
        os.kill(os.getpid(), signal.SIGSEGV)
    if completion == "RAISE":
        raise RuntimeError("reward failed on purpose")
    if completion == "NAN":
        return float("nan")
    return float(completion == gold)


def has_jax(completion: str, gold: str) -> float:
    """1 if JAX was imported into the worker process (it must not be)."""
    return float("jax" in sys.modules)


def digit_share(completion: str, gold: str) -> float:
    """The share of the completion's characters that are digits (a reward any policy can move)."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


def digit_share_flipped(completion: str, gold: str) -> float:
    """1 - digit_share: the group advantages of digit_share with their sign flipped."""
    return 1.0 - digit_share(completion, gold)


SLOW_STARTED = "slow reward: scoring"  # printed once, so a test interrupts the reward phase


def slow(completion: str, gold: str) -> float:
    """Half a second an item: a step that takes a while, to interrupt (its first call says so
    on stderr: the sampler's compile before it takes a varying time)."""
    if not getattr(slow, "started", False):
        slow.started = True
        print(SLOW_STARTED, file=sys.stderr, flush=True)
    time.sleep(0.5)
    return 0.0


def starts_with_digit(completion: str, gold: str) -> float:
    """1 if the completion starts with a digit: groups of a random policy split into all-equal
    and mixed ones (for rollout.filter_groups)."""
    return float(completion[:1].isdigit())


def row_number(completion: str, gold: str, record: dict, *, column: str) -> float:
    """The number in the data row's `column` (a reward.fns entry's key): a reward that reads the
    problem record, e.g. a difficulty or metadata column of the user's JSONL."""
    return float(record["row"][column])


def takes_two_args(completion: str) -> float:
    """A function with the wrong signature, for the config errors."""
    return 0.0
