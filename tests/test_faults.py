"""Faults: a kill -9 at each stage of an Orbax save, a truncated or missing checkpoint file, a
torn log line, a non-finite update, an unwritable or full run folder. Each leaves a run that
resumes from the newest good checkpoint, with a message naming what went wrong."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redjax import checkpoint, cli, logs, step
from redjax.config import Config, OptimCfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def warnings_of_redjax(caplog):
    """caplog, also when the CLI has made the redjax logger stop propagating."""
    logger = logging.getLogger("redjax")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.WARNING, logger="redjax"):
        yield caplog
    logger.removeHandler(caplog.handler)


def tiny_state(v: float) -> dict:
    w = jnp.arange(64, dtype=jnp.float32) + v
    return {"params": {"w": w, "b": -w[:8] * 0.0}, "step": jnp.int32(v)}


def values(state) -> dict:
    return jax.tree.map(np.asarray, state)


# Where the child dies while saving step 2 (after step 1 is complete), and the step a resume
# must then find: every stage before Orbax's rename leaves step 1, the rename itself step 2.
STAGES = {
    "tmp-folder": ("orbax.checkpoint._src.path.atomicity:AtomicRenameTemporaryPath.create", 1),
    "array-data": (
        "orbax.checkpoint._src.serialization.serialization:async_serialize_from_host",
        1,
    ),
    "array-metadata": (
        "orbax.checkpoint._src.handlers.base_pytree_checkpoint_handler:"
        "BasePyTreeCheckpointHandler._write_metadata_after_commits",
        1,
    ),
    "host-json": (
        "orbax.checkpoint._src.handlers.json_checkpoint_handler:JsonCheckpointHandler._save_fn",
        1,
    ),
    "commit-marker": ("orbax.checkpoint._src.path.atomicity:AtomicRenameTemporaryPath.finalize", 1),
    "renamed": ("orbax.checkpoint._src.path.async_path:rename", 2),
    "old-deleted": (
        "orbax.checkpoint._src.path.deleter:StandardCheckpointDeleter.delete",
        2,
    ),
}

CHILD = r"""
import asyncio, importlib, json, os, sys
sys.path.insert(0, {tests!r})
import jax  # imported once; each stage runs in a fork that starts JAX's backend itself
from redjax import checkpoint
from test_faults import tiny_state

def patch(target):
    module, attr = target.split(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    original = getattr(owner, name)
    after = name in ("create", "async_serialize_from_host", "rename")  # die once it happened

    if asyncio.iscoroutinefunction(original):
        async def patched(*a, **k):
            if name == "rename" and os.path.basename(str(a[1])) != "2":
                return await original(*a, **k)  # not yet the rename of the step folder
            if not after:
                os._exit(9)
            await original(*a, **k)
            os._exit(9)
    else:
        def patched(*a, **k):
            if not after:
                os._exit(9)
            original(*a, **k)
            os._exit(9)
    setattr(owner, name, patched)

def save_two(target, directory):
    ckpts = checkpoint.Checkpoints(directory, keep=1)
    ckpts.save(1, tiny_state(1.0), {{"step": 1}})
    ckpts.wait()
    patch(target)
    ckpts.save(2, tiny_state(2.0), {{"step": 2}})
    ckpts.wait()
    os._exit(3)  # the save finished without reaching the patched stage

codes = {{}}
for stage, target, directory in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        save_two(target, directory)
    codes[stage] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


def test_kill_at_each_orbax_save_stage_leaves_a_resumable_run(tmp_path):
    """At each stage of saving step 2 (step 1 complete), a forked child dies (exit 9). The
    folder then resumes from the step the stage implies, bit for bit, holds no temporary
    folder after reopening, and takes the next save."""
    code = CHILD.format(tests=os.path.join(ROOT, "tests"))
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    jobs = [(stage, target, str(tmp_path / stage)) for stage, (target, _) in STAGES.items()]
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(jobs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    assert codes == {stage: 9 for stage in STAGES}, out.stderr[-3000:]
    for stage, (_, want) in STAGES.items():
        directory = str(tmp_path / stage)
        ckpts = checkpoint.Checkpoints(directory, keep=1)
        got, state, host = ckpts.restore_latest(tiny_state(0.0))
        assert (got, host) == (want, {"step": want}), stage
        jax.tree.map(np.testing.assert_array_equal, values(state), values(tiny_state(want)))
        ckpts.save(want + 1, tiny_state(5.0), {"step": want + 1})  # the run goes on
        ckpts.close()
        left = [n for n in os.listdir(directory) if "tmp" in n]
        assert left == [], (stage, left)
        again = checkpoint.Checkpoints(directory, keep=1)
        got, state, _ = again.restore_latest(tiny_state(0.0))
        again.close()
        assert got == want + 1 and float(state["params"]["w"][0]) == 5.0, stage


def saved(directory: str, steps=(1, 2)) -> None:
    ckpts = checkpoint.Checkpoints(directory, keep=3)
    for s in steps:
        ckpts.save(s, tiny_state(float(s)), {"step": s})
    ckpts.close()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_corrupt_checkpoint_falls_back_naming_the_file(tmp_path, warnings_of_redjax, how):
    directory = str(tmp_path / "checkpoints")
    saved(directory)
    files = [
        os.path.join(root, n)
        for root, _, names in os.walk(os.path.join(directory, "2"))
        for n in names
        if n != checkpoint.MANIFEST
    ]
    bad = max(files, key=os.path.getsize)  # the array data
    if how == "truncate":
        with open(bad, "r+b") as f:
            f.truncate(os.path.getsize(bad) // 2)
    else:
        os.remove(bad)
    ckpts = checkpoint.Checkpoints(directory, keep=3)
    got, state, host = ckpts.restore_latest(tiny_state(0.0))
    assert (got, host) == (1, {"step": 1})
    jax.tree.map(np.testing.assert_array_equal, values(state), values(tiny_state(1.0)))
    text = warnings_of_redjax.text
    assert bad in text and ("truncated" if how == "truncate" else "missing") in text
    assert "falling back to step 1" in text
    # the bad one is out of the way: step 2 can be saved again and is then the latest
    assert os.listdir(tmp_path / "checkpoints-corrupt") and ckpts.manager.all_steps() == [1]
    ckpts.save(2, tiny_state(7.0), {"step": 2})
    ckpts.close()
    assert checkpoint.Checkpoints(directory, keep=3).restore_latest(tiny_state(0.0))[0] == 2


def test_unreadable_checkpoint_without_manifest_falls_back(tmp_path, warnings_of_redjax):
    """A checkpoint killed before its manifest was written: Orbax's own read error decides."""
    directory = str(tmp_path / "checkpoints")
    saved(directory)
    os.remove(os.path.join(directory, "2", checkpoint.MANIFEST))
    os.remove(os.path.join(directory, "2", "host", "metadata"))
    got, _, _ = checkpoint.Checkpoints(directory, keep=3).restore_latest(tiny_state(0.0))
    assert got == 1 and os.path.join(directory, "2") in warnings_of_redjax.text


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh

    directory = str(tmp_path / "checkpoints")
    ckpts = checkpoint.Checkpoints(directory, keep=3)
    ckpts.save(1, tiny_state(1.0), {"step": 1})
    ckpts.wait()

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full)
    with pytest.raises(checkpoint.RunFolderError) as e:
        ckpts.save(2, tiny_state(2.0), {"step": 2})
        ckpts.wait()
    msg = str(e.value)
    assert "checkpoint step 2" in msg and "No space left" in msg and "step 1 is intact" in msg
    monkeypatch.undo()
    got, state, _ = checkpoint.Checkpoints(directory, keep=3).restore_latest(tiny_state(0.0))
    assert got == 1
    jax.tree.map(np.testing.assert_array_equal, values(state), values(tiny_state(1.0)))


def test_full_disk_before_training(tmp_path, monkeypatch):
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=3)
    state = tiny_state(1.0)
    need = (64 + 8) * 4 + 4
    assert ckpts.check_space(state) == need
    full = shutil._ntuple_diskusage(10 * need, 9 * need + 1, need - 1)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda _p: full)
    with pytest.raises(checkpoint.RunFolderError, match="not enough free space"):
        ckpts.check_space(state)
    ckpts.close()


def test_unwritable_run_folder_is_a_clear_error(tmp_path, capsys):
    """Tests run as root, where chmod does not stop writes: a run folder under a regular file
    cannot be created by anyone."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as e:
        cli.main(["train", f"train.run_dir={blocker}/run", "train.steps=1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("redjax: error: run folder") and "is not writable" in err
    assert "Traceback" not in err


def test_logs_drop_torn_line_and_redone_rows(tmp_path, warnings_of_redjax):
    run = str(tmp_path)
    rows = [{"step": s, "loss": s / 10} for s in range(1, 6)] + [
        {"step": 5, "eval/heldout_acc": 0.5}
    ]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write('{"step": 6, "loss": 0.')  # a kill in the middle of a write
    assert logs.read_metrics(run) == rows  # readers skip the torn line while the run goes on
    # Resume from checkpoint 5 (the final one): the final evaluation is redone, once.
    logger = logs.Logger(run, start_step=5)
    assert "cut short by a kill" in warnings_of_redjax.text
    logger.log(5, {"eval/heldout_acc": 0.5})
    logger.close()
    assert logs.read_metrics(run) == rows
    # Resume from checkpoint 3: steps 4 and 5 are redone and written once each.
    logger = logs.Logger(run, start_step=3)
    for s in (4, 5):
        logger.log(s, {"loss": s / 10})
    logger.sync()
    logger.close()
    assert logs.read_metrics(run) == rows[:5]


def bigram_score(params, cfg, rows, chunk, mesh=None, temperature=1.0):
    """A stand-in for the transformer in `step.score` (same contract: log-probs and entropies
    of the response tokens), so the real train step compiles in a moment."""
    logits = params["w"][rows.prompt_ids[:, -1:]] + params["b"]  # [N, 1, V], one context
    logits = jnp.broadcast_to(logits, (*rows.resp_ids.shape, logits.shape[-1]))
    logp_all = jax.nn.log_softmax(logits / temperature)
    logp = jnp.take_along_axis(logp_all, rows.resp_ids[..., None], -1)[..., 0]
    return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, -1)


def test_non_finite_update_is_skipped_bit_for_bit(monkeypatch):
    """A NaN advantage makes the loss NaN: the train step leaves params and optimizer state
    as they were, bit for bit, and reports skipped=1; the next, finite, update applies."""
    import functools

    from test_step import host_rows

    monkeypatch.setattr(step, "score", bigram_score)
    tx = step.make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0, eps=1e-4), 10)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(96, 96)), jnp.float32), "b": jnp.zeros(96)}
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    sc = step.StepConfig.from_config(Config(), chunk=128, probe=True)
    fn = jax.jit(functools.partial(step.train_step, cfg=None, sc=sc, tx=tx))
    lam = jnp.float32(0.5)
    state, m = fn(state, host_rows(seed=0), lam)
    assert float(m["skipped"]) == 0.0 and np.isfinite(float(m["loss"]))
    before = jax.device_get(state)
    bad = host_rows(seed=1)
    bad.adv[2] = np.nan
    state, m = fn(state, bad, lam)
    assert float(m["skipped"]) == 1.0 and not np.isfinite(float(m["loss"]))
    after = jax.device_get(state)
    bits = lambda a: np.atleast_1d(np.asarray(a)).view(np.uint8)
    same = lambda a, b: np.testing.assert_array_equal(bits(a), bits(b))
    jax.tree.map(same, after["params"], before["params"])
    jax.tree.map(same, after["opt_state"], before["opt_state"])
    state, m = fn(state, host_rows(seed=1), lam)
    assert float(m["skipped"]) == 0.0
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), jax.device_get(state), after)
    assert all(jax.tree.leaves(moved["params"]))


def test_skip_guard_counts_and_stops_with_the_last_finite_metrics():
    guard = step.SkipGuard(limit=3)
    one = lambda skipped: [{"skipped": np.float32(skipped)}]
    assert guard.count(one(0)) == 0
    guard.check(1, {"loss": 0.25, "grad_norm": 1.5, "reward": 0.75})
    assert guard.count(one(1) + one(1)) == 2  # two minibatch updates of iteration 2
    guard.check(2, {"loss": float("nan")})
    assert guard.count(one(0)) == 0 and guard.run == 0  # a finite update ends the run of skips
    guard.check(3, {"loss": 0.5, "grad_norm": 2.0})
    guard.count(one(1))
    guard.check(4, {})
    restored = step.SkipGuard(limit=3)
    restored.load_state_dict(guard.state_dict())  # as after a resume
    assert (restored.total, restored.run) == (3, 1)
    guard.count(one(1))
    guard.check(5, {})
    guard.count(one(1))
    with pytest.raises(step.NonFiniteError) as e:
        guard.check(6, {})
    msg = str(e.value)
    assert msg.startswith("step 6: 3 updates in a row skipped") and guard.total == 5
    assert "train.max_skipped_steps=3" in msg and "last finite update at step 3: loss=0.5" in msg


def test_a_distribution_metric_is_logged_as_quantiles(tmp_path):
    """A 1-D array (the policy shift over prompts) becomes its 10/50/90% quantiles in
    metrics.jsonl (numpy's, linear interpolation) and a TensorBoard histogram; empty: NaN."""
    run = str(tmp_path)
    logger = logs.Logger(run)
    shift = np.array([0.0, 0.25, 1.0, 0.5, 0.75])
    logger.log(1, {"loss": 0.5, "shift": shift})
    logger.log(2, {"loss": 0.5, "shift": np.zeros(0)})
    logger.close()
    first, second = logs.read_metrics(run)
    assert (first["shift_p10"], first["shift_p50"], first["shift_p90"]) == (0.1, 0.5, 0.9)
    assert "shift" not in first and np.isnan(second["shift_p50"])
    assert [(step, h.num) for step, h in tb_histograms(os.path.join(run, "tb"), "shift")] == [
        (1, 5)
    ]


def tb_histograms(folder: str, tag: str) -> list:
    """(step, HistogramProto) of `tag` in the TensorBoard event files of `folder` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + n])
            i += 16 + n
            out += [(event.step, v.histo) for v in event.summary.value if v.tag == tag]
    return out
