"""Verifier: score completions in worker processes, with a time-out per item.

Workers are fresh interpreters started with `python -m redjax.rewards._worker` (fork + exec,
never a bare fork of the trainer, whose JAX runtime is not fork-safe). This is what the
multiprocessing "spawn" context does, minus its re-import of the parent's __main__: a
spawned worker would re-run the trainer script's imports (JAX included); ours import only
the reward. Requests and results travel over two pipes per worker as pickled messages.

An item that runs past `timeout` seconds scores 0 and its worker is killed (with its process
group) and restarted; a worker that dies (os._exit, a segfault) is restarted and its item
scores 0; a reward that raises scores 0. Counters `timeouts`, `crashes`, `failures`,
`restarts` and `last_error` feed the trainer's metrics. The pool is kept across calls.

Reward per item: reward(completion, gold) + format_weight * format_reward(completion, think);
correct per item: reward(completion, gold) >= 0.5 alone (a format bonus never makes it right).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from redjax.config import RewardCfg

from redjax.rewards._worker import score_one
from redjax.rewards.registry import RewardFn, get_reward_fn, reward_path

START_TIMEOUT = 60.0  # seconds a worker may take to import its reward
MAX_START_FAILURES = 3  # consecutive start failures per worker before giving up


class _Worker:
    """One worker process and its request / result pipes."""

    def __init__(self, name: str, format_weight: float, think: bool, env: dict[str, str]):
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        args = [name, str(req_r), str(res_w), repr(float(format_weight)), "1" if think else "0"]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "redjax.rewards._worker", *args],
                pass_fds=(req_r, res_w),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: a kill takes its children too
            )
        except BaseException:
            os.close(req_w)
            os.close(res_r)
            raise
        finally:
            os.close(req_r)
            os.close(res_w)
        self.tx = Connection(req_w, readable=False)
        self.rx = Connection(res_r, writable=False)
        self.ready = False
        self.item: int | None = None
        self.deadline = time.monotonic() + START_TIMEOUT

    def kill(self) -> None:
        """Kill the process group at once and release the pipes."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.tx.close()
        self.rx.close()


def _stop_all(workers: list[_Worker]) -> None:
    """Kill every worker: they hold no state worth a graceful exit."""
    for w in workers:
        w.kill()
    workers.clear()


def _worker_env() -> dict[str, str]:
    """The parent's environment with its sys.path, so workers import what the parent can."""
    paths = [p or os.getcwd() for p in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


@dataclasses.dataclass
class Judged:
    """What the verifier says of each completion: its reward and whether its answer is right."""

    reward: np.ndarray  # float32 [N]: the reward function's value + the format bonus
    correct: np.ndarray  # bool [N]: the reward function's value alone >= 0.5


class Verifier:
    """Scores (completion, gold) pairs with a named reward in a pool of worker processes.

    reward: "math", "format", "format_think", "package.module:function", or an importable
      function (a lambda or a function defined in __main__ needs workers=0).
    workers: worker processes; 0 scores in this process, without time-outs (for debugging).
    timeout: seconds allowed per item; past it the item scores 0 and its worker restarts.
    format_weight, think_format: total = reward + format_weight * format_reward(completion,
      think=think_format), with format_reward in {0, 1} (answer boxed, "<think>" form).
    extract: how the built-in "math" / "math_verify" rewards find the final answer: "boxed"
      (the last \\boxed{}) or "any" (wherever the model puts it); see redjax.rewards.extract.
    No defaults: a run's settings come from its reward section (`Verifier.from_config`).
    """

    @classmethod
    def from_config(cls, rw: RewardCfg) -> Verifier:
        """The pool of a config's reward section."""
        return cls(
            rw.fn,
            workers=rw.workers,
            timeout=rw.timeout,
            format_weight=rw.format_weight,
            think_format=rw.think_format,
            extract=rw.extract,
        )

    def __init__(
        self,
        reward: str | RewardFn,
        *,
        workers: int,
        timeout: float,
        format_weight: float,
        think_format: bool,
        extract: str,
    ):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"Verifier workers must be an integer >= 0, got {workers!r}")
        if not timeout > 0:
            raise ValueError(f"Verifier timeout must be > 0 seconds, got {timeout!r}")
        if not format_weight >= 0:
            raise ValueError(f"Verifier format_weight must be >= 0, got {format_weight!r}")
        if workers == 0 and callable(reward):
            self.name, self._fn = getattr(reward, "__name__", repr(reward)), reward
        else:
            self._fn = get_reward_fn(reward_path(reward), extract)  # a bad name fails here
            self.name = reward_path(self._fn)  # "math" + extract="any": its own function
        self.workers, self.timeout = workers, float(timeout)
        self.format_weight, self.think_format = float(format_weight), bool(think_format)
        self.timeouts = self.crashes = self.failures = self.restarts = 0
        self.last_error: str | None = None
        self._start_failures = 0
        self._env = _worker_env() if workers else {}
        self._pool: list[_Worker] = [self._spawn() for _ in range(workers)]
        self._finalizer = weakref.finalize(self, _stop_all, self._pool)

    def _spawn(self) -> _Worker:
        return _Worker(self.name, self.format_weight, self.think_format, self._env)

    def _restart(self, k: int) -> None:
        self._pool[k].kill()
        self._pool[k] = self._spawn()
        self.restarts += 1

    def stats(self) -> dict[str, int]:
        """Counters for metrics: time-outs, worker crashes, reward errors, restarts."""
        return {
            "timeouts": self.timeouts,
            "crashes": self.crashes,
            "failures": self.failures,
            "restarts": self.restarts,
        }

    def score(self, completions: Sequence[str], golds: Sequence[str]) -> np.ndarray:
        """float32 reward per (completion, gold); bad completions score 0 and never raise."""
        return self.judge(completions, golds).reward

    def judge(self, completions: Sequence[str], golds: Sequence[str]) -> Judged:
        """The reward (with the format bonus) and the correctness (without it) of each
        (completion, gold); an item that fails or times out is 0 and wrong."""
        completions, golds = list(completions), list(golds)
        if len(completions) != len(golds):
            raise ValueError(
                f"Verifier.score: {len(completions)} completions but {len(golds)} golds"
            )
        out = Judged(np.zeros(len(completions), np.float32), np.zeros(len(completions), bool))
        if self.workers == 0:
            for i, (c, g) in enumerate(zip(completions, golds, strict=True)):
                self._record(
                    out, i, *score_one(self._fn, c, g, self.format_weight, self.think_format)
                )
            return out
        if not self._finalizer.alive:
            raise RuntimeError("Verifier.score called after close()")
        pending = collections.deque(range(len(completions)))
        sends = collections.Counter()
        while pending or any(w.item is not None for w in self._pool):
            for k, w in enumerate(self._pool):
                if w.ready and w.item is None and pending:
                    i = pending.popleft()
                    self._dispatch(k, i, completions[i], golds[i], pending, sends)
            active = [w for w in self._pool if not w.ready or w.item is not None]
            if not active:
                continue
            delay = max(0.0, min(w.deadline for w in active) - time.monotonic())
            ready = wait([w.rx for w in active], timeout=delay)
            for k, w in enumerate(list(self._pool)):
                if w.rx in ready:
                    self._receive(k, out)
            now = time.monotonic()
            for k, w in enumerate(self._pool):
                if w.item is not None and now >= w.deadline:
                    self.timeouts += 1  # the item stays 0 and wrong
                    self._restart(k)
                elif not w.ready and now >= w.deadline:
                    self._start_failed(k, f"did not start within {START_TIMEOUT} s")
        return out

    def _record(self, out: Judged, i: int, reward: float, correct: bool, error: str | None):
        if error is not None:
            self.failures += 1
            self.last_error = error
        out.reward[i], out.correct[i] = reward, correct

    def _dispatch(self, k, i, completion, gold, pending, sends) -> None:
        """Send item i to idle worker k; a dead worker is restarted and the item re-queued once."""
        w = self._pool[k]
        sends[i] += 1
        try:
            w.tx.send((i, completion, gold))
        except (OSError, EOFError):  # the worker died while idle
            self.crashes += 1
            self._restart(k)
            if sends[i] < 2:
                pending.appendleft(i)
            return
        except Exception as err:  # cannot be pickled: a bad completion, scores 0
            self.failures += 1
            self.last_error = f"{type(err).__name__}: {err}"[:500]
            return
        w.item, w.deadline = i, time.monotonic() + self.timeout

    def _receive(self, k: int, out: Judged) -> None:
        w = self._pool[k]
        try:
            message = w.rx.recv()
        except (EOFError, OSError):  # the worker died
            if w.item is not None:  # the item stays 0 and wrong
                self.crashes += 1
                self._restart(k)
            else:
                self._start_failed(k, f"exited with code {w.proc.poll()} while starting")
            return
        if not w.ready:
            if message[0] != "ready":
                self.close()
                raise RuntimeError(f"reward worker cannot load {self.name!r}: {message[1]}")
            w.ready, self._start_failures = True, 0
            return
        self._record(out, *message)
        w.item = None

    def _start_failed(self, k: int, why: str) -> None:
        self._start_failures += 1
        if self._start_failures > MAX_START_FAILURES * self.workers:
            self.close()
            raise RuntimeError(f"reward workers for {self.name!r} keep failing to start: {why}")
        self._restart(k)

    def close(self) -> None:
        """Stop the worker processes (idempotent); the Verifier cannot score afterwards."""
        self._finalizer()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
