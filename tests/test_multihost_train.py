"""The full trainer on 2 processes (jax.distributed on localhost, 2 CPU devices each): it runs,
saves from both hosts, and when one process gets SIGTERM (a preempted host) both save the same
step and a resumed 2-process run reaches the same metrics and parameters as an uninterrupted
one."""

import os
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
from test_train import TINY, final_params, metrics, wait_for_step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_2_hosts(run_dir, cache, steps, preempt=False):
    """Both processes of a 2-host run; with `preempt`, process 1 gets SIGTERM once step 1 is
    logged. Returns the outputs (asserting exit 0, or 143 for a preempted run)."""
    port = free_port()
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redjax.cli",
                "train",
                *TINY,
                f"train.steps={steps}",
                "train.save_every=2",
                f"train.run_dir={run_dir}",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    if preempt:
        wait_for_step(run_dir, 1, procs[0])
        procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == (128 + signal.SIGTERM if preempt else 0), out
    return outs


def test_two_hosts_train_and_resume(tmp_path):
    cache = tmp_path / "jax_cache"
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    train_2_hosts(ref, cache, 4)
    stopped = train_2_hosts(run, cache, 4, preempt=True)
    steps = [re.findall(r"stopped by a signal at step (\d+)", out) for out in stopped]
    assert steps[0] == steps[1] and len(steps[0]) == 1, stopped  # both hosts, the same step
    at = int(steps[0][0])
    assert 1 <= at < 4 and str(at) in os.listdir(os.path.join(run, "checkpoints"))
    outs = train_2_hosts(run, cache, 4)
    assert all(f"from step {at}" in out for out in outs)
    rows = metrics(ref)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    # rollout tokens of both hosts' prompts: 4 prompts x 2 samples, at least 1 token each
    assert all(r["tokens_on"] >= 8 for r in rows if "loss" in r)
    assert metrics(run) == rows
    jax.tree.map(np.testing.assert_array_equal, final_params(run), final_params(ref))
