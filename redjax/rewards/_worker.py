"""A reward worker process: `python -m redjax.rewards._worker NAME READ_FD WRITE_FD WEIGHT THINK`.

It imports only the reward (never JAX), answers ("ready", None) or ("error", message), then
answers (index, completion, gold) requests with (index, reward, correct, error) until it reads
None or its parent goes away.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from multiprocessing.connection import Connection

from redjax.rewards.extract import format_reward
from redjax.rewards.registry import RewardFn, get_reward_fn

CORRECT = 0.5  # a reward function's value from which its answer counts as correct


def score_one(
    fn: RewardFn, completion: str, gold: str, format_weight: float = 0.0, think: bool = False
) -> tuple[float, bool, str | None]:
    """(reward, correct, error message or None): reward = fn + format_weight * format; correct
    = fn alone >= 0.5, so a format bonus never makes a wrong answer correct. (0, False) if fn
    fails."""
    try:
        value = float(fn(completion, gold))
        if not math.isfinite(value):
            return 0.0, False, f"reward returned {value}"
        correct = value >= CORRECT
        if format_weight:
            value += format_weight * format_reward(completion, think)
        return value, correct, None
    except Exception as err:
        return 0.0, False, f"{type(err).__name__}: {err}"[:500]


def _exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the parent dies, even in the middle of a long item (a daemon thread polls)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    name, read_fd, write_fd, weight, think = argv
    for fd in (int(read_fd), int(write_fd)):
        os.set_inheritable(fd, False)  # a process the reward starts must not hold the pipes
    rx = Connection(int(read_fd), writable=False)
    tx = Connection(int(write_fd), readable=False)
    _exit_with_parent()
    try:
        fn = get_reward_fn(name)
    except Exception as err:
        tx.send(("error", str(err)))
        return 1
    tx.send(("ready", None))
    format_weight, think_format = float(weight), think == "1"
    while True:
        try:
            request = rx.recv()
        except (EOFError, OSError):
            return 0
        if request is None:
            return 0
        index, completion, gold = request
        tx.send((index, *score_one(fn, completion, gold, format_weight, think_format)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
