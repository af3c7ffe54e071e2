"""A reward worker process: `python -m redjax.rewards._worker READ_FD WRITE_FD`.

It imports only the rewards (never JAX). Its first message is (entries, extract, think), the
reward list to load (redjax.rewards.combine); it answers ("ready", None) or ("error",
message), then answers (index, completion, gold, record) requests with (index, reward,
correct, error) until it reads None or its parent goes away.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from multiprocessing.connection import Connection

from redjax.rewards.combine import bind, score_item


def _exit_with_parent(interval: float = 1.0) -> None:
    """Exit when the parent dies, even in the middle of a long item (a daemon thread polls)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    read_fd, write_fd = argv
    for fd in (int(read_fd), int(write_fd)):
        os.set_inheritable(fd, False)  # a process the reward starts must not hold the pipes
    rx = Connection(int(read_fd), writable=False)
    tx = Connection(int(write_fd), readable=False)
    _exit_with_parent()
    try:
        bound = bind(*rx.recv())
    except Exception as err:
        tx.send(("error", str(err)))
        return 1
    tx.send(("ready", None))
    while True:
        try:
            request = rx.recv()
        except (EOFError, OSError):
            return 0
        if request is None:
            return 0
        index, completion, gold, record = request
        tx.send((index, *score_item(bound, completion, gold, record)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
