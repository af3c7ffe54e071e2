"""Verifier accuracy and speed: each reward backend x extraction mode on the labelled set.

    python bench/verifier.py                      # tests/verifier_cases.jsonl, both backends
    python bench/verifier.py --show               # also list every disagreement

Accuracy is measured through the time-bounded worker pool (2 workers, 5 s per item, the
trainer's defaults): agreement with the hand-written labels, false positives (a wrong answer
scored 1) and false negatives (a right answer scored 0).

Speed is timed on the ordinary (not adversarial) pairs of half of the golds, after a warm-up
pass on the other half (imports, sympy's lazy modules): verifications per CPU-second and per
wall-second in one process (one worker: three passes per backend, the backends taking turns,
redjax's and sympy's caches cleared before each pass), and per wall-second through the
2-worker pool (one pass). On a busy machine the wall figures move with the load; the CPU
figure does not. The "math_verify" backend is skipped when math-verify is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from redjax.rewards import Verifier, get_reward_fn  # noqa: E402

CASES = os.path.join(ROOT, "tests", "verifier_cases.jsonl")
SETUPS = [("math", "boxed"), ("math", "any"), ("math_verify", "boxed"), ("math_verify", "any")]


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def accuracy(rows: list[dict], scores) -> dict:
    """Agreement, false positives and false negatives of 0/1 scores against the labels."""
    fp = sum(1 for r, s in zip(rows, scores, strict=True) if s >= 0.5 and r["label"] == 0)
    fn = sum(1 for r, s in zip(rows, scores, strict=True) if s < 0.5 and r["label"] == 1)
    return {"agree": 1 - (fp + fn) / len(rows), "fp": fp, "fn": fn}


def clear_caches() -> None:
    """Forget parsed answers (redjax's cache and sympy's), so a pass reads every answer afresh."""
    from sympy.core.cache import clear_cache

    from redjax.rewards.lex import to_sympy

    to_sympy.cache_clear()
    clear_cache()


def per_worker_rates(fns: dict, warm: list[dict], rows: list[dict], repeats: int = 3) -> dict:
    """(verifications per CPU-second, per wall-second) in this process on `rows`, for each reward in `fns`, after
    a pass over `warm` (imports, sympy's lazy modules). The rewards take turns, pass by pass,
    and each pass starts with the parse caches cleared, so a busy machine slows all alike."""
    for fn in fns.values():
        for r in warm:
            fn(r["completion"], r["gold"])
    cpu, wall = dict.fromkeys(fns, 0.0), dict.fromkeys(fns, 0.0)
    for _ in range(repeats):
        for key, fn in fns.items():
            clear_caches()
            start, start_wall = time.process_time(), time.perf_counter()
            for r in rows:
                fn(r["completion"], r["gold"])
            cpu[key] += time.process_time() - start
            wall[key] += time.perf_counter() - start_wall
    n = repeats * len(rows)
    return {key: (n / cpu[key], n / wall[key]) for key in fns}


def measure(name: str, extract: str, rows: list[dict], warm: list[dict], timed: list[dict]):
    """Speed through a 2-worker pool on `timed` (warmed up on `warm`, other golds), then
    accuracy through it on `rows`."""
    completions, golds = [r["completion"] for r in rows], [r["gold"] for r in rows]
    with Verifier(
        name, workers=2, timeout=5.0, format_weight=0.0, think_format=False, extract=extract
    ) as pool:
        pool.score([r["completion"] for r in warm], [r["gold"] for r in warm])
        start = time.perf_counter()
        pool.score([r["completion"] for r in timed], [r["gold"] for r in timed])
        pool_rate = len(timed) / (time.perf_counter() - start)
        scores = pool.score(completions, golds)
        stats = pool.stats()
    out = accuracy(rows, scores)
    out.update(timeouts=stats["timeouts"], pool_rate=pool_rate, scores=scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=CASES)
    parser.add_argument("--show", action="store_true", help="list every disagreement")
    args = parser.parse_args()
    rows = load(args.cases)
    ordinary = [r for r in rows if r["style"] != "adversarial"]  # speed on ordinary output
    golds = sorted({r["gold"] for r in ordinary})
    warm_golds = set(golds[::2])  # warm up on half of the golds, time the other half
    warm = [r for r in ordinary if r["gold"] in warm_golds]
    timed = [r for r in ordinary if r["gold"] not in warm_golds]
    n_adv = len(rows) - len(ordinary)
    print(f"{len(rows)} labelled pairs ({sum(r['label'] for r in rows)} right answers, "
          f"{n_adv} adversarial); speed on {len(timed)} ordinary pairs whose golds were not "
          f"seen in the warm-up\n")  # fmt: skip
    results = {}
    for name, extract in SETUPS:
        try:
            get_reward_fn(name)
        except ImportError as err:
            print(f"{name}: skipped ({err})")
            continue
        results[(name, extract)] = measure(name, extract, rows, warm, timed)
    fns = {setup: get_reward_fn(*setup) for setup in results}
    for setup, (rate, wall_rate) in per_worker_rates(fns, warm, timed).items():
        results[setup].update(rate=rate, wall_rate=wall_rate)
    print("| backend | extract | agreement | FP | FN | time-outs | verif/s 1 worker (CPU) "
          "| verif/s 1 worker (wall) | verif/s pool of 2 (wall) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, extract), r in results.items():
        print(f"| {name} | {extract} | {r['agree']:.1%} | {r['fp']} | {r['fn']} | "
              f"{r['timeouts']} | {r['rate']:.0f} | {r['wall_rate']:.0f} | "
              f"{r['pool_rate']:.0f} |")  # fmt: skip
    for extract in ("boxed", "any"):
        ours, theirs = results.get(("math", extract)), results.get(("math_verify", extract))
        if ours and theirs:
            print(f"\nextract={extract}: math is {ours['rate'] / theirs['rate']:.1f}x "
                  f"math_verify's verifications per CPU-second (one worker)")  # fmt: skip
    if args.show:
        for (name, extract), r in results.items():
            for row, s in zip(rows, r["scores"], strict=True):
                if (s >= 0.5) != bool(row["label"]):
                    kind = "FP" if s >= 0.5 else "FN"
                    text = row["completion"][-90:].replace("\n", " ")
                    print(f"{name}/{extract} {kind} #{row['id']} {row['category']}: "
                          f"gold {row['gold'][:40]!r} ... {text!r}")  # fmt: skip


if __name__ == "__main__":
    main()
