"""RED against its baselines on the built-in task: same data, model, budget and seed.

    python bench/compare.py                     # all six baselines, the default budget
    python bench/compare.py --steps 150 --only red grpo

Each baseline is configs/baselines/NAME.yaml run with `redjax train` in its own run folder
(runs/compare/NAME). Writes a markdown table (final held-out accuracy, best accuracy, steps
to 0.5, wall time) and a plot of held-out accuracy and online entropy over steps
(bench/compare.png), and prints the table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = ["red", "grpo", "sft", "sft_then_grpo", "fixed_mix", "luffy"]


def run(name: str, steps: int, seed: int, out: str, extra: list[str]) -> float:
    cfg = os.path.join(ROOT, "configs", "baselines", f"{name}.yaml")
    cmd = [
        sys.executable,
        "-m",
        "redjax.cli",
        "train",
        cfg,
        f"train.steps={steps}",
        f"train.seed={seed}",
        f"train.run_dir={os.path.join(out, name)}",
        f"eval.every={max(steps // 6, 1)}",
        *extra,
    ]
    if name == "sft_then_grpo":
        cmd.append(f"red.sft_steps={steps // 2}")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def summarise(out: str, names: list[str], walls: dict[str, float]) -> str:
    from redjax.logs import read_metrics

    lines = [
        "| baseline | final held-out acc | best | first step >= 0.5 | final entropy (online) "
        "| wall s |",
        "|---|---|---|---|---|---|",
    ]
    curves = {}
    for name in names:
        rows = read_metrics(os.path.join(out, name))
        evals = [(r["step"], r["eval/heldout_acc"]) for r in rows if "eval/heldout_acc" in r]
        ent = [(r["step"], r["entropy_on"]) for r in rows if r.get("tokens_on", 0) > 0]
        curves[name] = (evals, ent)
        first = next((s for s, a in evals if a >= 0.5), None)
        last_ent = f"{ent[-1][1]:.3f}" if ent else "n/a"
        lines.append(
            f"| {name} | {evals[-1][1]:.3f} | {max(a for _, a in evals):.3f} | "
            f"{first if first is not None else '-'} | {last_ent} | "
            f"{walls.get(name, float('nan')):.0f} |"
        )
    _plot(curves, os.path.join(ROOT, "bench", "compare.png"))
    return "\n".join(lines)


def _plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (evals, ent) in curves.items():
        a.plot(*zip(*evals, strict=True), marker="o", label=name)
        if ent:
            b.plot(*zip(*ent, strict=True), label=name)
    a.set(xlabel="step", ylabel="held-out accuracy (greedy)", title="accuracy")
    b.set(xlabel="step", ylabel="mean token entropy, online", title="policy entropy")
    a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join("runs", "compare"))
    ap.add_argument("--only", nargs="*", default=BASELINES, choices=BASELINES)
    ap.add_argument("--summarise", action="store_true", help="only re-read finished runs")
    ap.add_argument("extra", nargs="*", help="overrides for every baseline")
    args = ap.parse_args()
    walls = {}
    if not args.summarise:
        for name in args.only:
            walls[name] = run(name, args.steps, args.seed, args.out, args.extra)
    print(summarise(args.out, args.only, walls))


if __name__ == "__main__":
    main()
