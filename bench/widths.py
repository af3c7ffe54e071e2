"""Does a step's cost follow its answers or its budget? The same model and data at two rollout
budgets: time per train step, per sampling phase, and the rows' width.

    python bench/widths.py                         # trains the default run first (~6 min)
    python bench/widths.py --model hf_out          # a Hugging Face folder (redjax export)
    python bench/widths.py --model hf_out --code /path/to/older/checkout   # that code instead

Each budget N runs `redjax train model.path=MODEL rollout.max_new_tokens=N train.steps=S`
(eval.every=0) in OUT/nN; the table gives the median over steps 2..S (the first compiles) of
time/train and time/sample, the mean response length and the rows' width (`row_width`, as
logged; "-" for code that does not log it). A model that answers in ~30 tokens trains at the
same width at both budgets when rows are cut to the longest answer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def redjax(args: list[str], code: str, log: str) -> None:
    """`redjax ARGS` with the package imported from `code`, output to `log`."""
    env = dict(os.environ, PYTHONPATH=code)
    cmd = [sys.executable, "-c", "import sys; from redjax.cli import main; main(sys.argv[1:])"]
    with open(log, "w") as f:  # run from the log's folder: `python -c` puts the cwd first
        subprocess.run(
            [*cmd, *args], env=env, stdout=f, stderr=subprocess.STDOUT, check=True,
            cwd=os.path.dirname(log),
        )  # fmt: skip


def default_model(out: str, code: str) -> str:
    """The embedded default run, trained and exported once into OUT/default-model."""
    model = os.path.join(out, "default-model")
    if not os.path.isfile(os.path.join(model, "config.json")):
        run = os.path.join(out, "default-run")
        print(f"training the default run into {run} (about 6 minutes)", flush=True)
        redjax(["train", f"train.run_dir={run}"], code, os.path.join(out, "default-run.log"))
        redjax(["export", run, model], code, os.path.join(out, "export.log"))
    return model


def measure(model: str, budget: int, steps: int, out: str, code: str) -> dict:
    run = os.path.join(out, f"n{budget}")
    shutil.rmtree(run, ignore_errors=True)
    args = [
        "train", f"model.path={model}", f"rollout.max_new_tokens={budget}",
        f"train.steps={steps}", f"train.run_dir={run}", "eval.every=0", "eval.problems=32",
        "train.save_every=1000",
    ]  # fmt: skip
    redjax(args, code, run + ".log")
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "time/train" in r][1:]
    median = lambda k: statistics.median(r[k] for r in rows)
    width = {r.get("row_width") for r in rows}
    return {
        "budget": budget,
        "train": median("time/train"),
        "sample": median("time/sample"),
        "length": statistics.mean(r["response_length"] for r in rows),
        "width": "-" if width == {None} else "/".join(str(int(w)) for w in sorted(width)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="Hugging Face folder (default: train one)")
    p.add_argument("--budgets", default="32,512", help="rollout.max_new_tokens values")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--code", default=ROOT, help="checkout whose redjax runs (default: this)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench-widths"))
    args = p.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    model = os.path.abspath(args.model) if args.model else default_model(args.out, args.code)
    rows = [
        measure(model, int(n), args.steps, args.out, args.code) for n in args.budgets.split(",")
    ]
    print(f"\ncode: {args.code}; model: {model}; {args.steps} steps, medians of steps 2..")
    print("| budget | time/train (s) | time/sample (s) | mean response | row width |")
    print("|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['budget']} | {r['train']:.2f} | {r['sample']:.2f} | {r['length']:.1f} | "
              f"{r['width']} |")  # fmt: skip
    base = rows[0]["train"]
    for r in rows[1:]:
        print(
            f"budget {r['budget']} / {rows[0]['budget']}: {r['train'] / base:.2f}x the train step"
        )


if __name__ == "__main__":
    main()
