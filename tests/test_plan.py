"""`redjax plan`: parameter counts against PyTorch, per-device bytes against a hand computation of
the partition rules, activations against XLA's own memory analysis of the compiled step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_hf_checkpoint

from redjax import cli, config, plan, sampler, sharding, step
from redjax.models import ModelConfig, init_params
from redjax.rows import make_rows
from redjax.shapes import sampler_bucket

QWEN25_05B = ModelConfig(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_layers=24,
    num_heads=14,
    num_kv_heads=2,
    head_dim=64,
    qkv_bias=True,
    tie_embeddings=True,
)


def load(*overrides):
    return config.load(None, list(overrides))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_param_count_matches_torch(tmp_path, kind, capsys):
    torch_model = make_hf_checkpoint(tmp_path / kind, kind)
    n_torch = sum(p.numel() for p in torch_model.parameters())  # tied weights counted once
    lengths = ["data.max_prompt_len=32", "data.max_offline_len=32", "rollout.max_new_tokens=32"]
    est = plan.main(None, [f"model.path={tmp_path / kind}", "mesh.data=1", *lengths], devices=1)
    mc = plan.model_config(load(f"model.path={tmp_path / kind}"))
    assert est["num_params"] == mc.num_params == n_torch
    assert "parameters" in capsys.readouterr().out


def test_qwen25_05b_shape():
    est = plan.estimate(QWEN25_05B, load("mesh.data=1"), {"data": 1, "fsdp": 1, "tensor": 1})
    assert est["num_params"] == QWEN25_05B.num_params
    assert abs(est["num_params"] - 494e6) < 0.5e6  # Qwen2.5-0.5B: 494M parameters
    assert est["params"] == 4 * est["num_params"]  # float32 on one device


def hand_param_bytes(mc: ModelConfig, fsdp: int, tensor: int, dtype_bytes: int) -> int:
    """Per-device bytes of each leaf, from the partition rules written out by hand."""
    d, i, v, lay = mc.hidden_size, mc.intermediate_size, mc.vocab_size, mc.num_layers
    q, kv = mc.num_heads * mc.head_dim, mc.num_kv_heads * mc.head_dim
    ways = lambda n, k: k if n % k == 0 else 1  # an axis that does not divide is dropped
    split = lambda rows, cols, a, b: (rows // ways(rows, a)) * (cols // ways(cols, b))
    n = split(v, d, tensor, fsdp)  # embedding [V, D]: (tensor, fsdp)
    if not mc.tie_embeddings:
        n += split(d, v, fsdp, tensor)  # lm_head [D, V]: (fsdp, tensor)
    n += lay * split(d, q, fsdp, tensor) + 2 * lay * split(d, kv, fsdp, tensor)  # q, k, v
    n += lay * (q // ways(q, tensor) + 2 * (kv // ways(kv, tensor)))  # qkv biases: tensor
    n += lay * split(q, d, tensor, fsdp)  # o [H*hd, D]
    n += 2 * lay * split(d, i, fsdp, tensor) + lay * split(i, d, tensor, fsdp)  # gate, up, down
    n += 2 * lay * d + d  # norms: replicated
    return n * dtype_bytes


@pytest.mark.parametrize(
    "mesh, vocab, tie",
    [
        ({"data": 1, "fsdp": 1, "tensor": 1}, 96, True),
        ({"data": 2, "fsdp": 4, "tensor": 1}, 96, True),
        ({"data": 1, "fsdp": 4, "tensor": 2}, 96, False),
        ({"data": 1, "fsdp": 2, "tensor": 4}, 97, False),  # vocab 97: only fsdp splits it
    ],
)
def test_param_and_optimizer_bytes_follow_the_partition_rules(mesh, vocab, tie):
    mc = ModelConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_layers=3,
        num_heads=4,
        num_kv_heads=4,
        head_dim=16,
        qkv_bias=True,
        tie_embeddings=tie,
    )
    est = plan.estimate(mc, load(), mesh)
    assert est["params"] == hand_param_bytes(mc, mesh["fsdp"], mesh["tensor"], 4)
    # AdamW after clipping: mu and nu like the parameters, two int32 step counts (replicated).
    assert est["optimizer"] == 2 * est["params"] + 2 * 4
    assert est["gradients"] == est["params"]
    bf16 = plan.estimate(mc.replace(param_dtype="bfloat16"), load(), mesh)
    assert bf16["params"] == hand_param_bytes(mc, mesh["fsdp"], mesh["tensor"], 2)


ARGS = (
    "rollout.prompts=8",
    "rollout.group_size=4",
    "rollout.max_new_tokens=64",
    "data.max_prompt_len=32",
    "data.max_offline_len=64",
    "eval.k=1",
    "train.chunk=512",
    "optim.micro_batches=2",
    "model.dtype=bfloat16",
)


def test_rows_kv_cache_and_chunk_buffers_by_hand():
    cfg = load("red.entropy_change=probe", *ARGS)
    mc = QWEN25_05B.replace(dtype="bfloat16")
    est = plan.estimate(mc, cfg, {"data": 2, "fsdp": 2, "tensor": 1})
    shards = 4
    # Train rows: 8 prompts x 4 rollouts + 8 teacher traces, 2 micro-batches, 4 shards.
    assert est["rows_per_device"] == math.ceil((8 * 4 + 8) / 2 / shards) == 5
    # The probe (RED): a quarter of the 32 rollouts and of the 8 traces, in 2 micro-batches.
    assert est["probe_rows_per_device"] == math.ceil((8 + 2) / 2 / shards) == 2
    assert 0 < est["probe_activations"] < est["activations"]
    for other in ("algo=fixed_mix", "red.entropy_change=drift"):  # no probe forward
        est_other = plan.estimate(mc, load(other, *ARGS), {"data": 2, "fsdp": 2, "tensor": 1})
        assert est_other["probe_rows_per_device"] == est_other["probe_activations"] == 0
    assert est["seq_len"] == 32 + 64
    assert est["gradients"] == 2 * est["params"]  # accumulator + one micro-batch's gradients
    # Sampling: evaluation batch max(8, 32) x k=1 rows beats the 32 rollouts; slots 32 + 64.
    rows, slots = math.ceil(32 / shards), 32 + 64
    assert est["kv_cache"] == 24 * rows * slots * 2 * 2 * 64 * 2
    assert est["logprob_buffers"] == 3 * (512 // shards) * 151936 * 4
    assert est["total"] == max(est["train_peak"], est["sample_peak"])
    assert est["decode_weights"] == est["params"] // 2  # float32 params, bfloat16 decode copy
    row = sampler.pass_row_bytes(mc, slots, 32)  # the sampler's own working set of a row
    assert est["sampling_buffers"] == rows * row
    assert est["sample_peak"] == (
        est["params"] + est["optimizer"] + est["decode_weights"] + est["sampling_buffers"]
    )
    assert est["train_peak"] == (
        est["params"]
        + est["optimizer"]
        + est["gradients"]
        + est["activations"]
        + est["logprob_buffers"]
        + est["gathered"]
    )
    # 4 data shards: a whole (tied) unembedding per device and its gradient, and with fsdp=2
    # one layer all-gathered (float32 parameters).
    layer = (est["num_params"] - 151936 * 896 - 896) // 24
    assert est["gathered"] == 2 * 151936 * 896 * 4 + 2 * layer * 4
    tp = plan.estimate(mc, cfg, {"data": 2, "fsdp": 1, "tensor": 2})
    assert tp["kv_cache"] == 24 * math.ceil(32 / 2) * slots * 2 * 1 * 64 * 2  # kv heads split


def test_remat_and_beta_kl():
    cfg = load("model.remat=none", "rl.beta_kl=0.05")
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    none = plan.estimate(QWEN25_05B, cfg, mesh)
    full = plan.estimate(QWEN25_05B.replace(remat="full"), cfg, mesh)
    dots = plan.estimate(QWEN25_05B.replace(remat="dots"), cfg, mesh)
    assert full["activations"] < dots["activations"] < none["activations"]
    assert none["reference"] == none["params"]
    assert plan.estimate(QWEN25_05B, load(), mesh)["reference"] == 0


@pytest.mark.parametrize(
    "remat, attention, response",
    [("none", "auto", 32), ("full", "auto", 32), ("none", "chunked", 480), ("none", "xla", 480)],
)
def test_train_step_memory_against_xla(remat, attention, response):
    """Gradients + activations + log-prob buffers against the temporary bytes XLA plans for the
    compiled step on CPU (float32): within 30%, for short rows and for 512-token rows with the
    blockwise kernel and with the xla path (whose [T, T] scores dominate there)."""
    cfg = load(
        "model.hidden_size=128",
        "model.intermediate_size=384",
        "model.num_layers=3",
        "model.num_heads=4",
        "model.num_kv_heads=2",
        f"model.remat={remat}",
        f"model.attention={attention}",
        "data.max_prompt_len=32",
        f"data.max_offline_len={response}",
        f"rollout.max_new_tokens={response}",
        "rollout.prompts=4",
        "rollout.group_size=3",
        "train.chunk=128",
    )
    mc = plan.model_config(cfg)
    est = plan.estimate(mc, cfg, {"data": 1, "fsdp": 1, "tensor": 1})
    n, p = est["rows_per_device"], cfg.data.max_prompt_len
    c = est["seq_len"] - p
    rows = make_rows(
        prompt_ids=np.ones((n, p)),
        prompt_mask=np.ones((n, p)),
        resp_ids=np.ones((n, c)),
        resp_mask=np.ones((n, c)),
        online=np.arange(n) % 4 != 3,
        adv=np.ones(n),
        shift=np.ones(n),
        old_logp=np.zeros((n, c)),
        ref_logp=np.zeros((n, c)),
    )
    rows = rows.with_probe(step.probe_rows(rows.online, 0.25))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx = step.make_optimizer(cfg.optim, 10)
    params = jax.eval_shape(lambda: init_params(mc, 0))
    state_sh = step.state_shardings(params, sharding.param_shardings(params, mesh), tx, mesh)
    state = {"params": params, "opt_state": jax.eval_shape(tx.init, params), "step": jnp.int32(0)}
    fn = step.jit_train_step(mc, step.StepConfig.from_config(cfg), tx, state_sh, mesh)
    batch = sharding.put_local(rows, mesh)
    memory = fn.lower(state, batch, jnp.float32(1.0)).compile().memory_analysis()
    predicted = est["gradients"] + est["activations"] + est["logprob_buffers"]
    assert 0.7 < predicted / memory.temp_size_in_bytes < 1.3


def test_rollout_sub_batches():
    """With the device memory known, the plan takes the sampler's own rule for the rows of a
    pass (whole prompts); rollout.sub_batch overrides; unknown memory: one pass."""
    cfg = load("rollout.prompts=64", "rollout.group_size=8", "eval.k=1", "model.dtype=bfloat16")
    mc = QWEN25_05B.replace(dtype="bfloat16")
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    one = plan.estimate(mc, cfg, mesh)
    assert one["rollout_passes"] == 1 and one["sample_rows_per_pass"] == 512
    row = sampler.pass_row_bytes(mc, one["kv_slots"], sampler_bucket(cfg.data.max_prompt_len))
    taken = one["params"] + one["optimizer"] + one["decode_weights"]
    memory = (taken + 203.5 * row / 0.8) / plan.GIB  # the sampler uses 80% of the free bytes
    est = plan.estimate(mc, cfg, mesh, memory)
    assert est["sample_rows_per_pass"] == 200  # 203 rows fit: 25 whole prompts of 8
    assert est["rollout_passes"] == 3
    assert est["kv_cache"] == 200 * one["kv_cache"] // 512
    assert est["sampling_buffers"] == 200 * row
    assert est["sample_peak"] == taken + 200 * row
    fixed_cfg = load("rollout.prompts=64", "rollout.group_size=8", "rollout.sub_batch=64")
    assert plan.estimate(mc, fixed_cfg, mesh, memory)["rollout_passes"] == 8


def test_attention_memory_is_linear_except_xla():
    """The 4k-token paper setting: the xla path's scores grow with T, the others do not."""
    cfg = load("data.max_prompt_len=512", "rollout.max_new_tokens=3584", "model.remat=full")
    mesh = {"data": 1, "fsdp": 1, "tensor": 1}
    est = {
        a: plan.estimate(QWEN25_05B.replace(attention=a, remat="full"), cfg, mesh)
        for a in ("xla", "chunked", "auto")
    }
    assert est["chunked"]["activations"] == est["auto"]["activations"]
    assert est["xla"]["seq_len"] == 4096  # 512 + 3584: the widest batch, no bucket above the budget
    assert est["xla"]["activations"] > 2.5 * est["chunked"]["activations"]
    per_token = (
        est["xla"]["activation_bytes_per_token"] - est["chunked"]["activation_bytes_per_token"]
    )
    seq = est["xla"]["seq_len"]
    assert per_token == 14 * seq * 8 - 14 * (8 + 4 * 64)  # float32 logits + softmax vs lse + dq


def test_device_memory_names_and_verdict(capsys):
    assert plan.device_memory_gib("v5e") == 16 and plan.device_memory_gib("V4") == 32
    assert plan.device_memory_gib("v5p") == 95 and plan.device_memory_gib("h100") == 80
    assert plan.device_memory_gib("24") == 24.0 and plan.device_memory_gib(None) is None
    with pytest.raises(ValueError, match="v5e"):
        plan.device_memory_gib("v9000")
    cfg = load()
    mc = plan.model_config(cfg)
    est = plan.estimate(mc, cfg, {"data": 1, "fsdp": 1, "tensor": 1})
    assert "does NOT fit" in plan.report(est, mc, est["total"] / 2 / plan.GIB)
    assert ": fits" in plan.report(est, mc, est["total"] * 2 / plan.GIB)


def test_mesh_resolution():
    assert plan.mesh_shape(load("mesh.fsdp=4"), 16) == {"data": 4, "fsdp": 4, "tensor": 1}
    assert plan.mesh_shape(load("mesh.data=2", "mesh.fsdp=-1"), 8)["fsdp"] == 4
    with pytest.raises(ValueError, match="devices"):
        plan.mesh_shape(load("mesh.data=2", "mesh.fsdp=2"), 8)
    with pytest.raises(ValueError, match="does not fit"):
        plan.mesh_shape(load("mesh.fsdp=3"), 8)


def test_cli(capsys):
    cli.main(["plan", "mesh.data=2", "mesh.fsdp=4", "--device-memory", "v5e"])
    out = capsys.readouterr().out
    assert "data=2 fsdp=4 tensor=1 (8 devices)" in out
    assert "KV cache" in out and "device memory 16 GiB: fits" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["plan", "--device-memory", "lots"])
    assert e.value.code == 2
    assert "--device-memory 'lots'" in capsys.readouterr().err
