"""Train-step throughput: step time, tokens per second, model FLOPs utilisation and peak device
memory of the RED step, per attention implementation, and the cost of the RED additions
(Extend rows, entropy probe) against a plain GRPO step.

    python bench/step.py                       # tiny model, CPU, about a minute
    python bench/step.py --size qwen2.5-0.5b --rows 64 --prompt-len 256 --resp-len 512 \
        --dtype bfloat16 --remat full --peak-tflops 989   # H100 bf16 dense peak
    python bench/step.py ... --attention all --variants red --timeout 150   # bench/gpu.sh

--attention picks the implementation (ModelConfig.attention): auto, xla, cudnn, splash,
chunked, a comma list, or `all` = every one that runs on this backend (cudnn: an NVIDIA GPU in
bfloat16 / float16; splash: a TPU; xla and chunked: everywhere). --variants picks rows among
red (Extend rows + probe), red-no-probe, grpo (all rows online, no probe) and red-lora (the RED
step training rank --lora-rank adapters on every projection of a base frozen in the compute
dtype); the GRPO row runs first so that the others print their cost against it.

Peak device memory is `peak_bytes_in_use` of `jax.devices()[0].memory_stats()` ("n/a" where
that is None, as on CPU). It is a peak over the life of a process, so when the device reports
it (or with --isolate) each row runs in a child process of its own, and this process leaves the
devices to them (a child tells it what they are). A row that fails (out of memory, a crash,
past --timeout seconds) prints what happened and the run goes on. Prints a markdown table whose
rows appear as they finish.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from redjax import lora, sharding, step
from redjax.config import Config, LoraCfg, OptimCfg
from redjax.models import ModelConfig, init_params
from redjax.rows import Rows, make_rows

SIZES = {
    "tiny": dict(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=384,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        qkv_bias=True,
        tie_embeddings=True,
    ),
}
IMPLEMENTATIONS = ("xla", "cudnn", "splash", "chunked")  # ModelConfig.attention, besides auto
VARIANTS = {  # name: (label, every row online, entropy probe); grpo first: the reference
    "grpo": ("plain GRPO step (all rows online, no probe)", True, False),
    "red-no-probe": ("RED step without probe", False, False),
    "red": ("RED step (Extend rows + probe)", False, True),
    "red-lora": ("RED step, LoRA adapters on a frozen base", False, True),
}
RESULT = "RESULT "  # prefix of the line a child process reports its result on


def rows(n, p, c, vocab, offline_frac, seed=0) -> Rows:
    """n synthetic rows of p prompt + c response tokens, the first `offline_frac` offline."""
    rng = np.random.default_rng(seed)
    return make_rows(
        prompt_ids=rng.integers(0, vocab, (n, p)),
        prompt_mask=np.ones((n, p), bool),
        resp_ids=rng.integers(0, vocab, (n, c)),
        resp_mask=np.ones((n, c), bool),
        online=np.arange(n) >= int(round(n * offline_frac)),
        adv=rng.normal(size=n),
        shift=rng.uniform(size=n),
        old_logp=np.full((n, c), -3.0),
        ref_logp=np.full((n, c), -3.0),
    )


def train_flops(cfg: ModelConfig, n: int, t: int, c: int) -> float:
    """6 * params * tokens for the matmuls, plus attention scores, for forward + backward."""
    dense = cfg.num_params - cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
    matmul = 6 * n * (dense * t + cfg.vocab_size * cfg.hidden_size * c)
    attn = 6 * n * cfg.num_layers * 2 * t * t * cfg.num_heads * cfg.head_dim / 2  # causal
    return matmul + attn


def runs_here(name: str, dtype: str, device: jax.Device) -> bool:
    """Whether an attention implementation can run on this device at this compute dtype."""
    if name == "cudnn":
        nvidia = device.platform == "gpu" and "nvidia" in device.device_kind.lower()
        return nvidia and dtype in ("bfloat16", "float16")
    if name == "splash":
        return device.platform == "tpu"
    return name in ("auto", "xla", "chunked")


def pick_attention(choice: str, dtype: str, device: jax.Device) -> list[str]:
    """The implementations --attention names: `all` = every one that runs here, else a list."""
    if choice == "all":
        return [a for a in IMPLEMENTATIONS if runs_here(a, dtype, device)]
    names = [a.strip() for a in choice.split(",") if a.strip()]
    bad = [a for a in names if a not in ("auto", *IMPLEMENTATIONS)]
    if bad or not names:
        raise SystemExit(f"--attention: unknown {bad or choice!r}; one of auto, "
                         f"{', '.join(IMPLEMENTATIONS)}, all, or a comma list")  # fmt: skip
    return names


def pick_variants(choice: str) -> list[str]:
    names = [v.strip() for v in choice.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SystemExit(f"--variants: unknown {bad or choice!r}; a comma list of {list(VARIANTS)}")
    return [v for v in VARIANTS if v in names]  # the reference (grpo) first


def setup(cfg: ModelConfig, args, variant: str):
    """(jitted train step, initial state, device batch) of one variant at the args' shape."""
    mesh = sharding.make_mesh()
    n, p, c = args.rows, args.prompt_len, args.resp_len
    base = rows(n, p, c, cfg.vocab_size, args.offline_frac)
    _, all_online, probe = VARIANTS[variant]
    r = base.replace(online=np.ones(n, bool)) if all_online else base
    tx = step.make_optimizer(OptimCfg(lr=1e-6, warmup_steps=0, weight_decay=0.0), 100)
    shapes = jax.eval_shape(lambda: init_params(cfg))
    params = jax.jit(
        lambda: init_params(cfg), out_shardings=sharding.param_shardings(shapes, mesh)
    )()
    base = None
    if variant == "red-lora":  # the weights frozen in the compute dtype; adapters trained
        spec = lora.LoraSpec.from_config(LoraCfg(rank=args.lora_rank))
        cfg = cfg.replace(lora_alpha=spec.alpha)
        base = jax.tree.map(lambda w: w.astype(cfg.dtype), params)
        params = lora.placed_adapters(cfg, spec, 1, mesh)
    state, sh = step.init_state(params, tx, mesh)
    sc = step.StepConfig.from_config(
        Config(), chunk=args.chunk, micro_batches=args.micro_batches, probe=probe
    )
    fn = step.jit_train_step(cfg, sc, tx, sh, mesh)
    idx = step.probe_rows(r.online, 0.25, sharding.data_shards(mesh))
    run = fn if base is None else (lambda *a: fn(*a, base))  # the jitted step where no base
    return run, state, sharding.put_local(r.with_probe(idx), mesh)


def peak_bytes() -> int | None:
    """Peak device memory of this process so far (None where the device does not say)."""
    stats = jax.devices()[0].memory_stats()
    return None if stats is None else stats.get("peak_bytes_in_use")


def measure(cfg: ModelConfig, args, variant: str) -> dict:
    """Mean step time over --iters steps after one compile step, and the memory peak."""
    fn, state, batch = setup(cfg, args, variant)
    lr = jnp.float32(1.0)
    state, m = fn(state, batch, lr)  # compile
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(args.iters):
        state, m = fn(state, batch, lr)
    jax.block_until_ready(m)
    return {"step_s": (time.perf_counter() - t0) / args.iters, "peak": peak_bytes()}


def measure_safely(cfg: ModelConfig, args, variant: str) -> dict:
    try:
        return measure(cfg, args, variant)
    except Exception as e:  # out of memory, an implementation this build lacks: a row says so
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:150]}"}


def _child(args, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, os.path.abspath(__file__), *args.argv, *extra]
    return subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=args.timeout)


def _reported(out: subprocess.CompletedProcess) -> dict | None:
    found = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT)]
    return json.loads(found[-1][len(RESULT) :]) if found else None


def measure_isolated(args, attention: str, variant: str) -> dict:
    """One row in a child process of this script (its own memory peak, crashes contained)."""
    try:
        out = _child(args, ["--attention", attention, "--variants", variant, "--child", "row"])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:g} s"}
    res = _reported(out)
    return res if res is not None else {"error": f"child process exited with code {out.returncode}"}


def device_info() -> dict:
    """Platform, kind and count of this process's devices, and whether they report memory."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "count": jax.device_count(),
        "memory": peak_bytes() is not None,
    }


def probe_devices(args) -> dict:
    """device_info from a child process: this one must leave the devices free for the rows'
    (a TPU opens in one process at a time; a GPU's memory goes to the first that asks)."""
    try:
        out = _child(args, ["--child", "devices"])
    except subprocess.TimeoutExpired:
        raise SystemExit(
            f"jax did not start in a child process within {args.timeout:g} s"
        ) from None
    info = _reported(out)
    if info is None:
        raise SystemExit(f"could not start jax in a child process (exit code {out.returncode})")
    return info


def row(cfg, args, name: str, variant: str, res: dict, ref: float | None, devices: int = 1) -> str:
    """One markdown row: step time, response tokens/s, MFU, peak memory, cost vs GRPO."""
    label = f"| {name} | {VARIANTS[variant][0]} |"
    if "error" in res:
        return f"{label} failed: {res['error'].replace('|', '/')} | | | | |"
    n, p, c, dt = args.rows, args.prompt_len, args.resp_len, res["step_s"]
    mfu = "n/a"
    if args.peak_tflops:
        mfu = f"{train_flops(cfg, n, p + c, c) / dt / (args.peak_tflops * 1e12 * devices):.1%}"
    peak = "n/a" if res.get("peak") is None else f"{res['peak'] / 2**30:.2f}"
    vs = "n/a" if ref is None else f"{dt / ref:.2f}x"
    return f"{label} {dt:.3f} | {n * c / dt:,.0f} | {mfu} | {peak} | {vs} |"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--resp-len", type=int, default=64)
    ap.add_argument("--lora-rank", type=int, default=16, help="adapters' rank (red-lora)")
    ap.add_argument("--offline-frac", type=float, default=0.125, help="share of teacher rows")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="per device, for MFU")
    ap.add_argument("--attention", default="auto", help="auto|xla|cudnn|splash|chunked|all|a,b")
    ap.add_argument("--variants", default="grpo,red-no-probe,red", help="comma list")
    ap.add_argument("--isolate", action="store_true", help="each row in a child process")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per isolated row")
    ap.add_argument("--child", choices=["row", "devices"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = ModelConfig(**SIZES[args.size], dtype=args.dtype, remat=args.remat)
    variants = pick_variants(args.variants)
    if args.child == "devices":
        print(RESULT + json.dumps(device_info()), flush=True)
        return
    if args.child == "row":  # one row, reported to the parent process
        res = measure_safely(cfg.replace(attention=args.attention), args, variants[0])
        print(RESULT + json.dumps(res), flush=True)
        return
    info = probe_devices(args)
    isolate = args.isolate or info["memory"]  # else this process runs the rows (CPU)
    names = pick_attention(args.attention, args.dtype, SimpleNamespace(**info))
    n, p, c = args.rows, args.prompt_len, args.resp_len
    print(
        f"\nmodel {args.size} ({cfg.num_params / 1e6:.1f}M params), {n} rows x "
        f"({p} prompt + {c} response) tokens, {args.dtype}, remat {args.remat}, "
        f"{info['count']} x {info['device_kind']}, jax {jax.__version__}\n"
    )
    print(
        "| attention | variant | step s | response tokens/s | MFU | peak memory GiB | vs plain GRPO |"
    )
    print("|---|---|---|---|---|---|---|", flush=True)
    for name in names:
        ref = None
        for v in variants:
            if isolate:
                res = measure_isolated(args, name, v)
            else:
                res = measure_safely(cfg.replace(attention=name), args, v)
            if v == "grpo" and "error" not in res:
                ref = res["step_s"]
            print(row(cfg, args, name, v, res, ref, info["count"]), flush=True)


if __name__ == "__main__":
    main()
