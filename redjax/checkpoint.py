"""Orbax checkpoints of a run: train state (params, or with LoRA the adapters; optimizer, step)
plus host state as JSON (controller, data iterator, RNG seed, metrics position, a LoRA base).
Saves are atomic: Orbax writes `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` once
every file is written, so a kill at any moment leaves the previous checkpoints whole;
unfinished temporary folders are removed at the next start. A checkpoint that is unreadable on
disk (truncated or missing file) is moved to `checkpoints-corrupt/` and resume falls back to
the newest good one. Keeps the last K and works from every host of a slice. Reading a model out
of a run folder is redjax.runs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from redjax import distributed

log = logging.getLogger("redjax")


class RunFolderError(ValueError):
    """The run folder cannot take a checkpoint (unwritable, full). A ValueError, so the CLI
    prints it as one line."""


class Checkpoints:
    """The checkpoints/ folder of a run."""

    def __init__(self, directory: str, *, keep: int):
        """`keep`: checkpoints kept on disk (train.keep); only saves delete the older ones."""
        self.directory = os.path.abspath(directory)
        self.keep = keep
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True
            ),
        )
        self.saving: int | None = None  # step of the save in flight (for error messages)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, host: dict) -> None:
        """Write one checkpoint (asynchronously; `wait` blocks until it is on disk). A failed
        write (disk full, permissions) raises RunFolderError; earlier checkpoints stay intact."""
        with _io_errors(self):  # the previous save's background error, if any, surfaces here
            self.manager.check_for_errors()
        self._write_manifests()
        self.saving = step
        with _io_errors(self):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host)
                ),
                force=True,
            )

    def restore(self, step: int, like: Any) -> tuple[Any, dict]:
        """(state, host) of checkpoint `step`; arrays take the shapes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["host"]

    def restore_latest(self, like: Any) -> tuple[int, Any, dict | None]:
        """(step, state, host) of the newest checkpoint that reads back whole on every host;
        (0, like, None) when there is none. Unreadable ones are reported by path and moved to
        checkpoints-corrupt/, so a later save of the same step starts clean."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = os.path.join(self.directory, str(step))
            error = check_manifest(path)
            try:
                if error is None:
                    state, host = self.restore(step, like)
            except Exception as e:  # noqa: BLE001 - any failure to read means a bad checkpoint
                error = _describe(e)
            if not distributed.global_any(error is not None):  # one verdict for all hosts
                self._write_manifests()  # it read back whole: record its files if not yet done
                return step, state, host
            self._set_aside(step, error)
        return 0, like, None

    def _write_manifests(self) -> None:
        """Record the files and sizes of every finished checkpoint that has no manifest yet
        (process 0; a checkpoint is finished once Orbax has renamed it to its step)."""
        if jax.process_index() != 0:
            return
        for step in self.manager.all_steps():
            path = os.path.join(self.directory, str(step))
            if os.path.isdir(path) and not os.path.exists(os.path.join(path, MANIFEST)):
                write_manifest(path)

    def _set_aside(self, step: int, error: str | None) -> None:
        """Move an unreadable checkpoint out of the way (process 0), with a warning naming it."""
        path = os.path.join(self.directory, str(step))
        dest = os.path.join(
            os.path.dirname(self.directory), "checkpoints-corrupt", f"{step}-{time.time_ns()}"
        )
        why = error if error is not None else "unreadable on another host"
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(path, dest)
        distributed.barrier(f"redjax-set-aside-{step}")
        self.manager.reload()
        older = [s for s in self.manager.all_steps() if s < step]
        then = f"falling back to step {max(older)}" if older else "starting from step 0"
        log.warning("checkpoint %s is corrupt (%s); moved to %s; %s", path, why, dest, then)

    def saved_host(self) -> dict | None:
        """The host state (config, step, controller...) of the newest checkpoint whose host part
        reads, without its arrays; None when the folder has no checkpoint."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                args = ocp.args.Composite(host=ocp.args.JsonRestore())
                return dict(self.manager.restore(step, args=args)["host"], step=step)
            except Exception:  # noqa: BLE001 - unreadable: restore_latest sets it aside later
                continue
        return None

    def restore_params(self, shapes: Any, step: int | None = None) -> Any:
        """Only the parameters of a checkpoint (latest by default) onto this process's first
        device, whatever topology saved it: for export and evaluation. `shapes` gives the
        parameter tree (ShapeDtypeStructs; their dtype is the one restored)."""
        step = self.latest() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}")
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        item = {"params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes)}
        args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=dev, dtype=s.dtype), item)
        restore = ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)
        out = self.manager.restore(step, args=ocp.args.Composite(state=restore))
        return out["state"]["params"]

    def wait(self) -> None:
        """Block until the save in flight is on disk (RunFolderError if it failed)."""
        with _io_errors(self):
            self.manager.wait_until_finished()
        self._write_manifests()

    def close(self) -> None:
        self.wait()
        self.manager.close()

    def check_space(self, state: Any) -> int:
        """Fail before training when the folder cannot hold one more checkpoint of `state`;
        warn when it cannot hold `keep` + 1. Returns the estimated bytes of one checkpoint."""
        need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        mib = lambda n: f"{n / 2**20:.1f} MiB"
        if free < need:
            raise RunFolderError(
                f"not enough free space in {self.directory}: a checkpoint needs about "
                f"{mib(need)}, {mib(free)} free"
            )
        keep = self.keep or 1
        if free < need * (keep + 1):
            log.warning(
                "%s has %s free; %d checkpoints of %s need more",
                self.directory,
                mib(free),
                keep + 1,
                mib(need),
            )
        return need


@contextlib.contextmanager
def _io_errors(ckpts: Checkpoints) -> Iterator[None]:
    """Turn an OSError raised by a save (even one wrapped by Orbax's background thread) into a
    RunFolderError naming the folder, the step and the last complete checkpoint."""
    try:
        yield
    except Exception as error:
        os_error = _find_os_error(error)
        if os_error is None:
            raise
        ckpts.manager.reload()
        done = ckpts.manager.latest_step()
        kept = f"checkpoint step {done} is intact" if done else "there is no earlier checkpoint"
        raise RunFolderError(
            f"could not write checkpoint step {ckpts.saving} to {ckpts.directory}: {os_error}; "
            f"{kept}. Free space or fix the folder, then re-run the same command to resume."
        ) from error


MANIFEST = "redjax_files.json"  # {relative path: size} of a finished checkpoint's files


def write_manifest(path: str) -> None:
    """Write the manifest of checkpoint folder `path` atomically (temporary file, rename)."""
    sizes = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            if not name.startswith(MANIFEST):  # itself, or a temporary left by a kill
                sizes[os.path.relpath(full, path)] = os.path.getsize(full)
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(sizes, f)
    os.replace(tmp, os.path.join(path, MANIFEST))


def check_manifest(path: str) -> str | None:
    """What is wrong with checkpoint folder `path` against its manifest (a missing or
    truncated file, by path), or None when it matches or has no readable manifest."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            sizes = json.load(f)
    except (OSError, ValueError):
        return None
    for rel, size in sorted(sizes.items()):
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            return f"file {full} is missing"
        if os.path.getsize(full) != size:
            return f"file {full} is truncated: {os.path.getsize(full)} bytes of {size}"
    return None


def _find_os_error(error: BaseException) -> OSError | None:
    """The OSError behind an exception (itself, its cause or its context), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _describe(error: Exception) -> str:
    """One line: the exception's type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def check_writable(run_dir: str) -> None:
    """Fail before anything else when the run folder cannot be created or written."""
    probe = os.path.join(run_dir, f".write-test-{jax.process_index()}")
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"redjax")
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise RunFolderError(f"run folder {run_dir} is not writable: {e}") from None
