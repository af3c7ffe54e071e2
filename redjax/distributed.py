"""Multi-host start-up with JAX's own multi-controller runtime (jax.distributed).

One process per host. `initialize` starts the runtime when the command line or the
environment says this is a multi-host run:
  - explicit flags: --coordinator HOST:PORT --num-processes N --process-id I
  - the same as environment variables: REDJAX_COORDINATOR, REDJAX_NUM_PROCESSES,
    REDJAX_PROCESS_ID (what tpu/jobset.yaml sets on GKE)
  - TPU VM slices and GKE TPU pods: jax.distributed.initialize() finds everything itself
    (set REDJAX_DISTRIBUTED=1 to ask for it)
Single-host runs (the default) do nothing here.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

log = logging.getLogger("redjax")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Start jax.distributed if this is a multi-host run; returns whether it did."""
    env = os.environ
    coordinator = coordinator or env.get("REDJAX_COORDINATOR")
    if num_processes is None and env.get("REDJAX_NUM_PROCESSES"):
        num_processes = int(env["REDJAX_NUM_PROCESSES"])
    if process_id is None and env.get("REDJAX_PROCESS_ID"):
        process_id = int(env["REDJAX_PROCESS_ID"])
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    auto = env.get("REDJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes")
    if not explicit and not auto:
        return False
    if explicit and (coordinator is None or num_processes is None or process_id is None):
        raise ValueError(
            "multi-host: give all of coordinator, num_processes and process_id "
            f"(got {coordinator!r}, {num_processes!r}, {process_id!r})"
        )
    if explicit and not 0 <= process_id < num_processes:
        raise ValueError(f"multi-host: process_id {process_id} not in [0, {num_processes})")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def gather(x: np.ndarray) -> np.ndarray:
    """Stack x from every process along a new first axis (x itself, [1, ...], on one host).
    Shapes must match across processes."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x))


def global_max(n: int) -> int:
    """The largest of an integer over all processes (shapes that every host must agree on)."""
    return int(gather(np.int64(n)).max())


def global_any(flag: bool) -> bool:
    return bool(gather(np.bool_(flag)).any())


def barrier(name: str) -> None:
    """Wait until every process reaches this point (nothing on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Stopped(SystemExit):
    """A run stopped by SIGTERM / SIGINT after saving its checkpoint: exits 128 + the signal
    number (143, 130), so schedulers (JobSet, tpu/run.sh) see an unfinished run and restart it;
    a finished run exits 0."""

    def __init__(self, signum: int):
        super().__init__(128 + int(signum))
