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

Reward per item: the weighted sum of the reward list (redjax.rewards.combine: reward.fns, or
reward.fn + format_weight * format); correct per item: the deciding entry's value >= 0.5 alone
(no other entry's weight ever makes it right). The time-out bounds the whole list of an item.
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

from redjax.rewards import combine
from redjax.rewards.extract import EXTRACT_MODES
from redjax.rewards.registry import RewardFn, reward_path

START_TIMEOUT = 60.0  # seconds a worker may take to import its reward
MAX_START_FAILURES = 3  # consecutive start failures per worker before giving up


class _Worker:
    """One worker process and its request / result pipes."""

    def __init__(self, setup: tuple, env: dict[str, str]):
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        args = [str(req_r), str(res_w)]
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
        self.tx.send(setup)  # (entries, extract, think): what it loads before it is ready
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


def _path(e: combine.Entry) -> str:
    """An entry's function as a name a worker imports; a ValueError naming the entry if it
    cannot."""
    try:
        return reward_path(e.fn)
    except ValueError as err:
        raise ValueError(f"{e.where}: {err}") from None


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

    reward: np.ndarray  # float32 [N]: the weighted sum of the reward list
    correct: np.ndarray  # bool [N]: the deciding entry's value alone >= 0.5


class Verifier:
    """Scores (completion, gold, record) items with a reward list in a pool of worker processes.

    reward: a reward.fns list of entries {fn, weight[, correct, keys]} (redjax.rewards.combine),
      or one reward: "math", "format", "package.module:function" or an importable function (a
      lambda or a function defined in __main__ needs workers=0), which decides correctness.
    workers: worker processes; 0 scores in this process, without time-outs (for debugging).
    timeout: seconds allowed per item (its whole list); past it the item scores 0 and its worker
      restarts.
    format_weight: with one reward, total = reward + format_weight * format_reward (0 with a
      list, which gives the format reward an entry). think_format: the "format" reward asks for
      the "<think>" form too. format_reward is in {0, 1} (answer boxed).
    extract: how the built-in "math" / "math_verify" rewards find the final answer: "boxed"
      (the last \\boxed{}) or "any" (wherever the model puts it); see redjax.rewards.extract.
    No defaults: a run's settings come from its reward section (`Verifier.from_config`).
    """

    @classmethod
    def from_config(cls, rw: RewardCfg) -> Verifier:
        """The pool of a config's reward section."""
        combine.section_entries(rw)  # reward.fns beside a changed reward.fn is refused
        return cls(
            rw.fns or rw.fn,
            workers=rw.workers,
            timeout=rw.timeout,
            format_weight=rw.format_weight,
            think_format=rw.think_format,
            extract=rw.extract,
        )

    def __init__(
        self,
        reward: str | RewardFn | Sequence[dict],
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
        if extract not in EXTRACT_MODES:
            raise ValueError(f"Verifier extract must be one of {EXTRACT_MODES}, got {extract!r}")
        self.entries = combine.entries(reward, format_weight)
        if workers:  # what a worker can import: a function becomes its path
            self.entries = [dataclasses.replace(e, fn=_path(e)) for e in self.entries]
        self._bound = combine.bind(self.entries, extract, think_format)  # a bad name fails here
        self._takes_record = any(b.takes_record for b in self._bound)
        self._setup = (self.entries, extract, bool(think_format))
        self.name = combine.describe(self.entries)
        self.workers, self.timeout = workers, float(timeout)
        self.timeouts = self.crashes = self.failures = self.restarts = 0
        self.last_error: str | None = None
        self._start_failures = 0
        self._env = _worker_env() if workers else {}
        self._pool: list[_Worker] = [self._spawn() for _ in range(workers)]
        self._finalizer = weakref.finalize(self, _stop_all, self._pool)

    def _spawn(self) -> _Worker:
        return _Worker(self._setup, self._env)

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

    def score(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        records: Sequence[dict] | None = None,
    ) -> np.ndarray:
        """float32 reward per (completion, gold, record); bad completions score 0, never raise."""
        return self.judge(completions, golds, records).reward

    def judge(
        self,
        completions: Sequence[str],
        golds: Sequence[str],
        records: Sequence[dict] | None = None,
    ) -> Judged:
        """The reward (the weighted sum) and the correctness (the deciding entry alone) of each
        (completion, gold, record); an item that fails or times out is 0 and wrong. records:
        each completion's problem record (the data pipeline's batch["record"]), for functions
        that take one; {} when not given."""
        completions, golds = list(completions), list(golds)
        records = [{}] * len(completions) if records is None else list(records)
        if not len(completions) == len(golds) == len(records):
            raise ValueError(
                f"Verifier.score: {len(completions)} completions but {len(golds)} golds and "
                f"{len(records)} records"
            )
        if not self._takes_record:  # nothing to send: no function reads it
            records = [None] * len(completions)
        out = Judged(np.zeros(len(completions), np.float32), np.zeros(len(completions), bool))
        if self.workers == 0:
            for i, item in enumerate(zip(completions, golds, records, strict=True)):
                self._record(out, i, *combine.score_item(self._bound, *item))
            return out
        if not self._finalizer.alive:
            raise RuntimeError("Verifier.score called after close()")
        pending = collections.deque(range(len(completions)))
        sends = collections.Counter()
        while pending or any(w.item is not None for w in self._pool):
            for k, w in enumerate(self._pool):
                if w.ready and w.item is None and pending:
                    i = pending.popleft()
                    item = (i, completions[i], golds[i], records[i])
                    self._dispatch(k, item, pending, sends)
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

    def _dispatch(self, k, item, pending, sends) -> None:
        """Send item (i, completion, gold, record) to idle worker k; a dead worker is restarted
        and the item re-queued once."""
        w, i = self._pool[k], item[0]
        sends[i] += 1
        try:
            w.tx.send(item)
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
