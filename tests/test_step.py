"""The sharded train step: meshes agree with one device, accumulation with one full batch, and
the entropy probe with an independent recompute."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import bench_module

from redjax import sharding, step
from redjax.config import Config, OptimCfg
from redjax.models import ModelConfig, forward, init_params
from redjax.rows import make_rows

collective_bytes = bench_module("hlo").collective_bytes

CFG = ModelConfig(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    qkv_bias=True,
)
SC = step.StepConfig.from_config(Config(), chunk=24, eps_low=0.2, eps_high=0.28, probe=True)


def host_rows(n=16, p=8, c=8, seed=0, vocab=96):
    rng = np.random.default_rng(seed)
    plen = rng.integers(2, p + 1, n)
    clen = rng.integers(1, c + 1, n)
    prompt_mask = np.arange(p)[None] >= (p - plen)[:, None]  # left padded
    resp_mask = np.arange(c)[None] < clen[:, None]  # right padded
    online = np.arange(n) % 4 != 3  # 3 online rows, then 1 offline row
    rows = make_rows(
        prompt_ids=np.where(prompt_mask, rng.integers(0, vocab, (n, p)), 0),
        prompt_mask=prompt_mask,
        resp_ids=np.where(resp_mask, rng.integers(0, vocab, (n, c)), 0),
        resp_mask=resp_mask,
        online=online,
        adv=rng.normal(size=n),
        shift=rng.uniform(size=n),
        old_logp=np.log(rng.uniform(0.005, 0.02, (n, c))),
        ref_logp=np.log(rng.uniform(0.005, 0.02, (n, c))),
    )
    return rows.with_probe(step.probe_rows(online, 0.25, multiple=8, seed=seed))


def jitted_step(cfg, sc, mesh):
    """The train state on the mesh (seed-0 parameters) and the jitted step."""
    # Adam's eps well above the float32 noise of tiny gradients keeps the update well-conditioned.
    tx = step.make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0, eps=1e-4, weight_decay=0.0), 10)
    shapes = jax.eval_shape(lambda: init_params(cfg, 0))
    params = jax.jit(
        lambda: init_params(cfg, 0), out_shardings=sharding.param_shardings(shapes, mesh)
    )()
    state, sh = step.init_state(params, tx, mesh)
    return state, step.jit_train_step(cfg, sc, tx, sh, mesh)


def run(mesh, rows, sc=SC, lam=0.7):
    state, fn = jitted_step(CFG, sc, mesh)
    batch = sharding.put_local(rows, mesh)
    new, metrics = fn(state, batch, jnp.float32(lam))
    return jax.device_get(new["params"]), jax.device_get(metrics), new


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def single():
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    return run(mesh, host_rows())


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_matches_one_device(single, shape):
    mesh = sharding.make_mesh(*shape)
    params, metrics, new = run(mesh, host_rows())
    assert_close(metrics, single[1], atol=1e-5)  # loss terms cancel: an absolute floor
    assert_close(params, single[0])
    if shape[2] > 1:  # tensor parallel: q heads really are split
        q = new["params"]["layers"]["attn"]["q"]["kernel"]
        assert q.sharding.spec[2] == "tensor"


def test_accumulation_matches_full_batch(single):
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    sc = dataclasses.replace(SC, micro_batches=4)
    params, metrics, _ = run(mesh, host_rows(), sc=sc)
    assert_close(metrics, single[1], rtol=2e-5)
    assert_close(params, single[0], rtol=2e-5)


def test_metrics_against_recompute(single):
    rows = host_rows()
    params0 = init_params(CFG, 0)
    params1, metrics, _ = single

    def entropies(params, idx):
        tok = np.concatenate([rows.prompt_ids[idx], rows.resp_ids[idx]], 1)
        m = np.concatenate([rows.prompt_mask[idx], rows.resp_mask[idx]], 1)
        logits = np.asarray(
            forward(params, CFG, jnp.asarray(tok), mask=jnp.asarray(m))[0], np.float64
        )
        p = rows.prompt_ids.shape[1]
        logits = logits[:, p - 1 : -1]
        logits -= logits.max(-1, keepdims=True)
        logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -(np.exp(logq) * logq).sum(-1)

    idx = np.flatnonzero(rows.in_probe)
    mask = rows.resp_mask[idx]
    on = rows.online[idx]
    for params, when in ((params0, "before"), (params1, "after")):
        ent = entropies(params, idx)
        for kind, sel in (("on", on), ("off", ~on)):
            ref = (ent * mask)[sel].sum() / mask[sel].sum()
            np.testing.assert_allclose(metrics[f"H_{kind}_{when}"], ref, rtol=1e-4)
    np.testing.assert_allclose(metrics["dH_on"], metrics["H_on_after"] - metrics["H_on_before"])
    np.testing.assert_allclose(metrics["lambda"], 0.7)
    n_on = (rows.resp_mask * rows.online[:, None]).sum()
    np.testing.assert_allclose(metrics["tokens_on"], n_on)
    assert np.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0


# ----------------------------------------------------------------------------- communication
@pytest.mark.parametrize("shape, budget", [((8, 1, 1), 2), ((1, 8, 1), 5)])
def test_communication_is_fsdp_sized(shape, budget):
    """Per step and device, the collectives move about what data parallelism / FSDP must: one
    gradient reduction (1x the parameter bytes), plus with fsdp the per-layer weight all-gathers
    of the forward, the backward and the probe (4x), not activations per layer nor the
    unembedding's gradient per log-prob chunk (the step did both before: 7.2x and 58x)."""
    cfg = ModelConfig(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=384,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
    )
    mesh = sharding.make_mesh(*shape)
    state, fn = jitted_step(cfg, step.StepConfig.from_config(Config(), chunk=128, probe=True), mesh)
    rows = sharding.put_local(host_rows(64, 16, 64, vocab=1024), mesh)
    hlo = fn.lower(state, rows, jnp.float32(1.0)).compile().as_text()
    param_bytes = 4 * cfg.num_params
    ratio = collective_bytes(hlo) / param_bytes
    print(f"mesh {shape}: {ratio:.2f}x the parameter bytes")
    assert ratio <= budget, ratio
