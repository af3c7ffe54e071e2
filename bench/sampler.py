"""Decode throughput of the redjax sampler vs transformers `generate`, and the bandwidth floor.

Both run greedy on the same random-weight model (Qwen2 architecture), the same prompts and the
same number of new tokens, in this process. Decode throughput is (new tokens - 1) x batch over
the time of a full run minus the time of a one-token run (prefill + first token). The floor is
the time to read, once per decode step, the weights and the KV cache of the real context from
memory at the device's bandwidth (--bandwidth, or a per-device default; on CPU a measured numpy
memcpy).

    python bench/sampler.py                        # tiny model on CPU, about a minute
    python bench/sampler.py --size qwen2.5-0.5b --batch 32 --dtype bfloat16

--ragged PROMPTSxGROUPxPROMPT_LENxNEW_TOKENS adds the trainer's case (e.g. 64x8x256x1024: 512
rollouts): sampled at temperature 1 with lengths that spread, reported as useful (generated)
tokens per second, for the sampler as it is and with its cache growth and row compaction
switched off (the decode of before), in the same run.

--decode-attention xla,pallas times the greedy rollouts once per decode-step attention kernel
(XLA's einsums, the Pallas kernel that skips unfilled cache blocks); --attention-table times
only a decode step's attention with each, at a quarter, half and all of the generation filled.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time

import numpy as np

SIZES = {
    "tiny": dict(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
    ),
}  # fmt: skip
KERNELS = ("xla", "pallas")  # --decode-attention: ModelConfig.decode_attention values
BANDWIDTH = {  # bytes/s of device memory, by substring of jax's device_kind
    "H200": 4.8e12,
    "H100": 3.35e12,
    "A100": 2.0e12,
    "L4": 3.0e11,
    "TPU v4": 1.2e12,
    "TPU v5 lite": 8.19e11,
    "TPU v5e": 8.19e11,
    "TPU v5p": 2.76e12,
    "TPU v6": 1.64e12,
}


def memcpy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Host memory bandwidth (bytes read + written per second) of a numpy copy."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def device_bandwidth(flag: float | None) -> tuple[float, str]:
    import jax

    if flag:
        return flag, "--bandwidth"
    kind = jax.devices()[0].device_kind
    for name, bw in BANDWIDTH.items():
        if name.lower() in kind.lower():
            return bw, f"spec sheet ({name})"
    if jax.default_backend() == "cpu":
        return memcpy_bandwidth(), "numpy memcpy"
    raise SystemExit(f"no default bandwidth for device {kind!r}: pass --bandwidth B/s")


def reread(bandwidth: float, source: str) -> float:
    """After the timed runs: the higher of `bandwidth` and a fresh reading, when the floor is a
    measured memcpy (on a shared host a neighbour's burst can halve one reading, which would
    flatter the % of floor)."""
    return max(bandwidth, memcpy_bandwidth()) if source == "numpy memcpy" else bandwidth


def floor_step_seconds(cfg, batch: int, context: float, bandwidth: float) -> float:
    """Seconds to read the weights once and the KV cache of `context` tokens per row."""
    size = np.dtype(cfg.param_dtype).itemsize
    weights = cfg.num_params * size
    if not cfg.tie_embeddings:  # the input embedding is gathered (batch rows), not streamed
        weights -= cfg.vocab_size * cfg.hidden_size * size
    kv = 2 * cfg.num_layers * batch * context * cfg.num_kv_heads * cfg.head_dim
    kv *= np.dtype(cfg.dtype).itemsize
    return (weights + kv) / bandwidth


def ragged_floor_seconds(cfg, lengths: np.ndarray, prompt: int, bandwidth: float) -> float:
    """Seconds to read, at every decode step while some row runs, the weights once and the KV
    cache of the running rows only (prompt + tokens so far each); the prefill is left out."""
    size = np.dtype(cfg.param_dtype).itemsize
    weights = cfg.num_params * size
    if not cfg.tie_embeddings:
        weights -= cfg.vocab_size * cfg.hidden_size * size
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize
    steps = np.arange(1, int(lengths.max()))
    live = (lengths[None, :] > steps[:, None]).sum(axis=1)
    return float((len(steps) * weights + per_token * (live * (prompt + steps)).sum()) / bandwidth)


def decode_bytes(params, cfg, batch: int, prompt: int, slots: int, width: int) -> float:
    """Bytes one compiled greedy decode step accesses, by XLA's cost analysis of the sampler's
    decode program for `batch` rows of `prompt` tokens, a cache of `slots` and token buffers of
    `width` (the loop body counted once; compiled from the shapes, nothing runs): a
    device-independent check that a step reads each weight and cache entry about once."""
    import jax
    import jax.numpy as jnp

    from redjax import sampler

    sp = sampler.SamplingParams(temperature=0, top_k=0, top_p=1.0, max_new_tokens=width)
    mode, knobs = sampler._split(sp, cfg.vocab_size)
    params = jax.eval_shape(lambda p: sampler.decode_params(p, cfg), params)
    ids = jax.ShapeDtypeStruct((batch, prompt), jnp.int32)
    prefill = lambda p, i: sampler._prefill(
        p, i, jnp.ones(i.shape, bool), 0, 0, knobs, cfg=cfg, mode=mode, group=1, rows=batch,
        live=batch, slots=slots, width=width, mesh=None,
    )  # fmt: skip
    state = jax.eval_shape(prefill, params, ids)
    step = sampler._decode.lower(params, state, 2, knobs, cfg=cfg, mode=mode, mesh=None)
    cost = step.compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["bytes accessed"])


def print_bytes(model, batch: int, prompt: int, new: int, bandwidth: float) -> None:
    """The compiled decode step's bytes (`decode_bytes`) against the weights and whole cache."""
    from redjax.shapes import sampler_bucket

    slots = sampler_bucket(prompt) + sampler_bucket(new)  # a full-length sample's cache
    whole = floor_step_seconds(model.cfg, batch, slots, bandwidth) * bandwidth
    used = decode_bytes(model.params, model.cfg, batch, prompt, slots, sampler_bucket(new))
    print(f"\ncompiled decode step (XLA cost analysis), batch {batch}: {used / 1e9:.3f} GB "
          f"accessed per step; the weights and the whole cache ({slots} slots) are "
          f"{whole / 1e9:.3f} GB: {used / whole:.2f}x")  # fmt: skip


def stop_ids(vocab: int, new_tokens: int) -> tuple[int, ...]:
    """Token ids that end a rollout: vocab * 3 / new_tokens of them (fixed seed), so that at
    near-uniform sampling a row ends after new_tokens / 3 tokens on average (5% run full)."""
    k = max(1, round(3 * vocab / new_tokens))
    return tuple(int(i) for i in np.random.default_rng(1).choice(np.arange(1, vocab), k, False))


def ragged(model, shape: str, repeats: int, bandwidth: float, source: str) -> None:
    """The trainer's case: useful tokens per second with and without compaction, one run."""
    from redjax import sampler

    prompts, group, plen, new = (int(x) for x in shape.split("x"))
    cfg = model.cfg
    ids = np.random.default_rng(2).integers(1, cfg.vocab_size, (prompts, plen)).astype(np.int32)
    sp = sampler.SamplingParams(
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new,
        eos_ids=stop_ids(cfg.vocab_size, new),
    )
    variants = {
        "redjax sample (cache grown to the longest row, finished rows compacted)": (True, True),
        "redjax, cache grown, no compaction": (True, False),
        "redjax, whole-budget cache, no compaction (the decode before)": (False, False),
    }
    print(f"\n## ragged rollouts: {prompts} prompts x {group} = {prompts * group} rows, prompt "
          f"{plen}, up to {new} new tokens, temperature 1, {len(sp.eos_ids)} stop ids")  # fmt: skip
    results = {}
    for name, (seg, compact) in variants.items():
        sampler.SEGMENTED, sampler.COMPACT = seg, compact
        run = lambda: sampler.sample(model.params, cfg, ids, None, num_samples=group, sp=sp, seed=0)
        total = timed(run, repeats)
        out = run()
        results[name] = (out.lengths.sum() / total, total, out)
    sampler.SEGMENTED = sampler.COMPACT = True
    bandwidth = reread(bandwidth, source)
    print("\n| implementation | total (s) | useful tokens | useful tok/s | % of floor |")
    print("|---|---:|---:|---:|---:|")
    for name, (useful, total, out) in results.items():
        floor = out.lengths.sum() / ragged_floor_seconds(cfg, out.lengths, plen, bandwidth)
        print(f"| {name} | {total:.3f} | {out.lengths.sum():,} | {useful:,.0f} "
              f"| {100 * useful / floor:.1f} |")  # fmt: skip
    (now, _, a), _, (before, _, b) = results.values()
    same = all(np.array_equal(o.tokens, a.tokens) for _, _, o in results.values())
    lengths = a.lengths
    print(f"\nlengths: min {lengths.min()}, median {int(np.median(lengths))}, max {lengths.max()}"
          f"; tokens identical across the three: {'yes' if same else 'NO'}")  # fmt: skip
    print(f"compaction + cache growth / before, useful tok/s: {now / before:.2f}x")


def layouts(size: str, repeats: int, bandwidth: float, rows: int = 4) -> None:
    """GB/s at which XLA's matmul reads each decode weight of `size` at `rows` rows, stored
    [in, out] or [out, in] (`transformer.transpose_kernels`; as a plain dot and as the sampler's
    `matmul_t`), beside a plain read (a sum) of the same bytes. Each weight is cycled over
    copies of ~800 MB, so none stays in cache; CPU seconds per wall second show how many threads
    the [in, out] matmuls used."""
    import jax
    import jax.numpy as jnp

    from redjax.models.transformer import matmul_t

    c = SIZES[size]
    d, f, h, kv = (c[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                  "num_key_value_heads"))  # fmt: skip
    shapes = {"qkv": (d, (h + 2 * kv) * d // h), "o": (d, d), "gate_up": (d, 2 * f),
              "down": (f, d), "lm_head": (d, c["vocab_size"])}  # fmt: skip
    print(f"\n## matmul layouts: {size} weights, float32, {rows} rows; memcpy "
          f"{bandwidth / 1e9:.1f} GB/s\n\n| weight | [in, out] | copies | [in, out] GB/s "
          "| [out, in] GB/s | [out, in] matmul_t GB/s | sum GB/s | CPU-s per s |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for name, (k, n) in shapes.items():
        copies = max(2, int(8e8 // (4 * k * n)))
        key = jax.random.key(0)
        ws = [jax.random.normal(jax.random.fold_in(key, i), (k, n)) for i in range(copies)]
        wts = [w.T.copy() for w in ws]
        x, nbytes = jnp.ones((rows, k)), 4 * k * n * copies
        rate = lambda fn, arg, x=x, nbytes=nbytes: (
            nbytes / timed(lambda: jax.block_until_ready(fn(x, arg)), repeats)
        )
        matmul = jax.jit(lambda x, ws: [x @ w for w in ws])
        jax.block_until_ready(matmul(x, ws))  # compiled outside the CPU-time window
        cpu0, wall0 = time.process_time(), time.perf_counter()
        a = rate(matmul, ws)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        b = rate(jax.jit(lambda x, ws: [x @ w.T for w in ws]), wts)
        t = rate(jax.jit(lambda x, ws: [matmul_t(x, w) for w in ws]), wts)
        read = rate(jax.jit(lambda x, ws: [w.sum() for w in ws]), ws)
        print(f"| {name} | {k} x {n} | {copies} | {a / 1e9:.1f} | {b / 1e9:.1f} | {t / 1e9:.1f} "
              f"| {read / 1e9:.1f} | {cpu:.2f} |")  # fmt: skip
        del ws, wts


def attention_table(size: str, dtype: str, batch: int, prompt: int, new: int, repeats: int,
                    bandwidth: float, kernels: list[str]) -> None:  # fmt: skip
    """A decode step's attention alone: every layer's `attention.cached` (one query per row over
    a per-layer heads-major cache of a full-length sample's slots) with each of `kernels`, at a
    quarter, half and all of the generation filled: time per step and GB/s of the filled cache
    read. Off a GPU the Pallas kernel runs in interpret mode (its time means nothing there)."""
    import jax
    import jax.numpy as jnp

    from redjax.models import attention
    from redjax.shapes import sampler_bucket

    c = SIZES[size]
    h, kv, layers = c["num_attention_heads"], c["num_key_value_heads"], c["num_hidden_layers"]
    d = c["hidden_size"] // h
    slots = sampler_bucket(prompt) + sampler_bucket(new)
    keys = iter(jax.random.split(jax.random.key(0), 2 * layers + 1))
    rand = lambda *shape: jax.random.normal(next(keys), shape, dtype)
    q = rand(batch, 1, h, d)
    ks, vs = ([rand(batch, kv, slots, d) for _ in range(layers)] for _ in range(2))
    item = jnp.dtype(dtype).itemsize
    print(f"\n## decode attention: {layers} layers x [{batch} rows, {kv} kv heads, {slots} slots, "
          f"{d}], {h} query heads, {dtype}; bandwidth {bandwidth / 1e9:.0f} GB/s\n\n| kernel "
          "| filled slots | ms per step | GB/s of the filled cache | % of bandwidth |\n"
          "|---|---:|---:|---:|---:|")  # fmt: skip
    for kernel in kernels:

        @jax.jit
        def step(q, ks, vs, mask, at, kernel=kernel):
            layer = lambda k, v: attention.cached(q, k, v, mask, at, kernel=kernel)
            return sum(layer(k, v) for k, v in zip(ks, vs, strict=True))

        for fill in (prompt + new // 4, prompt + new // 2, prompt + new):
            mask = jnp.broadcast_to(jnp.arange(slots) < fill, (batch, slots))
            args = (q, ks, vs, mask, jnp.int32(fill - 1))
            secs = timed(lambda args=args: jax.block_until_ready(step(*args)), repeats)
            read = 2 * layers * batch * kv * fill * d * item / secs
            print(f"| {kernel_label(kernel)} | {fill} | "
                  f"{1e3 * secs:.3f} | {read / 1e9:.1f} | {100 * read / bandwidth:.1f} |")  # fmt: skip


def kernel_label(kernel: str) -> str:
    """A --decode-attention kernel as a table row names it (off a GPU, Pallas interprets)."""
    import jax

    return kernel + " (interpret mode)" * (kernel == "pallas" and jax.default_backend() != "gpu")


def timed(fn, repeats: int) -> float:
    """Best wall time of fn() over `repeats` calls after one warm-up call: the machine's best, as
    the memcpy floor is (on a shared host a slow call measures the neighbours, not the code)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bandwidth", type=float, default=None, help="device bytes/s (default: known)")
    p.add_argument("--skip-torch", action="store_true", help="only time redjax")
    p.add_argument("--cpu-threads", type=int, default=1, help="on CPU: cores the process runs on")
    p.add_argument("--ragged", default=None, help="also PROMPTSxGROUPxPROMPT_LENxNEW_TOKENS")
    p.add_argument("--only-ragged", action="store_true", help="skip the greedy table")
    p.add_argument("--layouts", action="store_true", help="only the matmul layout table (CPU)")
    p.add_argument("--layout-rows", type=int, default=4, help="rows of the --layouts matmuls")
    p.add_argument("--only-bytes", action="store_true", help="only the compiled step's bytes")
    p.add_argument("--decode-attention", default="xla",
                   help="comma-separated decode-step attention kernels to time (xla, pallas)")  # fmt: skip
    p.add_argument("--attention-table", action="store_true",
                   help="only a decode step's attention, per --decode-attention kernel")  # fmt: skip
    args = p.parse_args()
    kernels = args.decode_attention.split(",")
    if not set(kernels) <= set(KERNELS):
        p.error(f"--decode-attention takes {', '.join(KERNELS)}, got {args.decode_attention}")

    import torch

    on_cpu = not torch.cuda.is_available()
    if on_cpu:  # the same cores for both libraries: the process is pinned to them (XLA's
        # library matmuls run on its own thread pool, which no flag sizes; pinning bounds it)
        cores = sorted(os.sched_getaffinity(0))[: args.cpu_threads]
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    import jax
    import transformers

    # Read before any JAX work (XLA's worker threads may still be busy after it, on the same
    # pinned cores), and again after the timed runs (`reread`).
    bandwidth, source = device_bandwidth(args.bandwidth)
    if args.attention_table:
        return attention_table(args.size, args.dtype, args.batch, args.prompt_len,
                               args.new_tokens, args.repeats, bandwidth, kernels)  # fmt: skip
    if args.layouts:
        return layouts(args.size, args.repeats, bandwidth, args.layout_rows)

    from redjax.models import from_pretrained
    from redjax.sampler import SamplingParams, sample

    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        **SIZES[args.size], max_position_embeddings=32768,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    torch_dtype = getattr(torch, args.dtype)
    torch_device = "cpu" if on_cpu else "cuda"
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).to(torch_dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = from_pretrained(tmp, args.dtype)
    hf = hf.to(torch_device)
    cfg, b, n = model.cfg, args.batch, args.new_tokens
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.vocab_size, (b, args.prompt_len)).astype(np.int32)
    mask = np.ones(ids.shape, bool)

    def jax_run(new, kernel="xla"):
        sp = SamplingParams(temperature=0, top_k=0, top_p=1.0, max_new_tokens=new)
        c = cfg.replace(decode_attention=kernel)
        return sample(model.params, c, ids, mask, num_samples=1, sp=sp, seed=0)

    if args.only_bytes:
        return print_bytes(model, b, args.prompt_len, n, bandwidth)
    if args.only_ragged:
        print(f"# sampler, ragged rollouts, {datetime.date.today()}: {args.size} "
              f"({cfg.num_params / 1e6:.1f}M params, {args.dtype}), jax {jax.__version__} on "
              f"{jax.devices()[0].device_kind}; bandwidth {bandwidth / 1e9:.1f} GB/s ({source})")  # fmt: skip
        return ragged(model, args.ragged, args.repeats, bandwidth, source)
    rows, tokens = [], {}
    for kernel in kernels:
        t1 = timed(lambda k=kernel: jax_run(1, k), args.repeats)
        tn = timed(lambda k=kernel: jax_run(n, k), args.repeats)
        tokens[kernel] = jax_run(n, kernel).tokens
        name = "" if kernel == "xla" else f", decode attention: {kernel_label(kernel)}"
        rows.append(("redjax sample" + name, t1, tn))
    ours = tokens[kernels[0]]
    match = None
    if not args.skip_torch:
        x = torch.tensor(ids, dtype=torch.long, device=torch_device)
        am = torch.ones_like(x)

        def torch_run(new):
            with torch.no_grad():
                out = hf.generate(
                    input_ids=x, attention_mask=am, do_sample=False, max_new_tokens=new,
                    min_new_tokens=new, pad_token_id=0,
                )  # fmt: skip
            if torch_device == "cuda":
                torch.cuda.synchronize()
            return out

        t1_t, tn_t = (
            timed(lambda: torch_run(1), args.repeats),
            timed(lambda: torch_run(n), args.repeats),
        )
        rows.append(("transformers generate", t1_t, tn_t))
        theirs = torch_run(n)[:, ids.shape[1] :].cpu().numpy()
        match = float((theirs == ours).mean())

    bandwidth = reread(bandwidth, source)
    step = floor_step_seconds(cfg, b, args.prompt_len + n / 2, bandwidth)
    floor = b / step
    dev = jax.devices()[0]
    print(f"# sampler decode throughput, {datetime.date.today()}")
    print(
        f"device: jax {dev.platform} {dev.device_kind} x{jax.device_count()}, torch {torch_device} "
        f"({platform.machine()}, {os.cpu_count()} cpus"
        f"{f', pinned to {args.cpu_threads} of them' if on_cpu else ''}); "
        f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(
        f"model: {args.size} ({cfg.num_params / 1e6:.1f}M params, {args.dtype}), batch {b}, "
        f"prompt {args.prompt_len}, new tokens {n}, greedy; bandwidth {bandwidth / 1e9:.1f} GB/s "
        f"({source})"
    )
    if match is not None:
        print(f"greedy tokens equal to transformers: {100 * match:.1f}%")
    for kernel in kernels[1:]:
        print(f"greedy tokens with {kernel} decode attention equal to {kernels[0]}'s: "
              f"{100 * (tokens[kernel] == ours).mean():.1f}%")  # fmt: skip
    print()
    print("| implementation | prefill + 1 token (s) | total (s) | decode tok/s | end-to-end tok/s "
          "| % of floor |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, first, total in rows:
        decode = b * (n - 1) / max(total - first, 1e-9)
        print(
            f"| {name} | {first:.3f} | {total:.3f} | {decode:,.0f} | {b * n / total:,.0f} "
            f"| {100 * decode / floor:.1f} |"
        )
    print(f"| bandwidth floor | | | {floor:,.0f} | | 100 |")
    print_bytes(model, b, args.prompt_len, n, bandwidth)
    if match is not None:
        (_, f0, t0), (_, f1, t1_) = rows[0], rows[-1]
        ratio = (b * (n - 1) / (t0 - f0)) / (b * (n - 1) / (t1_ - f1))
        print(f"\nredjax / transformers decode throughput: {ratio:.2f}x")
    if args.ragged:
        ragged(model, args.ragged, args.repeats, bandwidth, source)


if __name__ == "__main__":
    main()
