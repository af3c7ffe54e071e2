"""Communication of the train step and the sampler: bytes of collectives per device, by mesh.

Compiles (never runs) the RED train step for 8 virtual CPU devices from abstract shapes, so a
Qwen2.5-0.5B-shaped step needs no memory for weights, and reads the collectives out of the
compiled program (bench/hlo.py). What data parallelism must move is one
gradient reduction (1x the parameter bytes); FSDP adds the per-layer weight all-gathers of the
forward, the backward and the probe.

The sampler's table: one prefill of 64 prompts of 256 tokens (bfloat16 decode weights) and one
decode step (the decode loop's body: the loop's length is not known when it compiles).

    python bench/comms.py                              # Qwen2.5-0.5B shape, about a minute
    python bench/comms.py --size tiny --rows 64 --prompt-len 16 --resp-len 64
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The repository root, so that `bench` imports as a package (bench.step never shadows
# redjax.step), whether this runs as `python bench/comms.py` or `python -m bench.comms`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from bench.hlo import collective_bytes  # noqa: E402
from bench.step import SIZES, rows  # noqa: E402
from redjax import sampler, sharding, step  # noqa: E402
from redjax.config import Config, OptimCfg  # noqa: E402
from redjax.models import ModelConfig, init_params  # noqa: E402

MESHES = ((8, 1, 1), (2, 4, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2))


def abstract_inputs(cfg: ModelConfig, mesh, tx, n: int, p: int, c: int):
    """The train state and bench/step.py's batch of n rows (a quarter probed) as sharded
    ShapeDtypeStructs."""
    shapes = jax.eval_shape(lambda: init_params(cfg))
    param_sh = sharding.param_shardings(shapes, mesh)
    sh = step.state_shardings(shapes, param_sh, tx, mesh)
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    state = {
        "params": jax.tree.map(sds, shapes, param_sh),
        "opt_state": jax.tree.map(sds, jax.eval_shape(tx.init, shapes), sh["opt_state"]),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sh["step"]),
    }
    host = rows(n, p, c, cfg.vocab_size, offline_frac=0.125)
    host = host.with_probe(step.probe_rows(host.online, 0.25, sharding.data_shards(mesh)))
    by_rows = NamedSharding(mesh, P(sharding.batch_axes(mesh)))
    return state, sh, jax.tree.map(lambda x: sds(x, by_rows), host)


def sampler_bytes(cfg: ModelConfig, mesh, rows: int, prompt: int, new: int) -> tuple[int, int]:
    """Collective bytes of one prefill and of one decode step, from abstract inputs."""
    typed = lambda tree, shardings: jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )
    shapes = jax.eval_shape(lambda: init_params(cfg))
    params = typed(shapes, sharding.param_shardings(shapes, mesh))
    unstack = sampler._unstack.lower(params, cfg.dtype, False, False, 0.0).compile()
    out = jax.eval_shape(lambda p: sampler.unstack_layers(p, cfg.dtype), params)
    params = typed(out, unstack.output_shardings)
    cfg = cfg.replace(param_dtype=cfg.dtype)
    mode, knobs = sampler._split(
        sampler.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new),
        cfg.vocab_size,
    )
    row = NamedSharding(mesh, P(sharding.batch_axes(mesh), None))
    ids = jax.ShapeDtypeStruct((rows, prompt), jnp.int32, sharding=row)
    mask = jax.ShapeDtypeStruct((rows, prompt), bool, sharding=row)
    static = dict(cfg=cfg, mode=mode, group=1, rows=rows, live=rows, mesh=mesh)
    static.update(slots=prompt + new, width=new)
    args = (params, ids, mask, np.uint32(0), knobs)
    prefill = sampler._prefill.lower(*args, **static).compile()
    state = typed(
        jax.eval_shape(lambda *a: sampler._prefill(*a, **static), *args), prefill.output_shardings
    )
    decode = sampler._decode.lower(
        params, state, np.int32(new), knobs, cfg=cfg, mode=mode, mesh=mesh
    )
    prefill_bytes = collective_bytes(prefill.as_text())
    return prefill_bytes, collective_bytes(decode.compile().as_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="qwen2.5-0.5b", choices=list(SIZES))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--resp-len", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    args = ap.parse_args()

    cfg = ModelConfig(**SIZES[args.size], dtype="bfloat16", remat=args.remat)
    tx = step.make_optimizer(OptimCfg(lr=1e-6, warmup_steps=0, weight_decay=0.0), 100)
    param_bytes = 4 * cfg.num_params
    print(
        f"model {args.size} ({cfg.num_params / 1e6:.1f}M float32 params, bfloat16 compute, "
        f"remat {args.remat}), {args.rows} rows x ({args.prompt_len} + {args.resp_len}) tokens, "
        f"chunk {args.chunk}, 8 virtual CPU devices, jax {jax.__version__}\n"
    )
    print("| mesh (data, fsdp, tensor) | collectives per step and device | x parameter bytes |")
    print("|---|---:|---:|")
    for shape in MESHES:
        mesh = sharding.make_mesh(*shape)
        state, sh, batch = abstract_inputs(cfg, mesh, tx, args.rows, args.prompt_len, args.resp_len)
        sc = step.StepConfig.from_config(Config(), chunk=args.chunk, probe=True)
        fn = step.jit_train_step(cfg, sc, tx, sh, mesh)
        hlo = fn.lower(state, batch, jax.ShapeDtypeStruct((), jnp.float32)).compile().as_text()
        moved = collective_bytes(hlo)
        print(f"| {shape} | {moved / 1e9:.2f} GB | {moved / param_bytes:.1f} |", flush=True)

    print(f"\nsampler: {args.rows} prompts x {args.prompt_len} tokens, {args.resp_len} new\n")
    print("| mesh (data, fsdp, tensor) | prefill | one decode step |")
    print("|---|---:|---:|")
    for shape in MESHES:
        mesh = sharding.make_mesh(*shape)
        pre, dec = sampler_bytes(cfg, mesh, args.rows, args.prompt_len, args.resp_len)
        print(f"| {shape} | {pre / 1e9:.2f} GB | {dec / 1e6:.1f} MB |", flush=True)


if __name__ == "__main__":
    main()
