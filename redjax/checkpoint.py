"""Orbax checkpoints of a run: train state (params, optimizer, step) plus host state as JSON
(controller, data iterator, RNG seed, metrics position). Saves are atomic (Orbax writes a
temporary folder and renames it), keep the last K, and work from every host of a slice.
Reading a model out of a run folder is redjax.runs."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """The checkpoints/ folder of a run."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, host: dict) -> None:
        """Write one checkpoint (asynchronously; `wait` blocks until it is on disk)."""
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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
