"""`redjax plan`: device memory per device for a config and mesh, before paying for a machine.

What one device holds, in bytes (P = devices the parameters are split over: fsdp x tensor where
the partition rules of redjax.sharding apply; rows are split over data x fsdp):

  parameters     every leaf of the parameter tree in model.param_dtype, sharded by the rules
                 (with LoRA, lora.rank > 0: the frozen base)
  adapters       LoRA only: the adapter tree (redjax.lora.adapter_shapes) in float32, sharded
                 by their base kernels' rules
  optimizer      the real optax AdamW state (eval_shape of tx.init) of the trained tree: 2
                 moments per trained parameter (the adapters with LoRA) in its dtype, sharded
                 like it, plus the step counts (replicated)
  gradients      one trained-tree-sized tree (two with optim.micro_batches > 1: the
                 accumulator); with LoRA adapter-sized, the base has none
  reference      a frozen copy of the parameters when rl.beta_kl > 0 (none with LoRA: the base
                 is the initial policy)
  activations    the train step's residuals for the backward pass, per device:
                 rows x T x (L x kept + one layer in full + 4 d b), where rows = the micro-batch
                 rows of one device and T = prompt + response width. Per token, one layer in
                 full (b = dtype bytes, d hidden, h / kv heads, hd head dim, i MLP width; heads
                 and i split over tensor) is
                   b (5d + (2h + 2kv) hd + 5i) + h T (8 + 2b)
                 (norm inputs and outputs, q k v and the attention output, the SwiGLU
                 intermediates; the float32 attention logits and softmax and their dtype
                 copies), with LoRA plus the low-rank inputs x A, b r per adapted
                 projection. `kept` per layer: remat none = one layer in full; dots = the
                 matmul outputs, b (3d + (h + 2kv) hd + 2i), with LoRA plus x A and the
                 adapters' outputs (x A) B; full = the layer input, b d. The extra
                 full layer is the backward's working set (cotangents, or the recomputed layer).
                 Calibrated against XLA's memory analysis of the compiled step on CPU (float32):
                 within 20% (none, dots: above; full: below).
  probe          where lambda adapts (algos.Plan.probe): red.probe_fraction of each kind of
                 row, re-scored after the update in micro-batches, a forward only: its rows
                 x T x (one layer in full + 4 d b) per device; the step's working set is the
                 larger of this and the activations
  log-probs      the chunked float32 logits of objective.token_stats_chunked: a device holds its
                 rows of one chunk, (chunk / data shards) x vocab x 4 bytes, times 3 (logits,
                 softmax, their gradient)
  gathered       with data shards > 1, each device scores its rows against a whole unembedding
                 (split only over tensor) and sums its gradient there: vocab x d / tensor in
                 param_dtype for the gradient, the same again for the copy when fsdp > 1
                 splits it; with fsdp > 1, also one layer's weights all-gathered and their
                 gradient: 2 x (layer parameters) / tensor. With LoRA no frozen weight has a
                 gradient: the copy and the gathered layer only, and the layer's adapters
                 with their gradient
  KV cache       sampling: rows x (prompt + new tokens, bucketed) x L x 2 x kv heads x hd x b,
                 rows = one pass of the rollouts (prompts x group) or of the evaluation batch
                 on one device. With the device memory known, the sampler's own rule
                 (sampler.rows_per_pass) decides the rows a pass; rollout.sub_batch sets it
  sampling buffers  one pass's working set by that rule (sampler.pass_row_bytes): the cache
                 twice (growing it copies), token buffers, a step's float32 logits, one
                 layer's prefill activations
  decode weights sampling: the sampler's per-layer copy of the parameters in the compute dtype
                 (sampler.decode_params), sharded like the parameters

Peak = persistent (parameters, optimizer, reference) + the larger of the train step (gradients,
activations, log-probs, gathered) and sampling (decode weights, sampling buffers); the two
phases never overlap. XLA's own temporaries and fragmentation come on top: the verdict keeps
a margin of 10% (HEADROOM).
"""

from __future__ import annotations

import math
from typing import Any

from redjax import config as config_lib

GIB = 1024**3
HEADROOM = 0.9  # of device memory planned for; XLA's temporaries and fragmentation take the rest
DEVICE_MEMORY_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "h100": 80.0}
PLATFORM = {"v4": "tpu", "v5e": "tpu", "v5p": "tpu", "h100": "gpu"}  # where auto is fused
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def device_memory_gib(value: str | float | None) -> float | None:
    """GiB of one device from a name (v4, v5e, v5p, h100) or a number; None stays None."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key in DEVICE_MEMORY_GIB:
        return DEVICE_MEMORY_GIB[key]
    try:
        gib = float(key.removesuffix("gib").removesuffix("g"))
    except ValueError:
        gib = -1.0
    if not gib > 0:
        names = ", ".join(DEVICE_MEMORY_GIB)
        raise ValueError(f"--device-memory {value!r}: give GiB (e.g. 24) or one of {names}")
    return gib


def mesh_shape(cfg: config_lib.Config, devices: int) -> dict[str, int]:
    """Sizes of (data, fsdp, tensor) on `devices` devices, resolving the one -1 as make_mesh does."""
    from redjax.sharding import mesh_sizes

    return mesh_sizes(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)


def model_config(cfg: config_lib.Config) -> Any:
    """The ModelConfig a run of `cfg` trains: config.json of model.path, else the cfg.model shape
    with the vocabulary of model.tokenizer or of the built-in character tokenizer."""
    from redjax.models import read_config

    m = cfg.model
    if m.path:
        mc = read_config(m.path, dtype=m.dtype, param_dtype=m.param_dtype)
        return mc.replace(remat=m.remat, attention=m.attention)
    if m.tokenizer:
        from redjax.tokenizer import load_tokenizer

        vocab = len(load_tokenizer(m.tokenizer))
    else:
        from redjax.tokenizer import CHAR_ALPHABET, CHAR_SPECIALS

        vocab = len(CHAR_SPECIALS) + len(CHAR_ALPHABET)
    from redjax.models import scratch_config

    return scratch_config(m, vocab)


def shard_bytes(x: Any, spec: Any, mesh: dict[str, int]) -> int:
    """Bytes of one device's shard of array `x` (shape, dtype) under PartitionSpec `spec`."""
    import numpy as np

    n = 1
    for i, dim in enumerate(x.shape):
        axes = spec[i] if i < len(spec) else None
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        n *= -(-dim // math.prod(mesh[a] for a in names))
    return n * np.dtype(x.dtype).itemsize


def _split(n: int, ways: int) -> int:
    """Per-device size of a dimension split `ways` ways, when it divides (as sharding._fit)."""
    return n // ways if n % ways == 0 else n


def _tree_bytes(shapes: Any, cfg: config_lib.Config, mesh: dict[str, int]) -> tuple[int, int]:
    """(bytes of a parameter tree, bytes of its AdamW state) on one device, by the partition
    rules and the real optax state (eval_shape of tx.init)."""
    import jax
    import optax
    from jax.sharding import AbstractMesh

    from redjax import sharding, step

    abstract = AbstractMesh(tuple(mesh[a] for a in sharding.AXES), sharding.AXES)
    specs = sharding.param_specs(shapes, abstract)
    is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)
    param_bytes = sum(
        jax.tree.leaves(jax.tree.map(lambda x, s: shard_bytes(x, s, mesh), shapes, specs))
    )
    tx = step.make_optimizer(cfg.optim, max(cfg.train.steps, 1))
    opt_shapes = jax.eval_shape(tx.init, shapes)
    spec_leaves = jax.tree.leaves(specs, is_leaf=is_spec)
    spec_tree = jax.tree.unflatten(jax.tree.structure(shapes), spec_leaves)
    per_leaf = optax.tree_map_params(
        tx,
        lambda x, s: shard_bytes(x, s, mesh),
        opt_shapes,
        spec_tree,
        transform_non_params=lambda x: shard_bytes(x, (), mesh),
        is_leaf=is_spec,
    )
    return param_bytes, sum(jax.tree.leaves(per_leaf))


def _state_bytes(mc: Any, cfg: config_lib.Config, mesh: dict[str, int]) -> dict:
    """Parameters, adapters, AdamW state, gradients and the reference copy: bytes per device.
    With LoRA the optimizer state and the gradients are the adapters', the base is frozen in
    model.param_dtype and is the reference itself."""
    import jax

    from redjax import lora
    from redjax.models import param_shapes

    shapes = param_shapes(mc)
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
    param_bytes, optimizer = _tree_bytes(shapes, cfg, mesh)
    spec = lora.LoraSpec.from_config(cfg.lora)
    adapters = trained = 0
    if spec is not None:
        adapter_shapes = lora.adapter_shapes(mc, spec)
        adapters, optimizer = _tree_bytes(adapter_shapes, cfg, mesh)
        trained = count(adapter_shapes)
    return {
        "num_params": count(shapes),
        "num_adapter_params": trained,
        "params": param_bytes,
        "adapters": adapters,
        "optimizer": optimizer,
        "gradients": (adapters or param_bytes) * (2 if cfg.optim.micro_batches > 1 else 1),
        "reference": param_bytes if cfg.rl.beta_kl and spec is None else 0,
    }


def lora_token_bytes(mc: Any, cfg: config_lib.Config, tensor: int) -> tuple[int, int]:
    """Per token and layer, what LoRA adds to the train step's residuals (dtype bytes): the
    low-rank inputs x A of every adapted projection (r each), and their outputs (x A) B, which
    only remat=dots keeps (outputs split over tensor as their base's). (0, 0) without LoRA."""
    from redjax import lora

    spec = lora.LoraSpec.from_config(cfg.lora)
    if spec is None:
        return 0, 0
    b, d = DTYPE_BYTES[mc.dtype], mc.hidden_size
    q, kv = mc.num_heads * mc.head_dim, mc.num_kv_heads * mc.head_dim
    out = {"q": _split(q, tensor), "k": _split(kv, tensor), "v": _split(kv, tensor), "o": d,
           "gate": _split(mc.intermediate_size, tensor), "up": _split(mc.intermediate_size, tensor),
           "down": d}  # fmt: skip
    return b * spec.rank * len(spec.targets), b * sum(out[t] for t in spec.targets)


def attention_kernel(mc: Any, seq: int, platform: str | None) -> str:
    """The attention implementation the train step runs on `platform` (tpu, gpu; None: the
    backend this process sees), by the model's own rule (attention.resolve)."""
    from redjax.models import attention

    return attention.resolve(mc.attention, mc.dtype, seq, seq, backend=platform)


def attention_bytes(kind: str, dtype: str, heads: int, head_dim: int, seq: int) -> int:
    """Attention working set per token of one layer in the backward pass, beyond q, k, v and
    the output: with `xla`, the float32 [T, T] logits and softmax and their 16-bit copies (grows
    with T); the fused and blockwise kernels keep a float32 log-sum-exp per head and a float32
    dq accumulator instead (constant per token)."""
    b = DTYPE_BYTES[dtype]
    if kind == "xla":
        return heads * seq * (8 + (2 * b if b < 4 else 0))
    return heads * (8 + 4 * head_dim)


def attention_tile_bytes(kind: str, rows: int, heads: int, seq: int) -> int:
    """The blockwise kernel's score tiles in the backward pass (scores, probabilities and their
    gradients, float32): fixed in T. None for the fused kernels (their tiles stay on chip)."""
    from redjax.models import attention

    if kind != "chunked":
        return 0
    return 5 * 4 * rows * heads * min(attention.BLOCK_Q, seq) * min(attention.BLOCK_KV, seq)


def pass_rows(
    mc: Any, rows: int, group: int, slots: int, prompt: int, free: float | None, setting: int
) -> int:
    """Rows of one sampling pass on a device, by the sampler's own rule (sampler.rows_per_pass,
    whole prompts a pass): `setting` (rollout.sub_batch) when > 0."""
    from redjax import sampler

    if rows <= 0:
        return 0
    fit = setting or sampler.rows_per_pass(mc, rows, slots, free, prompt_len=prompt)
    return min(rows, sampler.prompts_per_pass(fit, group) * group)


def _sampling_bytes(
    mc: Any, cfg: config_lib.Config, mesh: dict[str, int], params: int, free: float | None
) -> dict:
    """Rollouts of one iteration and the evaluation batch (k samples per problem): the KV cache
    of one pass and the decode weights, per device; `free` bytes bound a pass."""
    from redjax import sampler
    from redjax.algos import Plan
    from redjax.evaluate import batch_size as eval_batch_size
    from redjax.shapes import sampler_bucket

    r, e, b = cfg.rollout, cfg.eval, DTYPE_BYTES[mc.dtype]
    shards, kv = mesh["data"] * mesh["fsdp"], _split(mc.num_kv_heads, mesh["tensor"])
    prompt_slots = sampler_bucket(cfg.data.max_prompt_len)
    kv_token = mc.num_layers * 2 * kv * mc.head_dim * b  # one cached position of a row
    roll_rows = -(-(r.prompts * r.group_size) // shards) if Plan.from_config(cfg).online else 0
    roll_slots = prompt_slots + sampler_bucket(r.max_new_tokens)
    eval_rows = -(-(eval_batch_size(cfg) * e.k) // shards)
    eval_slots = prompt_slots + sampler_bucket(e.max_new_tokens or r.max_new_tokens)
    decode = params * b // DTYPE_BYTES[mc.param_dtype]
    free = None if free is None else free - decode
    roll_pass = pass_rows(mc, roll_rows, r.group_size, roll_slots, prompt_slots, free, r.sub_batch)
    eval_pass = pass_rows(mc, eval_rows, e.k, eval_slots, prompt_slots, free, r.sub_batch)
    return {
        "kv_cache": max(roll_pass * roll_slots, eval_pass * eval_slots) * kv_token,
        "sampling_buffers": max(
            roll_pass * sampler.pass_row_bytes(mc, roll_slots, prompt_slots),
            eval_pass * sampler.pass_row_bytes(mc, eval_slots, prompt_slots),
        ),
        "decode_weights": decode,
        "sample_rows_per_device": max(roll_rows, eval_rows),
        "sample_rows_per_pass": max(roll_pass, eval_pass),
        "rollout_passes": -(-roll_rows // max(roll_pass, 1)),
        "kv_slots": max(roll_slots, eval_slots),
    }


def _gathered_bytes(mc: Any, state: dict, mesh: dict[str, int]) -> int:
    """What a device holds beyond its shards in the train step (module docstring, gathered)."""
    pb, tensor = DTYPE_BYTES[mc.param_dtype], mesh["tensor"]
    shards, fsdp = mesh["data"] * mesh["fsdp"], mesh["fsdp"] > 1
    embed = mc.vocab_size * mc.hidden_size * (1 if mc.tie_embeddings else 2)
    layer = (state["num_params"] - embed - mc.hidden_size) // mc.num_layers
    unembed = _split(mc.vocab_size, tensor) * mc.hidden_size * pb
    if state["adapters"]:  # LoRA: frozen unembedding and layer weights, no gradient of theirs
        adapter_layer = 4 * state["num_adapter_params"] // mc.num_layers
        return unembed * fsdp + ((layer * pb // tensor + 2 * adapter_layer) if fsdp else 0)
    return unembed * ((shards > 1) + fsdp) + (2 * layer * pb // tensor if fsdp else 0)


def estimate(
    model_cfg: Any,
    cfg: config_lib.Config,
    mesh_shape: dict[str, int],
    memory_gib: float | None = None,
    platform: str | None = None,
) -> dict:
    """Bytes per device of each part of a run (module docstring) and the peak. With the device
    memory known, rollouts are planned in as many passes as the sampler will make; `platform`
    (tpu, gpu, or None: unknown) says which kernel `model.attention=auto` runs."""
    from redjax.algos import Plan
    from redjax.shapes import response_width

    mc, mesh, o = model_cfg, dict(mesh_shape), cfg.optim
    state = _state_bytes(mc, cfg, mesh)

    # The train step: rows of one micro-batch on one device, and their length.
    b = DTYPE_BYTES[mc.dtype]
    shards, tensor = mesh["data"] * mesh["fsdp"], mesh["tensor"]
    r, algo = cfg.rollout, Plan.from_config(cfg)
    online = r.prompts * r.group_size if algo.online else 0
    offline = r.prompts if algo.offline else 0
    rows = online + offline
    rows_step = -(-rows // o.minibatches)
    rows_micro = -(-rows_step // o.micro_batches)
    rows_dev = -(-rows_micro // shards)
    response = max(r.max_new_tokens if algo.online else 1, cfg.data.max_offline_len)
    seq = cfg.data.max_prompt_len + response_width(response, response)  # the widest batch
    d, hd, i = mc.hidden_size, mc.head_dim, _split(mc.intermediate_size, tensor)
    h, kv = _split(mc.num_heads, tensor), _split(mc.num_kv_heads, tensor)
    kind = attention_kernel(mc, seq, platform)
    low_rank, low_rank_out = lora_token_bytes(mc, cfg, tensor)
    full_layer = b * (5 * d + (2 * h + 2 * kv) * hd + 5 * i) + low_rank
    full_layer += attention_bytes(kind, mc.dtype, h, hd, seq)
    dots = b * (3 * d + (h + 2 * kv) * hd + 2 * i) + low_rank + low_rank_out
    kept = {"none": full_layer, "dots": dots, "full": b * d}
    per_token = mc.num_layers * kept[mc.remat] + full_layer + 4 * d * b
    tiles = attention_tile_bytes(kind, rows_dev, h, seq)
    act_bytes = rows_dev * seq * per_token + tiles
    # The probe: red.probe_fraction of each kind of row re-scored after the update (a forward,
    # no backward: one layer in full at a time), in micro-batches as the update.
    up = lambda a, k: -(-a // k)
    frac, parts = cfg.red.probe_fraction, o.minibatches
    probe = math.ceil(frac * up(online, parts)) + math.ceil(frac * up(offline, parts))
    probe_dev = up(up(probe, o.micro_batches), shards) if algo.probe else 0
    probe_bytes = probe_dev * seq * (full_layer + 4 * d * b)
    probe_bytes += attention_tile_bytes(kind, probe_dev, h, seq) if probe_dev else 0
    chunk_tokens = max(-(-cfg.train.chunk // shards), rows_dev)
    logp_bytes = 3 * chunk_tokens * mc.vocab_size * 4
    gathered = _gathered_bytes(mc, state, mesh)

    persistent = state["params"] + state["adapters"] + state["optimizer"] + state["reference"]
    free = None if memory_gib is None else memory_gib * GIB - persistent  # as the sampler sees it
    sampling = _sampling_bytes(mc, cfg, mesh, state["params"], free)
    working = max(act_bytes, probe_bytes)
    train_peak = persistent + state["gradients"] + working + logp_bytes + gathered
    sample_peak = persistent + sampling["decode_weights"] + sampling["sampling_buffers"]
    return {
        **state,
        "devices": math.prod(mesh.values()),
        "mesh": mesh,
        "activations": act_bytes,
        "probe_activations": probe_bytes,
        "probe_rows_per_device": probe_dev,
        "logprob_buffers": logp_bytes,
        "gathered": gathered,
        **sampling,
        "train_peak": train_peak,
        "sample_peak": sample_peak,
        "total": max(train_peak, sample_peak),
        "rows_per_device": rows_dev,
        "seq_len": seq,
        "chunk_tokens_per_device": chunk_tokens,
        "activation_bytes_per_token": per_token,
        "attention": f"{mc.attention} ({kind})" if mc.attention == "auto" else kind,
    }


def _size(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:8.2f} {unit}"
    return f"{n:8.0f} B  "


def report(est: dict, model_cfg: Any, memory_gib: float | None = None) -> str:
    """The estimate as a table, with a verdict when the device memory is known."""
    mc, mesh = model_cfg, est["mesh"]
    lines = [
        f"model: {est['num_params'] / 1e6:.1f}M parameters ({mc.num_layers} layers, hidden "
        f"{mc.hidden_size}, {mc.num_heads}/{mc.num_kv_heads} heads, vocab {mc.vocab_size}), "
        f"param {mc.param_dtype}, compute {mc.dtype}, remat {mc.remat}" + _lora_line(est),
        f"mesh: data={mesh['data']} fsdp={mesh['fsdp']} tensor={mesh['tensor']} "
        f"({est['devices']} devices)",
        f"train step: {est['rows_per_device']} rows x {est['seq_len']} tokens per device and "
        f"micro-batch ({est['probe_rows_per_device']} probe rows); attention {est['attention']}",
        f"sampling: {est['sample_rows_per_device']} rows x {est['kv_slots']} slots per device, "
        f"{est['sample_rows_per_pass']} rows a pass ({est['rollout_passes']} rollout passes)",
        "",
        "per device:",
    ]
    rows = [
        ("parameters" if not est["adapters"] else "parameters (frozen)", "params"),
        ("LoRA adapters (float32)", "adapters"),
        ("optimizer (AdamW)", "optimizer"),
        ("gradients", "gradients"),
        ("reference parameters", "reference"),
        ("activations (train step)", "activations"),
        ("probe forward (after it)", "probe_activations"),
        ("log-prob chunk buffers", "logprob_buffers"),
        ("gathered weights + grads", "gathered"),
        ("KV cache (sampling)", "kv_cache"),
        ("  with growth copy, logits", "sampling_buffers"),
        ("decode weights (sampling)", "decode_weights"),
        ("peak, train step", "train_peak"),
        ("peak, sampling", "sample_peak"),
        ("total (the larger peak)", "total"),
    ]
    for label, key in rows:
        if key in ("reference", "probe_activations", "adapters") and not est[key]:
            continue
        lines.append(f"  {label:26s} {_size(est[key])}")
    if memory_gib is not None:
        used = est["total"] / (memory_gib * GIB)
        verdict = "fits" if used <= 0.9 else ("tight" if used <= 1 else "does NOT fit")
        lines.append(f"  device memory {memory_gib:g} GiB: {verdict} ({100 * used:.0f}% used)")
        if used > 0.9:
            lines.append(
                "  to reduce: model.remat=full, optim.micro_batches=N, more fsdp (mesh.fsdp), "
                "smaller rollout.prompts / group_size, model.param_dtype=bfloat16"
            )
    return "\n".join(lines)


def _lora_line(est: dict) -> str:
    """The model line's LoRA part: what is trained."""
    if not est["adapters"]:
        return ""
    n = est["num_adapter_params"]
    return f"; LoRA: {n / 1e6:.2f}M adapter parameters trained ({100 * n / est['num_params']:.2f}%)"


def fitted(cfg: config_lib.Config) -> config_lib.Config:
    """The config with length limits left at 0 fitted to its train data, as a run fits them."""
    from redjax.data.task import (
        fit_lengths,
        load_data,
        load_tokenizer_for,
        tokenize_train,
        unfitted,
    )

    if not unfitted(cfg):
        return cfg
    try:
        tokenizer = load_tokenizer_for(cfg)
    except FileNotFoundError as e:
        raise ValueError(
            f"{e}; the length limits left at 0 (fitted to the data at train time) need it: set "
            "data.max_prompt_len, data.max_offline_len and rollout.max_new_tokens to plan"
        ) from e
    return fit_lengths(cfg, tokenize_train(cfg, load_data(cfg)[0], tokenizer))


def main(
    config_path: str | None,
    overrides: list[str] | None = None,
    device_memory: str | float | None = None,
    devices: int | None = None,
) -> dict:
    """Print the memory plan of a config; `devices` defaults to the devices JAX sees."""
    cfg = fitted(config_lib.load(config_path, overrides))
    memory = device_memory_gib(device_memory)
    if devices is None:
        import jax

        devices = jax.device_count()
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    mc = model_config(cfg)
    platform = PLATFORM.get(str(device_memory).strip().lower())
    est = estimate(mc, cfg, mesh_shape(cfg, devices), memory, platform)
    print(report(est, mc, memory))
    return est
