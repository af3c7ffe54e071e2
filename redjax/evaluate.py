"""Evaluation as the field reports it: n samples per problem -> avg@n, pass@k, maj@n, lengths.

Used by the trainer (held-out accuracy every N steps, train.run_eval) and by `redjax eval`;
both go through `evaluate` and its `summarize`, so their figures mean the same thing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from redjax import sampler as sampling
from redjax.data.pipeline import encode_prompts
from redjax.rewards.extract import extract_answer
from redjax.tokenizer import eos_ids


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def batch_size(cfg: Any) -> int:
    """Prompts per batch of the trainer's held-out evaluation: the rollout batch, at least 32."""
    return max(cfg.rollout.prompts, 32)


def check_settings(n: int, ks: Sequence[int], temperature: float) -> None:
    """One-line errors for settings whose figures would mislead: k > n, n > 1 when greedy."""
    if n < 1:
        raise ValueError(f"--n must be >= 1 (samples per problem), got {n}")
    for k in ks:
        if not 1 <= k <= n:
            raise ValueError(f"--k {k} with --n {n}: pass@k needs 1 <= k <= n samples")
    if n > 1 and temperature == 0:
        raise ValueError(
            f"--n {n} at --temperature 0 gives {n} identical samples: set --temperature, e.g. 0.6"
        )


def majority(answers: Sequence[str | None]) -> int | None:
    """The first sample of the largest group of equivalent answers (is_equiv: "1/2" and "0.5"
    vote together), a tie to the group formed first; None if no sample has an answer."""
    # Each answer joins the first group whose first answer f has is_equiv(f, answer), else
    # starts a group; samples without an answer do not vote.
    from redjax.rewards.compare import is_equiv  # sympy: loaded only when a vote needs it

    firsts: list[int] = []  # the first sample of each group
    votes: list[int] = []
    seen: dict[str, int] = {}  # answer string -> its group
    for i, a in enumerate(answers):
        if a is None:
            continue
        if a not in seen:
            eq = (g for g, f in enumerate(firsts) if is_equiv(answers[f], a))
            seen[a] = next(eq, len(firsts))
            if seen[a] == len(firsts):
                firsts.append(i)
                votes.append(0)
        votes[seen[a]] += 1
    if not firsts:
        return None
    return firsts[int(np.argmax(votes))]  # argmax: the first of the tied maxima


def summarize(
    correct: np.ndarray,
    lengths: np.ndarray,
    truncated: np.ndarray,
    maj_correct: np.ndarray,
    ks: Sequence[int],
) -> dict:
    """The reported figures over P problems of n samples: correct, lengths, truncated [P, n],
    maj_correct [P]. avg@n: the mean correctness of each problem's samples, then over problems."""
    n = correct.shape[1]
    c = correct.sum(axis=1)
    out: dict[str, Any] = {"problems": int(correct.shape[0])}
    out[f"avg@{n}"] = float(np.mean(c / n))
    for k in sorted({1, *ks}):  # pass@1 always: it equals avg@n
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(x), k) for x in c]))
    out[f"maj@{n}"] = float(np.mean(maj_correct))
    out["mean_length"] = float(np.mean(lengths))
    out["truncated_frac"] = float(np.mean(truncated))
    return out


def evaluate(
    params: Any,
    cfg: Any,
    tokenizer: Any,
    records: list[dict],
    verifier: Any,
    *,
    n: int,
    ks: Sequence[int],
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    batch_size: int,
    prompt_suffix: str,
    chat: bool,
    system: str | None,
    seed: int,
    extract: str,
    mesh: Any = None,
    keep_samples: int = 0,
    progress: bool = False,
) -> dict:
    """Score n samples per record: the summary overall, by source and by file (a record's
    "file"), and one entry per problem (`majority` votes on answers read in `extract` mode)."""
    # No defaults for the settings: the trainer's come from its config (train.run_eval).
    check_settings(n, ks, temperature)
    sp = sampling.SamplingParams(
        temperature=temperature,
        top_k=0,  # evaluation samples without a top-k filter
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        eos_ids=tuple(eos_ids(tokenizer, cfg)),
    )
    batches = encode_prompts(
        records,
        tokenizer,
        batch_size=batch_size,
        prompt_suffix=prompt_suffix,
        chat=chat,
        system=system,
    )
    if mesh is not None:  # replicated once, not once per batch
        params = sampling._on_mesh(params, mesh)
    # one per-layer copy for every batch
    params = sampling.decode_params(params, cfg, fuse=sampling.fuse_on(mesh))
    problems, samples = [], []
    bar = _progress(len(records), progress)
    for i, batch in enumerate(batches):
        ro = sampling.sample(
            params,
            cfg,
            batch["prompt_ids"],
            batch["prompt_mask"],
            num_samples=n,
            sp=sp,
            seed=seed + i,
            tokenizer=tokenizer,
            mesh=mesh,
        )
        each = lambda xs: [x for x in xs for _ in range(n)]  # prompt-major, as the samples
        judged = verifier.judge(ro.text, each(batch["answer"]), each(batch["record"]))
        for j in np.flatnonzero(batch["valid"]):
            rec = records[i * batch_size + j]
            problems.append(_problem(rec, batch, j, ro, judged.correct, n, extract))
            if len(samples) < keep_samples:
                samples.append(
                    {
                        "prompt": batch["prompt_text"][j],
                        "completion": ro.text[j * n],
                        "answer": batch["answer"][j],
                        "reward": float(judged.reward[j * n]),
                    }
                )
        bar.update(int(batch["valid"].sum()))
    bar.close()
    return _results(problems, samples, n, ks)


def _problem(
    rec: dict, batch: dict, j: int, ro: Any, correct: np.ndarray, n: int, extract: str
) -> dict:
    """The per-problem entry of prompt j of a batch: its n samples and their majority vote."""
    rows = range(j * n, (j + 1) * n)
    answers = [extract_answer(ro.text[r], extract) for r in rows]
    won = majority(answers)
    return {
        "file": rec.get("file"),
        "source": batch["source"][j] or "all",
        "prompt": rec["prompt"],  # as in the data; the model saw it formatted (chat, suffix)
        "gold": batch["answer"][j],
        "majority": None if won is None else answers[won],
        "maj_correct": won is not None and bool(correct[j * n + won]),
        "samples": [
            {
                "text": ro.text[r],
                "answer": a,
                "correct": bool(correct[r]),
                "length": int(ro.lengths[r]),
                "finish": str(ro.finish[r]),
            }
            for a, r in zip(answers, rows, strict=True)
        ],
    }


def _progress(total: int, enabled: bool) -> Any:
    """A bar over problems (the CLI's; the trainer has its own)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="eval", unit="problem", dynamic_ncols=True)


def _summary_of(problems: list[dict], ks: Sequence[int]) -> dict:
    """`summarize` over per-problem entries."""
    field = lambda name: np.array([[s[name] for s in p["samples"]] for p in problems])
    return summarize(
        field("correct"),
        field("length"),
        field("finish") == "length",
        np.array([p["maj_correct"] for p in problems]),
        ks,
    )


def _results(problems: list[dict], samples: list, n: int, ks: Sequence[int]) -> dict:
    """The overall summary, one per source and one per file, the problems and kept samples."""
    by_source: dict[str, list] = defaultdict(list)
    by_file: dict[str, list] = defaultdict(list)
    for p in problems:
        by_source[p["source"]].append(p)
        if p["file"] is not None:
            by_file[p["file"]].append(p)
    out = {"n": n, "ks": sorted(set(ks)), **_summary_of(problems, ks)}
    out["by_source"] = {s: _summary_of(ps, ks) for s, ps in sorted(by_source.items())}
    out["by_file"] = {f: _summary_of(ps, ks) for f, ps in by_file.items()}  # in --data order
    out["per_problem"] = problems
    out["samples"] = samples
    return out


def table(results: dict) -> str:
    """A markdown table: one row per file (two or more files), else per source, then the total.
    Columns: avg@n, the pass@k asked for and maj@n (n > 1), mean length, truncated share."""
    n, ks = results["n"], results["ks"]
    cols = [f"pass@{k}" for k in ks]
    if n > 1:
        cols = [f"avg@{n}", *cols, f"maj@{n}"]
    cols += ["mean_length", "truncated_frac"]
    head = ["problems", *cols]
    lines = ["| data | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    files = results.get("by_file") or {}
    rows = list((files if len(files) > 1 else results["by_source"]).items())
    if len(rows) > 1 or not rows:
        rows.append(("all", results))
    for name, r in rows:
        cells = [str(r["problems"])] + [f"{r[c]:.3f}" for c in cols]
        cells[-2] = f"{r['mean_length']:.1f}"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ints(text: str, flag: str) -> list[int]:
    """A comma list of integers ("1,8") from a flag's value."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, e.g. 1,8; got {text!r}") from None


def settings(args: argparse.Namespace) -> tuple[list[str], int, list[int], float]:
    """The data files, n, the k of pass@k and the temperature `redjax eval` runs with:
    n defaults to the largest k (else 1), k to n, the temperature to 0 if n = 1 else 0.6."""
    files = [p.strip() for arg in args.data for p in arg.split(",") if p.strip()]
    if len(set(files)) < len(files):
        raise ValueError(f"--data names a file twice: {files}")
    ks = _ints(args.k, "--k") if args.k else []
    n = args.n if args.n is not None else max(ks, default=1)
    ks = ks or [n]
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if n == 1 else 0.6
    check_settings(n, ks, temperature)
    return files, n, ks, temperature


def main(args: argparse.Namespace) -> None:
    """`redjax eval`: load a model folder or run folder, score benchmark files on every device,
    print a table; --json also writes the per-problem results (and the table beside it)."""
    from redjax import config, rewards, runs, sharding
    from redjax.data import load_records

    files, n, ks, temperature = settings(args)  # bad flags fail before the model loads
    model, tokenizer, extra = runs.load_model(args.model, dtype=args.dtype)
    records = []
    for path in files:
        recs = load_records(path, fields=args.fields)
        records += [{**r, "file": path} for r in (recs[: args.limit] if args.limit else recs)]
    suffix = extra["prompt_suffix"] if args.prompt_suffix is None else args.prompt_suffix
    extract = extra["reward_extract"]
    # answers only: the run's deciding entry alone; workers and time-out: the section's defaults
    rw = config.RewardCfg(fns=extra["reward_fns"], extract=extract)
    with rewards.Verifier.from_config(rw) as verifier:
        results = evaluate(
            model.params,
            model.cfg,
            tokenizer,
            records,
            verifier,
            n=n,
            ks=ks,
            temperature=temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            prompt_suffix=suffix,
            chat=not args.raw and extra["chat"],  # a run folder: as it trained
            system=extra["system"],
            seed=args.seed,
            extract=extract,
            mesh=sharding.make_mesh(),  # every device on the data axis, as the trainer's rows
            progress=True,
        )
    text = table(results)
    print(text)
    if args.json:
        keys = ("model", "top_p", "max_new_tokens", "seed", "batch_size", "limit")
        run = {k: getattr(args, k) for k in keys} | {"temperature": temperature, "extract": extract}
        _write(args.json, {"settings": run, **results}, text)


def _write(path: str, results: dict, text: str) -> None:
    """The results as JSON at `path`, the table as markdown beside it (same name, .md)."""
    md = os.path.splitext(path)[0] + ".md"
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    with open(md, "w") as f:
        f.write(text + "\n")
    print(f"results written to {path} and {md}")
