"""What LoRA costs and saves on the embedded default: time per step and checkpoint size, full
fine-tuning against `lora.rank=R`.

    python bench/lora.py                        # 20 steps each, rank 8
    python bench/lora.py --steps 40 --rank 16 --extra model.num_layers=4

Each variant runs `redjax train train.steps=S eval.every=0 train.save_every=S [lora.rank=R]`
in OUT/full and OUT/lora; the table gives the median over steps 2..S (the first compiles) of
time/step, time/sample and time/train, and the bytes of the final checkpoint folder (Orbax:
parameters or adapters, their AdamW state, the host state).
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


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def measure(name: str, args: list[str], steps: int, out: str) -> dict:
    """One `redjax train` run in OUT/name; its median phase times and checkpoint bytes."""
    run = os.path.join(out, name)
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "redjax.cli", "train", *args, f"train.steps={steps}",
           f"train.run_dir={run}", "eval.every=0", "eval.problems=32", f"train.save_every={steps}"]  # fmt: skip
    with open(run + ".log", "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, cwd=out)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        rows = [r for r in map(json.loads, f) if "time/step" in r][1:]
    median = lambda k: statistics.median(r[k] for r in rows)
    return {
        "variant": name,
        "step": median("time/step"),
        "sample": median("time/sample"),
        "train": median("time/train"),
        "checkpoint": folder_bytes(os.path.join(run, "checkpoints", str(steps))),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for both runs")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench-lora"))
    args = p.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    rows = [
        measure("full", args.extra, args.steps, out),
        measure("lora", [*args.extra, f"lora.rank={args.rank}"], args.steps, out),
    ]
    print("| variant | time/step (s) | time/sample (s) | time/train (s) | checkpoint |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['step']:.3f} | {r['sample']:.3f} | {r['train']:.3f} | "
              f"{r['checkpoint'] / 1024:.0f} KiB |")  # fmt: skip
    ratio = rows[0]["checkpoint"] / rows[1]["checkpoint"]
    print(f"\ncheckpoint: full / lora = {ratio:.1f}x")


if __name__ == "__main__":
    main()
