"""Verifier accuracy and speed: each reward backend x extraction mode on the labelled set.

    python bench/verifier.py                      # tests/verifier_cases.jsonl, both backends
    python bench/verifier.py --show               # also list every disagreement

Accuracy is measured through the time-bounded worker pool (2 workers, 5 s per item, the
trainer's defaults): agreement with the hand-written labels, false positives (a wrong answer
scored 1) and false negatives (a right answer scored 0). Speed: verifications per second in
one process (one worker's rate, the set scored twice, after one warm-up pass) and through
the 2-worker pool. The "math_verify" backend is skipped when math-verify is not installed.
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


def per_worker_rate(fn, rows: list[dict], repeats: int = 2) -> float:
    """Verifications per second in this process, after one warm-up pass."""
    for r in rows:
        fn(r["completion"], r["gold"])
    start = time.perf_counter()
    for _ in range(repeats):
        for r in rows:
            fn(r["completion"], r["gold"])
    return repeats * len(rows) / (time.perf_counter() - start)


def measure(name: str, extract: str, rows: list[dict], timed: list[dict]) -> dict:
    """Accuracy through the pool on `rows`; speed (one process, the pool) on `timed`."""
    completions, golds = [r["completion"] for r in rows], [r["gold"] for r in rows]
    with Verifier(name, workers=2, timeout=5.0, extract=extract) as pool:
        pool.score(completions[:4], golds[:4])  # workers started and warm
        scores = pool.score(completions, golds)
        stats = pool.stats()
        start = time.perf_counter()
        pool.score([r["completion"] for r in timed] * 2, [r["gold"] for r in timed] * 2)
        pool_rate = 2 * len(timed) / (time.perf_counter() - start)
    rate = per_worker_rate(get_reward_fn(name, extract), timed)
    out = accuracy(rows, scores)
    out.update(timeouts=stats["timeouts"], rate=rate, pool_rate=pool_rate, scores=scores)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=CASES)
    parser.add_argument("--show", action="store_true", help="list every disagreement")
    args = parser.parse_args()
    rows = load(args.cases)
    timed = [r for r in rows if r["style"] != "adversarial"]  # speed on ordinary output
    n_adv = len(rows) - len(timed)
    print(f"{len(rows)} labelled pairs ({sum(r['label'] for r in rows)} right answers, "
          f"{n_adv} adversarial); speed on the {len(timed)} ordinary ones\n")  # fmt: skip
    print("| backend | extract | agreement | FP | FN | time-outs | verif/s (1 worker) "
          "| verif/s (pool, 2 workers) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for name, extract in SETUPS:
        try:
            get_reward_fn(name)
        except ImportError as err:
            print(f"| {name} | {extract} | skipped: {err} | | | | | |")
            continue
        r = results[(name, extract)] = measure(name, extract, rows, timed)
        print(f"| {name} | {extract} | {r['agree']:.1%} | {r['fp']} | {r['fn']} | "
              f"{r['timeouts']} | {r['rate']:.0f} | {r['pool_rate']:.0f} |", flush=True)  # fmt: skip
    for extract in ("boxed", "any"):
        ours, theirs = results.get(("math", extract)), results.get(("math_verify", extract))
        if ours and theirs:
            print(f"\nextract={extract}: math is {ours['rate'] / theirs['rate']:.1f}x "
                  f"math_verify's verifications per second (one worker)")  # fmt: skip
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
