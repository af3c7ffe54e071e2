"""Train-step throughput: tokens per second and model FLOPs utilisation of the RED step, and
the cost of the RED additions (Extend rows, entropy probe) against a plain GRPO step.

    python bench/step.py                       # tiny model, CPU, about a minute
    python bench/step.py --size qwen2.5-0.5b --rows 64 --prompt-len 256 --resp-len 512 \
        --dtype bfloat16 --remat full --peak-tflops 989   # H100 bf16 dense peak

Prints a markdown table. Same model, batch shape and mesh for every variant, in one run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from redjax import sharding, step
from redjax.config import Config, OptimCfg
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--resp-len", type=int, default=64)
    ap.add_argument("--offline-frac", type=float, default=0.125, help="share of teacher rows")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--micro-batches", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="per device, for MFU")
    args = ap.parse_args()

    cfg = ModelConfig(**SIZES[args.size], dtype=args.dtype, remat=args.remat)
    mesh = sharding.make_mesh()
    n, p, c = args.rows, args.prompt_len, args.resp_len
    base = rows(n, p, c, cfg.vocab_size, args.offline_frac)
    variants = {
        "RED step (Extend rows + probe)": (base, True),
        "RED step without probe": (base, False),
        "plain GRPO step (all rows online, no probe)": (
            base.replace(online=np.ones(n, bool)),
            False,
        ),
    }
    tx = step.make_optimizer(OptimCfg(lr=1e-6, warmup_steps=0, weight_decay=0.0), 100)
    shapes = jax.eval_shape(lambda: init_params(cfg))
    results = []
    for name, (r, probe) in variants.items():
        params = jax.jit(
            lambda: init_params(cfg), out_shardings=sharding.param_shardings(shapes, mesh)
        )()
        state, sh = step.init_state(params, tx, mesh)
        sc = step.StepConfig.from_config(
            Config(), chunk=args.chunk, micro_batches=args.micro_batches, probe=probe
        )
        fn = step.jit_train_step(cfg, sc, tx, sh, mesh)
        idx = step.probe_rows(r.online, 0.25, sharding.data_shards(mesh))
        batch = sharding.put_local(r.with_probe(idx), mesh)
        state, m = fn(state, batch, jnp.float32(1.0))  # compile
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            state, m = fn(state, batch, jnp.float32(1.0))
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / args.iters
        results.append((name, dt))
        del state

    flops = train_flops(cfg, n, p + c, c)
    ref = results[-1][1]
    print(
        f"\nmodel {args.size} ({cfg.num_params / 1e6:.1f}M params), {n} rows x "
        f"({p} prompt + {c} response) tokens, {args.dtype}, remat {args.remat}, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}\n"
    )
    print("| variant | step s | response tokens/s | MFU | vs plain GRPO |")
    print("|---|---|---|---|---|")
    for name, dt in results:
        mfu = (
            f"{flops / dt / (args.peak_tflops * 1e12 * jax.device_count()):.1%}"
            if args.peak_tflops
            else "n/a"
        )
        print(f"| {name} | {dt:.3f} | {n * c / dt:,.0f} | {mfu} | {dt / ref:.2f}x |")


if __name__ == "__main__":
    main()
