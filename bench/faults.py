"""Kill -9 at random moments, resume, and check nothing is lost: the run must end bit for bit
where an uninterrupted one ends.

    python bench/faults.py                 # 20 kills, the default task for 40 steps (CPU)
    python bench/faults.py --kills 4 --seed 1 --jobs 1

Runs the built-in default task (a tiny model; 40 steps, a checkpoint every 5, an evaluation
every 10) once uninterrupted, then N times with a SIGKILL at a random step in one phase
(sampling, update, evaluation, or inside an Orbax checkpoint save at one of its write stages),
each time re-running the same command until it exits 0. Compares the final parameters and
optimizer state (bit for bit), the controller and data-loader state, metrics.jsonl and
samples.jsonl (without timings) with the uninterrupted run, and prints a markdown table.

The kill is armed inside the trainer process (this file, run as `--child`, wraps a few redjax
and Orbax functions and starts `redjax train`): at the chosen step and phase a timer fires after
a random delay, records where the process then is, and sends SIGKILL to it, so the table shows
where each kill actually landed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, SAVE_EVERY, EVAL_EVERY = 40, 5, 10
OVERRIDES = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "rollout.prompts=4",
    "rollout.group_size=2",
    "rollout.max_new_tokens=16",
    "data.builtin_train=200",
    "optim.warmup_steps=5",
    "eval.problems=8",
    "eval.samples_every=5",
    "reward.workers=1",
    f"eval.every={EVAL_EVERY}",
    f"train.steps={STEPS}",
    f"train.save_every={SAVE_EVERY}",
]
PHASES = ("sampling", "update", "evaluation", "checkpoint")
DELAYS = {"sampling": 0.01, "update": 0.02, "evaluation": 0.05}  # s, a kill's random delay
# Orbax write stages a kill inside a save can hit: (module, attribute path, die after the call).
ORBAX_STAGES = {
    "tmp-folder": ("orbax.checkpoint._src.path.atomicity", "AtomicRenameTemporaryPath.create", 1),
    "array-data": (
        "orbax.checkpoint._src.serialization.serialization",
        "async_serialize_from_host",
        1,
    ),
    "host-json": (
        "orbax.checkpoint._src.handlers.json_checkpoint_handler",
        "JsonCheckpointHandler._save_fn",
        0,
    ),
    "commit": ("orbax.checkpoint._src.path.atomicity", "AtomicRenameTemporaryPath.finalize", 0),
}
VOLATILE = ("time/", "tokens_per_sec", "verifier_timeouts")


# ----------------------------------------------------------------------------- the child


class Where:
    """The trainer's current step and phase, as the wrapped functions see them."""

    step, phase = 0, "start-up"


def _die(landing: str, where: str) -> None:
    """Record where the kill landed, then SIGKILL this process (no clean-up runs)."""
    with open(landing, "w") as f:
        f.write(where)
        f.flush()
        os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(fault: dict, phase: str, step: int) -> None:
    """Start the kill timer if this is the chosen step and phase."""
    if fault and fault["phase"] == phase and fault["step"] == step and not fault.get("armed"):
        fault["armed"] = True
        fire = lambda: _die(fault["landing"], f"{Where.phase}@{Where.step}")
        threading.Timer(fault["delay"], fire).start()


def _wrap_phases(fault: dict) -> None:
    """Wrap the trainer's sampling, update, evaluation and checkpoint calls."""
    from redjax import checkpoint, step, train

    rollouts, run_eval, jit_step = train.rollouts, train.run_eval, step.jit_train_step

    def sampling(*a, **k):
        Where.step = k["seed"] % 1_000_003 + 1  # train.py seeds step it with seed*1_000_003+it
        Where.phase = "sampling"
        _arm(fault, "sampling", Where.step)
        out = rollouts(*a, **k)
        Where.phase = "reward+controller"
        return out

    def evaluation(*a, **k):
        Where.step, Where.phase = a[-1], "evaluation"
        _arm(fault, "evaluation", Where.step)
        out = run_eval(*a, **k)
        Where.phase = "after-evaluation"
        return out

    def jitted(*a, **k):
        fn = jit_step(*a, **k)

        def update(*b):
            Where.phase = "update"
            _arm(fault, "update", Where.step)
            out = fn(*b)
            import jax

            jax.block_until_ready(out)
            Where.phase = "logging"
            return out

        return update

    save = checkpoint.Checkpoints.save

    def saving(self, s, *a, **k):
        Where.phase = "checkpoint"
        if fault.get("phase") == "checkpoint" and fault["step"] == s:
            _arm_orbax(fault, s)
        save(self, s, *a, **k)
        Where.phase = "after-save"

    train.rollouts, train.run_eval, step.jit_train_step = sampling, evaluation, jitted
    checkpoint.Checkpoints.save = saving


def _arm_orbax(fault: dict, s: int) -> None:
    """Kill inside Orbax's save of step `s`, at the chosen write stage."""
    import asyncio
    import importlib

    module, attr, after = ORBAX_STAGES[fault["stage"]]
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for p in path:
        owner = getattr(owner, p)
    original = getattr(owner, name)
    where = f"checkpoint:{fault['stage']}@{s}"

    async def patched(*a, **k):
        if not after:
            _die(fault["landing"], where)
        await original(*a, **k)
        _die(fault["landing"], where)

    assert asyncio.iscoroutinefunction(original), attr
    setattr(owner, name, patched)


def child(run_dir: str) -> None:
    """`redjax train` with the fault of $REDJAX_FAULT (JSON) armed, if any."""
    fault = json.loads(os.environ.get("REDJAX_FAULT") or "{}")
    _wrap_phases(fault)
    from redjax import cli

    cli.main(["train", *OVERRIDES, f"train.run_dir={run_dir}"])


# ----------------------------------------------------------------------------- the driver


def launch(run_dir: str, cache: str, fault: dict | None) -> tuple[int, str, float]:
    """One trainer process (in its own process group); returns (exit code, output, seconds)."""
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        REDJAX_FAULT=json.dumps(fault or {}),
    )
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", run_dir],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    out = proc.communicate()[0]
    with contextlib.suppress(ProcessLookupError):  # a killed trainer's reward worker: its
        os.killpg(proc.pid, signal.SIGKILL)  # process group, started above
    return proc.returncode, out, time.perf_counter() - t0


def last_step(run_dir: str) -> int:
    """The last step with a training record in metrics.jsonl (a torn last line skipped)."""
    from redjax import logs

    try:
        rows = logs.read_metrics(run_dir)
    except FileNotFoundError:
        return 0
    return max([r["step"] for r in rows if "loss" in r], default=0)


def final_state(run_dir: str) -> tuple[dict, dict]:
    """(arrays, host JSON) of the run's final checkpoint, read back without a target."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(run_dir, "checkpoints", str(STEPS))
    with ocp.StandardCheckpointer() as c:
        arrays = c.restore(os.path.join(path, "state"))
    with open(os.path.join(path, "host", "metadata")) as f:
        host = json.load(f)
    flat = jax.tree_util.tree_flatten_with_path(arrays)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, host


def jsonl(path: str) -> list[str]:
    """Records of a JSONL file without timings, as canonical JSON (NaN compares equal)."""
    with open(path) as f:
        rows = [json.loads(ln) for ln in f if ln.strip()]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(VOLATILE)}
    return [json.dumps(strip(r), sort_keys=True) for r in rows]


def differences(run_dir: str, ref: dict) -> list[str]:
    """What differs from the uninterrupted run (empty: identical bit for bit)."""
    arrays, host = final_state(run_dir)
    out = []
    if arrays.keys() != ref["arrays"].keys():
        out.append("state tree")
    for k, v in arrays.items():
        w = ref["arrays"].get(k)
        if w is None or v.shape != w.shape or v.tobytes() != w.tobytes():
            out.append(k.split("]")[0] + "]")
    for key in ("controller", "loader", "skips", "step"):
        if host.get(key) != ref["host"].get(key):
            out.append(f"host {key}")
    for name in ("metrics.jsonl", "samples.jsonl"):
        if jsonl(os.path.join(run_dir, name)) != ref[name]:
            out.append(name)
    return sorted(set(out))


def plan(kills: int, seed: int) -> list[dict]:
    """The faults: phases in turn, a random step where that phase happens, a random delay."""
    rng = random.Random(seed)
    saves = list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY))
    evals = list(range(0, STEPS + 1, EVAL_EVERY))
    out = []
    for i in range(kills):
        phase = PHASES[i % len(PHASES)]
        # the delays span about the phase's length on an idle machine (tiny model)
        f = {"phase": phase, "delay": round(rng.uniform(0.0, DELAYS.get(phase, 0.0)), 4)}
        if phase == "checkpoint":
            f.update(step=rng.choice(saves), stage=rng.choice(sorted(ORBAX_STAGES)))
        elif phase == "evaluation":
            f["step"] = rng.choice(evals)
        else:
            f["step"] = rng.randint(1, STEPS)
        out.append(f)
    return out


def trial(i: int, fault: dict, work: str, cache: str, ref: dict) -> dict:
    """Kill one run as `fault` says, re-run the same command until it finishes, compare."""
    run_dir = os.path.join(work, f"run{i}")
    fault = {**fault, "landing": os.path.join(work, f"landing{i}")}
    code, out, spent = launch(run_dir, cache, fault)
    landed = "-"
    if os.path.exists(fault["landing"]):
        with open(fault["landing"]) as f:
            landed = f.read()
    killed = code == -signal.SIGKILL
    reached, runs, resumed = last_step(run_dir), 1, []
    while code != 0 and runs < 5:
        code, out, t = launch(run_dir, cache, None)
        spent, runs = spent + t, runs + 1
        resumed += [int(s) for s in re.findall(r"from step (\d+)", out)]
        if code != 0:
            print(out[-3000:], file=sys.stderr)
    start = resumed[0] if resumed else 0
    diff = differences(run_dir, ref) if code == 0 else ["did not finish"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "kill": i + 1,
        "aimed": f"{fault['phase']}"
        + (f":{fault['stage']}" if "stage" in fault else "")
        + f"@{fault['step']}",
        "landed": landed if killed else f"not killed (exit {code})",
        "resumed from": start,
        "redone": max(0, reached - start),
        "runs": runs,
        "identical": not diff,
        "diff": ", ".join(diff) or "-",
        "lost s": spent - ref["seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="trials run side by side")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)

    t0, cpu0 = time.perf_counter(), os.times()
    work = args.work or tempfile.mkdtemp(prefix="redjax-faults-")
    cache = os.path.join(work, "jax_cache")
    ref_dir = os.path.join(work, "reference")
    launch(ref_dir, cache, None)  # fills the compilation cache: every later run starts alike
    shutil.rmtree(ref_dir)
    code, out, seconds = launch(ref_dir, cache, None)
    assert code == 0, out[-3000:]
    arrays, host = final_state(ref_dir)
    ref = {"arrays": arrays, "host": host, "seconds": seconds}
    for name in ("metrics.jsonl", "samples.jsonl"):
        ref[name] = jsonl(os.path.join(ref_dir, name))
    print(f"uninterrupted run: {STEPS} steps in {seconds:.1f} s\n", flush=True)

    cols = ["kill", "aimed", "landed", "resumed from", "redone", "runs", "identical", "lost s"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
    rows = []
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(trial, i, fault, work, cache, ref)
            for i, fault in enumerate(plan(args.kills, args.seed))
        ]
        for f in futures:  # in order of the kills
            r = f.result()
            rows.append(r)
            cells = [f"{r[c]:.1f}" if c == "lost s" else str(r[c]) for c in cols]
            cells[cols.index("identical")] = "yes" if r["identical"] else f"NO ({r['diff']})"
            print("| " + " | ".join(cells) + " |", flush=True)
    same = sum(r["identical"] for r in rows)
    killed = sum(not r["landed"].startswith("not killed") for r in rows)
    lost = [r["lost s"] for r in rows]
    print(
        f"\n{same} / {len(rows)} identical bit for bit ({killed} killed); steps redone: "
        f"{sum(r['redone'] for r in rows)} in all, at most {max(r['redone'] for r in rows)}; "
        f"time lost per kill: median {np.median(lost):.1f} s, max {max(lost):.1f} s; "
        f"total {time.perf_counter() - t0:.0f} s"
    )
    cpu = os.times()
    used = cpu.children_user + cpu.children_system - cpu0.children_user - cpu0.children_system
    print(f"CPU time of the trainer processes: {used:.0f} s (user + system, all cores)")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
