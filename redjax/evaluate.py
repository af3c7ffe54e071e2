"""Evaluation: sampler + verifier over benchmark records -> pass@1, pass@k, response lengths.

Used by the trainer (held-out accuracy every N steps) and by `redjax eval`.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from typing import Any

import numpy as np

from redjax import sampler as sampling
from redjax.data.pipeline import encode_prompts
from redjax.tokenizer import eos_ids


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def batch_size(cfg: Any) -> int:
    """Prompts per batch of the trainer's held-out evaluation: the rollout batch, at least 32."""
    return max(cfg.rollout.prompts, 32)


def evaluate(
    params: Any,
    cfg: Any,
    tokenizer: Any,
    records: list[dict],
    verifier: Any,
    *,
    k: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    prompt_suffix: str,
    chat: bool,
    system: str | None,
    seed: int,
    mesh: Any = None,
    keep_samples: int = 0,
) -> dict:
    """Score k samples per record. Returns overall and per-source pass@1, pass@k, lengths.
    No defaults for the settings: the trainer's come from its config (train.run_eval)."""
    sp = sampling.SamplingParams(
        temperature=temperature,
        top_k=0,  # evaluation samples without a top-k filter
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        eos_ids=tuple(eos_ids(tokenizer)),
    )
    batches = encode_prompts(
        records,
        tokenizer,
        batch_size=batch_size,
        prompt_suffix=prompt_suffix,
        chat=chat,
        system=system,
    )
    correct, lengths, sources, samples = [], [], [], []
    # one per-layer copy for every batch
    params = sampling.decode_params(params, cfg, fuse=sampling.fuse_on(mesh))
    for i, batch in enumerate(batches):
        ro = sampling.sample(
            params,
            cfg,
            batch["prompt_ids"],
            batch["prompt_mask"],
            num_samples=k,
            sp=sp,
            seed=seed + i,
            tokenizer=tokenizer,
            mesh=mesh,
        )
        golds = [a for a in batch["answer"] for _ in range(k)]
        judged = verifier.judge(ro.text, golds)
        right, rewards = judged.correct.reshape(-1, k), judged.reward.reshape(-1, k)
        for j in np.flatnonzero(batch["valid"]):
            correct.append(right[j])
            lengths.append(ro.lengths[j * k : (j + 1) * k])
            sources.append(batch["source"][j])
            if len(samples) < keep_samples:
                samples.append(
                    {
                        "prompt": batch["prompt_text"][j],
                        "completion": ro.text[j * k],
                        "answer": batch["answer"][j],
                        "reward": float(rewards[j, 0]),
                    }
                )
    return _results(correct, lengths, sources, samples, k)


def _summary(correct: list, lengths: list, idx: list[int], k: int) -> dict:
    """pass@1, pass@k and mean length over the problems `idx`."""
    c = [int(correct[i].sum()) for i in idx]
    return {
        "problems": len(idx),
        "pass@1": float(np.mean([x / k for x in c])),
        f"pass@{k}": float(np.mean([pass_at_k(k, x, k) for x in c])),
        "mean_length": float(np.mean([lengths[i].mean() for i in idx])),
    }


def _results(correct: list, lengths: list, sources: list, samples: list, k: int) -> dict:
    """The overall summary, one per source, and the kept samples."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sources):
        groups[s or "all"].append(i)
    out = _summary(correct, lengths, list(range(len(correct))), k)
    out["k"] = k
    out["by_source"] = {s: _summary(correct, lengths, idx, k) for s, idx in sorted(groups.items())}
    out["samples"] = samples
    return out


def table(results: dict) -> str:
    """A markdown table: one row per source, then the total."""
    k = results["k"]
    cols = (
        ["problems", "pass@1", f"pass@{k}", "mean_length"]
        if k > 1
        else ["problems", "pass@1", "mean_length"]
    )
    lines = ["| source | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    rows = list(results["by_source"].items())
    if len(rows) > 1 or not rows:
        rows.append(("all", results))
    for name, r in rows:
        cells = [str(r["problems"])] + [f"{r[c]:.3f}" for c in cols[1:-1]]
        cells.append(f"{r['mean_length']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    """`redjax eval`: load a model folder or run folder, score benchmark files, print a table."""
    from redjax import config, rewards, runs
    from redjax.data import load_records

    model, tokenizer, extra = runs.load_model(args.model, dtype=args.dtype)
    records = []
    for path in args.data:
        recs = load_records(path, fields=args.fields)
        records += recs[: args.limit] if args.limit else recs
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if args.k == 1 else 0.6
    suffix = extra["prompt_suffix"] if args.prompt_suffix is None else args.prompt_suffix
    reward_fn, extract = extra["reward_fn"], extra["reward_extract"]
    # answers only (no format reward); workers and time-out: the reward section's defaults
    rw = config.RewardCfg(fn=reward_fn, extract=extract, format_weight=0.0, think_format=False)
    with rewards.Verifier.from_config(rw) as verifier:
        results = evaluate(
            model.params,
            model.cfg,
            tokenizer,
            records,
            verifier,
            k=args.k,
            temperature=temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            prompt_suffix=suffix,
            chat=not args.raw and extra["chat"],  # a run folder: as it trained
            system=extra["system"],
            seed=args.seed,
        )
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {args.json}")
