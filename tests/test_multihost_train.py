"""The full trainer on 2 processes (jax.distributed on localhost, 2 CPU devices each): it runs,
saves from both hosts, and a resumed 2-process run reaches the same metrics and parameters
as an uninterrupted one."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from test_train import TINY, final_params, metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_2_hosts(run_dir, cache, steps):
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
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    return outs


def test_two_hosts_train_and_resume(tmp_path):
    cache = tmp_path / "jax_cache"
    ref, run = str(tmp_path / "ref"), str(tmp_path / "run")
    train_2_hosts(ref, cache, 4)
    train_2_hosts(run, cache, 2)
    outs = train_2_hosts(run, cache, 4)
    assert all("resumed" in out and "from step 2" in out for out in outs)
    rows = metrics(ref)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    # rollout tokens of both hosts' prompts: 4 prompts x 2 samples, at least 1 token each
    assert all(r["tokens_on"] >= 8 for r in rows if "loss" in r)
    # the 2-step run ended with an evaluation that the 4-step run does not have: compare steps
    assert [r for r in metrics(run) if "loss" in r] == [r for r in rows if "loss" in r]
    jax.tree.map(np.testing.assert_array_equal, final_params(run), final_params(ref))
