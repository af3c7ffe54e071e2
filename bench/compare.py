"""Does RED teach better? Every method from the same start, on the same data, for the same
budget, over several seeds: a table of means and spreads, and plots of the curves.

    python bench/compare.py                          # the warm-start benchmark, 3 seeds
    python bench/compare.py --seeds 1 --methods red grpo
    python bench/compare.py --task verbose           # the same, with an imperfect teacher
    python bench/compare.py data.train=t.jsonl data.test=h.jsonl   # your task, from scratch
    python bench/compare.py my.yaml model.path=M --old old.jsonl   # your config and model
    python bench/compare.py --summarise              # re-read finished runs only

The built-in benchmark (no config given): a warm start, configs/compare/warm.yaml (300 SFT
steps from scratch on easy problems, column addition below 100, and long ones, half each),
made once and cached under OUT/warm-KEY (KEY: a hash of its resolved config); then every
method trained from it on configs/compare/long.yaml (each operand three-digit with
probability 1/2), where the warm model scores 0.435: low, not zero. The old task (the easy
held-out split) measures what each method keeps. `--task verbose` or `--task noisy` trains
from the same warm start on the same problems with an imperfect teacher's traces
(configs/compare/verbose.yaml: correct but padded, a third over the rollout budget;
noisy.yaml: 30% end wrong), in OUT/TASK.

Each run is `redjax train BASE algo=... [method settings] [your overrides] train.seed=S` in
OUT/METHOD/seedS (OUT/TASK/METHOD/seedS for a task other than long): the same model, data order
(asserted from each step's prompt digest) and number of steps and prompts for every method. A
finished run is not re-run (delete its folder to re-run it); an interrupted one resumes. Writes
compare.md (the table) and compare.png (curves: mean over seeds, min-max shaded) beside the
runs. Besides accuracy the table shows the rollouts' mean length and truncated share, lambda's
range and its share of steps off its bounds (more than 1% inside red.lambda_min..lambda_max).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARM = os.path.join(ROOT, "configs", "compare", "warm.yaml")
# The built-in benchmark's tasks (--task): the long task, and its problems with an imperfect
# teacher's traces (redjax.data.builtin.TEACHERS).
TASKS = {
    t: os.path.join(ROOT, "configs", "compare", f"{t}.yaml") for t in ("long", "verbose", "noisy")
}
TASK = TASKS["long"]
WARM_RECORDS, WARM_LONG = 20000, 0.5  # the warm start's train file: half long problems

# Method -> overrides on the base config (presets of each algo: redjax.config.PRESETS).
METHODS = {
    "red": ["algo=red"],
    "grpo": ["algo=grpo"],
    "sft": ["algo=sft"],
    "sft_then_grpo": ["algo=sft_then_grpo"],  # red.sft_steps = half the steps (added below)
    "fixed_mix": ["algo=fixed_mix"],
    "luffy": ["algo=luffy"],
    "red_fixed_lambda": ["algo=red", "red.lam=fixed"],  # RED, lambda held at red.lambda0
    "red_no_shift": ["algo=red", "red.shift=zero"],  # RED, s = 0 (SFT weighting) for all
    # RED's controller modes (docs/design.md, section 1): the rule and where dH comes from
    # ("red" is the default: ratio with drift)
    "red_sign": ["algo=red", "red.rule=sign", "red.entropy_change=probe"],
    "red_sign_drift": ["algo=red", "red.rule=sign", "red.entropy_change=drift"],
    "red_ratio_probe": ["algo=red", "red.rule=ratio", "red.entropy_change=probe"],
    "red_seq_mean": ["algo=red", "red.ext_agg=seq-mean-token-mean"],  # length-normalised Extend
}
# Config sections a method may change; everything else must be equal across methods.
METHOD_KEYS = ("algo", "red")
# A per-step metric and the token count without which the step did not measure it.
COUNTED_BY = {"entropy_on": "tokens_on", "entropy_off": "tokens_off", "lambda": "tokens_off"}
CURVES = {  # per-step metrics plotted, with their axis labels
    "accuracy": "rollout accuracy",
    "lambda": "lambda (offline weight)",
    "shift_mean": "mean policy shift s",
    "entropy_on": "entropy, online tokens",
    "entropy_off": "entropy, offline tokens",
}


# ----------------------------------------------------------------------------- running


def jax_env(out: str) -> dict:
    """The environment of every run: one persistent compilation cache, so runs of one shape
    compile once."""
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": os.path.join(out, "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def redjax(args: list[str], out: str) -> float:
    """Runs `redjax ARGS` as its own process; returns its wall time in seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "redjax.cli", *args], env=jax_env(out))
    if proc.returncode:
        sys.exit(f"compare: `redjax {' '.join(args)}` failed (exit {proc.returncode})")
    return time.perf_counter() - t0


def warm_start(out: str, overrides: list[str], train: bool = True) -> str | None:
    """The warm-start model (a Hugging Face folder), trained and exported once per resolved
    warm config, then reused by every method and seed (None if not made and not `train`)."""
    from redjax import config

    overrides = [f"data.train={_warm_data(out)}", *overrides]
    cfg = config.load(WARM, overrides)
    cfg.train.run_dir = ""
    key = hashlib.sha256(json.dumps(config.to_dict(cfg), sort_keys=True).encode()).hexdigest()
    folder = os.path.join(out, f"warm-{key[:12]}")
    hf = os.path.join(folder, "hf")
    if os.path.isfile(os.path.join(hf, "config.json")):
        print(f"compare: reusing the warm start {hf}")
        return hf
    if not train:
        return None
    run = os.path.join(folder, "run")
    print(f"compare: training the warm start in {run}")
    redjax(["train", WARM, *overrides, f"train.run_dir={run}"], out)
    redjax(["export", run, hf], out)
    return hf


def method_args(name: str, base: str | None, overrides: list[str], seed: int) -> list[str]:
    """The `redjax train` arguments of one method and seed."""
    from redjax import config

    extra = list(METHODS[name])
    if name == "sft_then_grpo":
        steps = config.load(base, overrides).train.steps
        extra.append(f"red.sft_steps={steps // 2}")
    return ["train", *([base] if base else []), *extra, *overrides, f"train.seed={seed}"]


def run_one(name: str, seed: int, args: argparse.Namespace, overrides: list[str]) -> str:
    """Trains one method for one seed (unless finished) and evaluates it on the old task;
    returns its run folder."""
    run = os.path.join(args.runs, name, f"seed{seed}")
    if not os.path.isfile(os.path.join(run, "eval.json")):
        print(f"compare: {name}, seed {seed} -> {run}", flush=True)
        argv = method_args(name, args.config, overrides, seed) + [f"train.run_dir={run}"]
        wall = redjax(argv, args.out)
        with open(os.path.join(run, "wall.json"), "w") as f:
            json.dump({"seconds": wall}, f)
    if args.old:
        old_task(run, os.path.join(run, "old.json"), _cfg(run).rollout.max_new_tokens, args)
    return run


def old_task(run: str, path: str, max_new_tokens: int, args: argparse.Namespace) -> float:
    """pass@1 of a run folder's model on the old task (prompts formatted as the run trained),
    evaluated once into `path` and read back after."""
    if not os.path.isfile(path):
        n = str(args.max_new_tokens or max_new_tokens)
        redjax(["eval", "--model", run, "--data", args.old, "--max-new-tokens", n,
                "--json", path], args.out)  # fmt: skip
    return _read_json(path)["pass@1"]


def _cfg(path: str):
    """The config of a run folder, or of a config file."""
    from redjax import config

    return config.load(os.path.join(path, "config.yaml") if os.path.isdir(path) else path)


# ----------------------------------------------------------------------------- reading runs


def read_runs(runs: dict[str, dict[int, str]]) -> dict[str, dict[int, dict]]:
    """Every run folder read once (`read_run`), by method and seed."""
    return {
        name: {s: read_run(by_seed[s]) for s in sorted(by_seed)} for name, by_seed in runs.items()
    }


def read_run(run: str) -> dict:
    """What the checks, the table and the plots need from one run folder."""
    from redjax import config
    from redjax.logs import read_metrics

    rows = read_metrics(run)
    steps = [r for r in rows if "loss" in r]
    evals = [(r["step"], r["eval/heldout_acc"], r["eval/mean_length"]) for r in rows
             if "eval/heldout_acc" in r]  # fmt: skip
    old = _read_json(os.path.join(run, "old.json"))
    cfg = config.to_dict(_cfg(run))
    cfg["train"].pop("run_dir")
    online = [r for r in steps if r.get("rollouts")]  # the steps that sampled rollouts
    return {
        "config": cfg,
        "evals": evals,
        "curves": {k: [(r["step"], _value(r, k)) for r in steps] for k in CURVES},
        "response_length": [r.get("response_length", np.nan) for r in online],
        "truncated": [r.get("truncated_frac", np.nan) for r in online],
        "lambda_bounds": (cfg["red"]["lambda_min"], cfg["red"]["lambda_max"]),
        "digests": [r["batch_digest"] for r in steps],
        "rollouts": [r["rollouts"] for r in steps],
        "old": old["pass@1"] if old else np.nan,
        "wall": (_read_json(os.path.join(run, "wall.json")) or {}).get("seconds", np.nan),
    }


def _value(row: dict, key: str) -> float:
    """A step's metric, NaN where it measured nothing (the entropy of a kind of token the step
    did not train on; lambda in a step without traces)."""
    count = COUNTED_BY.get(key)
    if count and not row.get(count):
        return np.nan
    return row.get(key, np.nan)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_same_budget(runs: dict[str, dict[int, dict]]) -> None:
    """Every method of a seed (runs as `read_runs` gives them) trained on the same prompts in
    the same order, with the same config outside the method's own keys and the same rollouts
    per online step. Raises ValueError naming the first difference."""
    for seed in sorted({s for by_seed in runs.values() for s in by_seed}):
        ref_name, ref = None, None
        for name, by_seed in runs.items():
            if seed not in by_seed:
                continue
            got, cfg = by_seed[seed], by_seed[seed]["config"]
            shared = {k: v for k, v in cfg.items() if k not in METHOD_KEYS}
            full = cfg["rollout"]["prompts"] * cfg["rollout"]["group_size"]
            if any(n not in (0, full) for n in got["rollouts"]):
                raise ValueError(f"{name} seed {seed}: a step sampled other than {full} rollouts")
            if ref is None:
                ref_name, ref = name, (shared, got["digests"])
                continue
            if shared != ref[0]:
                diff = sorted(k for k in shared if shared[k] != ref[0].get(k))
                raise ValueError(f"{name} vs {ref_name}, seed {seed}: config differs in {diff}")
            if got["digests"] != ref[1]:
                raise ValueError(f"{name} vs {ref_name}, seed {seed}: different prompts or order")


# ----------------------------------------------------------------------------- table and plots


def _ms(xs: list[float], fmt: str = ".3f") -> str:
    """Mean ± standard deviation over seeds (the spread of one seed is not shown)."""
    xs = [x for x in xs if np.isfinite(x)]
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:{fmt}}"
    return f"{np.mean(xs):{fmt}} ± {np.std(xs, ddof=1):{fmt.lstrip('+')}}"


def table(runs: dict[str, dict[int, dict]], target: float, start_old: float = np.nan) -> str:
    """The markdown table, from the run folders (`read_runs`); the first row is the starting
    model (its step-0 evaluation, the same for every method of a seed; `start_old`: its old-task
    accuracy)."""
    lines = [
        f"| method | held-out acc, new task | gain over start | best | old task kept | "
        f"mean length | steps to {target:g} | rollouts | wall s | rollout length | truncated | "
        "lambda range | lambda off bounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if runs:
        first = list(next(iter(runs.values())).values())
        start = _ms([g["evals"][0][1] for g in first])
        lines.append(f"| start (step 0) | {start} | - | - | {_ms([start_old])} |" + " - |" * 8)
    for name, by_seed in runs.items():
        got = list(by_seed.values())
        final = [g["evals"][-1][1] for g in got]
        gain = [g["evals"][-1][1] - g["evals"][0][1] for g in got]
        best = [max(a for _, a, _ in g["evals"]) for g in got]
        reach = [next((s for s, a, _ in g["evals"] if a >= target), None) for g in got]
        hit = [s for s in reach if s is not None]
        steps = f"{np.mean(hit):.0f} ({len(hit)}/{len(got)} seeds)" if hit else f"- (0/{len(got)})"
        lines.append(
            f"| {name} | {_ms(final)} | {_ms(gain, '+.3f')} | {_ms(best)} | "
            f"{_ms([g['old'] for g in got])} | {_ms([g['evals'][-1][2] for g in got], '.1f')} | "
            f"{steps} | {np.mean([sum(g['rollouts']) for g in got]):.0f} | "
            f"{_ms([g['wall'] for g in got], '.0f')} | {_rollout_cells(got)} |"
        )
    return "\n".join(lines)


def _rollout_cells(got: list[dict]) -> str:
    """The rollouts' mean length and truncated share (means over the online steps), lambda's
    range over all seeds and its share of steps off its bounds (lambda_min * 1.01 < lambda <
    lambda_max * 0.99), among the steps that had traces."""
    length = [_nanmean(g["response_length"]) for g in got]
    cut = [_nanmean(g["truncated"]) for g in got]
    lams = [np.array([v for _, v in g["curves"]["lambda"]], np.float64) for g in got]
    lams = [lam[np.isfinite(lam)] for lam in lams]
    every = np.concatenate(lams)
    span = f"{every.min():.3g}-{every.max():.3g}" if every.size else "-"
    off = [
        np.mean((lam > lo * 1.01) & (lam < hi * 0.99)) if lam.size else np.nan
        for lam, (lo, hi) in zip(lams, (g["lambda_bounds"] for g in got), strict=True)
    ]
    return f"{_ms(length, '.1f')} | {_ms(cut)} | {span} | {_ms(off, '.2f')}"


def _nanmean(xs: list[float]) -> float:
    """The mean of the finite values, NaN when there are none."""
    xs = [x for x in xs if np.isfinite(x)]
    return float(np.mean(xs)) if xs else np.nan


def plot(runs: dict[str, dict[int, dict]], path: str) -> None:
    """Held-out accuracy and the controller's curves over steps: one line per method (mean
    over seeds, min-max shaded); per-step curves smoothed over 5 steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"eval": "held-out accuracy, new task (greedy)", **CURVES}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for i, (name, by_seed) in enumerate(runs.items()):
        got = list(by_seed.values())
        color = f"C{i % 10}"  # one color a method in every panel
        for ax, key in zip(axes.flat, panels, strict=False):
            pts = (
                [[(s, a) for s, a, _ in g["evals"]] for g in got]
                if key == "eval"
                else [_smooth(g["curves"][key]) for g in got]
            )
            n = min(len(p) for p in pts)
            if not n or not np.isfinite([v for p in pts for _, v in p[:n]]).any():
                continue
            x = np.array([s for s, _ in pts[0][:n]])
            y = np.array([[v for _, v in p[:n]] for p in pts])
            ax.plot(x, np.nanmean(y, 0), label=name, color=color)
            ax.fill_between(x, np.nanmin(y, 0), np.nanmax(y, 0), color=color, alpha=0.2)
    for ax, title in zip(axes.flat, panels.values(), strict=False):
        ax.set(xlabel="step", title=title)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"compare: plot written to {path}")


def _smooth(pts: list[tuple[int, float]], w: int = 5) -> list[tuple[int, float]]:
    v = np.array([y for _, y in pts], np.float64)
    if len(v) < w:
        return pts
    k = np.convolve(np.nan_to_num(v), np.ones(w) / w, "valid")
    nan = np.convolve(np.isnan(v), np.ones(w), "valid") > 0
    return [(s, np.nan if m else y) for (s, _), y, m in zip(pts[w - 1 :], k, nan, strict=True)]


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per method")
    ap.add_argument("--task", choices=list(TASKS), help="built-in task (default long)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", default=os.path.join("runs", "compare"))
    ap.add_argument("--old", default=None, help="held-out file of the old task (built-in: easy)")
    ap.add_argument("--target", type=float, default=0.6, help="accuracy for 'steps to'")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="old-task eval length")
    ap.add_argument("--warm", nargs="*", default=[], help="overrides of the warm start")
    ap.add_argument("--summarise", action="store_true", help="only re-read finished runs")
    ap.add_argument("config", nargs="?", default=None, help="base config (default: built-in)")
    ap.add_argument("overrides", nargs="*", help="key=value for every method")
    args = ap.parse_args(argv)
    if args.config and "=" in args.config and not os.path.isfile(args.config):
        args.overrides, args.config = [args.config, *args.overrides], None
    if args.task and (args.config or any(o.startswith("data.train=") for o in args.overrides)):
        ap.error("--task chooses the built-in benchmark's config: not with a config or data.train")
    args.task = args.task or "long"
    return args


def base_config(path: str | None, overrides: list[str], task: str = "long") -> tuple[str, bool]:
    """(the config every method starts from, whether it is the built-in warm-start benchmark):
    the given file; with no file, the embedded default for a user's data (data.train=...),
    else the benchmark's task (TASKS: long, verbose or noisy)."""
    from redjax import config

    if path:
        return path, False
    if any(o.startswith("data.train=") for o in overrides):
        return config.default_file(), False
    return TASKS[task], True


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    args.out = os.path.abspath(args.out)
    # The long task's runs in OUT, another task's in OUT/TASK; the warm start is shared.
    args.runs = args.out if args.task == "long" else os.path.join(args.out, args.task)
    os.makedirs(args.runs, exist_ok=True)
    overrides = list(args.overrides)
    args.config, builtin = base_config(args.config, overrides, args.task)
    start_old = np.nan
    if builtin:
        if args.old is None:
            args.old = _old_task(args.out)
        hf = warm_start(args.out, args.warm, train=not args.summarise)
        if hf:  # the warm model's old-task score, at the new task's generation length
            overrides.insert(0, f"model.path={hf}")
            n = _cfg(args.config).rollout.max_new_tokens
            warm = os.path.dirname(hf)
            start_old = old_task(os.path.join(warm, "run"), os.path.join(warm, "old.json"), n, args)
    folders: dict[str, dict[int, str]] = {}
    for seed in range(args.seeds):  # seed-major: a partial run still compares every method
        for name in args.methods:
            run = os.path.join(args.runs, name, f"seed{seed}")
            if not args.summarise:
                run = run_one(name, seed, args, overrides)
            if os.path.isfile(os.path.join(run, "eval.json")):
                folders.setdefault(name, {})[seed] = run
    runs = read_runs(folders)
    check_same_budget(runs)
    text = table(runs, args.target, start_old)
    with open(os.path.join(args.runs, "compare.md"), "w") as f:
        f.write(text + "\n")
    plot(runs, os.path.join(args.runs, "compare.png"))
    print(text)
    return text


def _warm_data(out: str) -> str:
    """The warm start's train file: easy problems with a share of long ones (WARM_LONG), so the
    warm model solves the easy task and a few long problems (low but not zero, as a pretrained
    model would)."""
    import random

    from redjax.data import builtin

    path = os.path.join(out, "warm-data", "train.jsonl")
    if not os.path.isfile(path):
        n_long = round(WARM_RECORDS * WARM_LONG)
        records = builtin.make_task(WARM_RECORDS - n_long, seed=0)
        records += builtin.make_task(n_long, seed=0, difficulty="long")
        random.Random(0).shuffle(records)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(path + ".tmp", path)
    return path


def _old_task(out: str) -> str:
    """The built-in benchmark's old task: the easy held-out split, as a JSONL file."""
    from redjax.data import builtin

    return builtin.write_task(os.path.join(out, "old-easy"), 0, 200, seed=0)["test"]


if __name__ == "__main__":
    main()
