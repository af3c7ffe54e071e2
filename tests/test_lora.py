"""LoRA: the adapted model starts as its base, only adapters train (gradients against the chain
rule through the merged weight), a sharded step equals one device, the sampler samples the
updated adapters, checkpoints hold the adapters alone and resume bit for bit, export merges
them (transformers' logits) or writes a PEFT folder (peft's logits)."""

import functools
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers import tiny_run
from jax.sharding import PartitionSpec as P
from test_step import CFG as STEP_CFG
from test_step import host_rows

from redjax import cli, config, lora, plan, sharding, step, train
from redjax.checkpoint import Checkpoints
from redjax.config import Config, OptimCfg
from redjax.models import forward, init_params, scratch_config

CFG = STEP_CFG.replace(lora_alpha=8.0)  # the step tests' tiny model
SPEC = lora.LoraSpec(rank=4, alpha=8.0, targets=tuple(lora.TARGETS))
SC = step.StepConfig.from_config(Config(), chunk=24)
TX = step.make_optimizer(OptimCfg(lr=1e-2, warmup_steps=0, eps=1e-4, weight_decay=0.0), 10)

TINY = tiny_run(
    4, 2, "eval.problems=2", "eval.samples_every=0", "reward.workers=0", "optim.lr=0.02",
    "optim.warmup_steps=0", "lora.rank=4", "lora.alpha=8",
)  # fmt: skip


def rows(n=16, p=6, c=6, seed=0):
    """Random train rows as the step tests make them (3 online : 1 offline, a probe subset)."""
    return host_rows(n, p, c, seed)


def moved(adapters, seed=3, size=0.05):
    """Adapters away from their start (B != 0), as after some training."""
    keys = iter(jax.random.split(jax.random.key(seed), 64))
    return jax.tree.map(lambda x: x + size * jax.random.normal(next(keys), x.shape), adapters)


logits = jax.jit(lambda params, tokens: forward(params, CFG, tokens)[0])


@functools.cache
def start(seed=0):
    """(base parameters, adapters at their start) of CFG, made once (jitted: fast)."""
    base = jax.jit(lambda: init_params(CFG, seed))()
    return base, jax.jit(lambda: lora.init_adapters(CFG, SPEC, seed + 1))()


def test_at_init_the_adapted_model_is_the_base():
    base, adapters = start()
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (3, 9)))
    want = np.asarray(logits(base, tokens))
    np.testing.assert_array_equal(logits(lora.join(base, adapters), tokens), want)
    a = adapters["layers"]["attn"]["q"]["lora_a"]
    assert a.shape == (2, 64, 4) and np.abs(a).max() <= 1 / 8 and np.abs(a).max() > 0.1
    assert not np.any(adapters["layers"]["mlp"]["down"]["lora_b"])
    # Moved adapters change the logits; on the fly and merged they agree.
    joined = lora.join(base, moved(adapters))
    fly = np.asarray(logits(joined, tokens))
    np.testing.assert_allclose(logits(lora.merge(joined, 8.0), tokens), fly, atol=1e-5)
    assert np.abs(fly - want).max() > 0.05


def test_only_adapters_get_gradients_and_optimizer_state():
    """The step's gradients are the adapters' alone, and equal the chain rule through the merged
    weight W' = W + s A B: dL/dA = s G B^T, dL/dB = s A^T G with G = dL/dW'."""
    base, adapters = start()
    adapters = moved(adapters)
    batch = rows().without_probe()
    counts = {
        "on_tokens": 1.0,
        "off_tokens": 1.0,
        "off_seqs": 1.0,
        "rl_tokens": 1.0,
        "rl_seqs": 1.0,
    }
    loss = lambda p, b: step.loss_fn(p, CFG, SC, batch, 0.7, counts, None, b)[0]
    grads = jax.jit(jax.grad(loss))(adapters, base)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    merged = lora.merge(lora.join(base, adapters), SPEC.alpha)
    full = jax.jit(jax.grad(loss))(merged, None)
    s = SPEC.scale
    for group, name in lora.TARGETS.values():
        a, b = (np.asarray(adapters["layers"][group][name][k], np.float64) for k in lora.LEAVES)
        g = np.asarray(full["layers"][group][name]["kernel"], np.float64)
        got = grads["layers"][group][name]
        np.testing.assert_allclose(
            got["lora_a"], s * g @ np.swapaxes(b, 1, 2), rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            got["lora_b"], s * np.swapaxes(a, 1, 2) @ g, rtol=1e-5, atol=1e-5
        )
    # The optimizer state is the adapters' moments and a count: nothing base-sized.
    state, _ = step.init_state(adapters, TX, sharding.make_mesh(devices=jax.devices()[:1]))
    sizes = [x.size for x in jax.tree.leaves(state["opt_state"])]
    n = sum(x.size for x in jax.tree.leaves(adapters))
    assert sum(sizes) == 2 * n + sum(s for s in sizes if s == 1)


def run_step(mesh, base_params, adapters, batch):
    shapes = jax.eval_shape(lambda: adapters)
    placed = jax.device_put(adapters, sharding.param_shardings(shapes, mesh))
    base_sh = sharding.param_shardings(jax.eval_shape(lambda: base_params), mesh)
    base = jax.device_put(base_params, base_sh)
    state, sh = step.init_state(placed, TX, mesh)
    fn = step.jit_train_step(CFG, SC, TX, sh, mesh)
    new, metrics = fn(state, sharding.put_local(batch, mesh), jnp.float32(0.7), base)
    return new, jax.device_get(metrics), base


@functools.cache
def base_and_step(dtype: str):
    """(base, adapters, the one-device step's new adapters and metrics) with the base's weights
    rounded to bfloat16 and held in `dtype` (the same numbers either way), made once."""
    base, adapters = jax.device_get(start())  # host copies: the step donates its state
    base = jax.tree.map(lambda w: np.asarray(w.astype(jnp.bfloat16).astype(dtype)), base)
    one, m, _ = run_step(sharding.make_mesh(devices=jax.devices()[:1]), base, adapters, rows())
    return base, adapters, jax.device_get(one["params"]), m, jax.device_get(one["opt_state"])


def test_lora_step_on_a_mesh_equals_one_device():
    base, adapters, one, m1, _ = base_and_step("float32")
    new, m8, placed_base = run_step(sharding.make_mesh(2, 2, 2), base, adapters, rows())
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, jax.device_get(new["params"]), one)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), m8, m1)
    q = new["params"]["layers"]["attn"]["q"]
    assert q["lora_a"].sharding.spec == P(None, "fsdp", None)  # as the kernel's input dimension
    assert q["lora_b"].sharding.spec == P(None, None, "tensor")  # as its output dimension
    assert new["params"]["layers"]["attn"]["o"]["lora_b"].sharding.spec == P(None, None, "fsdp")
    assert np.abs(np.asarray(q["lora_b"])).max() > 1e-3  # B moved from zero
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed_base), base)  # frozen


def test_a_bfloat16_base_trains_float32_adapters():
    """A base frozen in bfloat16 (model.param_dtype): the step equals one on the same weights
    held in float32, and the adapters and their moments stay float32."""
    low, _, new, m, opt_state = base_and_step("bfloat16")
    _, _, want, m_want, _ = base_and_step("float32")
    assert low["layers"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, new, want)
    np.testing.assert_allclose(m["loss"], m_want["loss"], rtol=1e-6)
    assert {x.dtype for x in jax.tree.leaves((new, opt_state)) if x.ndim} == {np.dtype("float32")}


def test_unknown_target_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "lora.rank=4", "lora.targets=q,qkv"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["redjax: error: lora.targets[1]: 'qkv' is not one of q, k, v, o, gate, up, down"]
    with pytest.raises(ValueError, match="lora.rank must be >= 0"):
        config.load(None, ["lora.rank=-1"])


# ----------------------------------------------------------------------------- a run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A LoRA run of 2 steps from scratch, a checkpoint after each."""
    path = str(tmp_path_factory.mktemp("lora") / "run")
    train.run(None, [*TINY, "train.steps=2", "train.save_every=1", f"train.run_dir={path}"])
    return path


def test_the_sampler_samples_the_updated_adapters(tmp_path):
    """After one update, the rollouts' log-probs are the updated policy's (to 1e-5 in float32),
    not the initial one's."""
    r = train.setup(config.load(None, [*TINY, "train.steps=2", f"train.run_dir={tmp_path}"]))
    try:
        phase = r.plan.phase(0)
        got = train.collect(r, 0, phase)
        targets = train.advantages(r, got, train.score(r, got, phase), phase)
        batch, _ = train.train_rows(r, got, targets, phase)
        train.update(r, batch, targets.lam, 0)
        got = train.collect(r, 1, phase)
        batch, checks = train.train_rows(r, got, targets, phase)
        tokens = sharding.put_local(batch.tokens(), r.mesh)
        new = np.asarray(r.score_fn(r.policy, tokens)[0])
        old = np.asarray(r.score_fn(r.base, tokens)[0])  # B = 0: the initial policy
    finally:
        r.close()
    n, w = got.ro.logp.shape
    mask = got.ro.mask
    assert np.abs(new[:n, :w] - got.ro.logp)[mask].max() < 1e-5
    assert np.abs(old[:n, :w] - got.ro.logp)[mask].max() > 1e-2
    assert checks["logp_mismatch_max"] < 1e-5


def test_checkpoint_holds_the_adapters_and_resumes_bit_for_bit(run_dir, tmp_path):
    ckpts = Checkpoints(os.path.join(run_dir, "checkpoints"), keep=3)
    try:
        host = ckpts.saved_host()
    finally:
        ckpts.close()
    assert host["base"] == os.path.join(run_dir, "model")  # where the frozen base is
    saved = _saved_state(run_dir, 2)
    assert set(saved) == {"params", "opt_state", "step"}
    r_cfg = config.load(os.path.join(run_dir, "config.yaml"))
    spec = lora.LoraSpec.from_config(r_cfg.lora)
    mc = scratch_config(r_cfg.model, 16)  # the adapters' shapes need the model section only
    want = lora.adapter_shapes(mc, spec)
    assert _leaf_paths(saved["params"]) == _leaf_paths(want)  # adapters only, no base weight
    n = sum(x.size for x in jax.tree.leaves(want))
    sizes = [x.size for x in jax.tree.leaves(saved["opt_state"])]
    assert sum(sizes) == 2 * n + sum(s for s in sizes if s == 1)  # their moments and counts
    # Resume: drop the last checkpoint (as a kill after step 1's save) and re-run the command.
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    shutil.rmtree(os.path.join(copy, "checkpoints", "2"))
    train.run(None, [*TINY, "train.steps=2", "train.save_every=1", f"train.run_dir={copy}"])
    jax.tree.map(np.testing.assert_array_equal, _saved_state(copy, 2), saved)


def _leaf_paths(tree):
    return [tuple(k.key for k in kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _saved_state(run_dir, step_):
    """The train state of checkpoint `step_` as saved (numpy), read without a template."""
    path = os.path.join(run_dir, "checkpoints", str(step_), "state")
    return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(path))


def test_checkpoint_size_is_the_adapters_share(tmp_path):
    """A checkpoint of a LoRA state (adapters + their AdamW moments) against one of the full
    state: smaller by the parameter count's ratio (both filled with random values, as trained)."""
    mc = CFG.replace(hidden_size=256, intermediate_size=512, head_dim=64, vocab_size=256)
    spec = lora.LoraSpec(rank=2, alpha=4.0, targets=tuple(lora.TARGETS))
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    sizes = {}
    full_params = jax.jit(lambda: init_params(mc, 0))()
    adapters = jax.jit(lambda: lora.init_adapters(mc, spec, 0))()
    for name, params in (("full", full_params), ("lora", adapters)):
        state, _ = step.init_state(moved(params, size=1.0), TX, mesh)
        state["opt_state"] = jax.tree.map(
            lambda x: moved(x, seed=5, size=1.0) if x.ndim else x, state["opt_state"]
        )
        ckpts = Checkpoints(str(tmp_path / name), keep=1)
        ckpts.save(1, state, {"step": 1})
        ckpts.close()
        sizes[name] = _folder_bytes(str(tmp_path / name / "1"))
    n_full = sum(x.size for x in jax.tree.leaves(full_params))
    n_lora = sum(x.size for x in jax.tree.leaves(lora.adapter_shapes(mc, spec)))
    factor = n_full / n_lora  # 80x here; 3 float32 numbers a trained parameter in both
    measured = sizes["full"] / sizes["lora"]
    print(f"full {sizes['full']} B, lora {sizes['lora']} B: {measured:.1f}x of {factor:.1f}x")
    assert 0.7 * factor < measured < 1.05 * factor, (measured, factor, sizes)
    assert sizes["full"] > 0.8 * 3 * 4 * n_full  # its arrays' bytes (compressed a little)


def _folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_merged_export_is_the_lora_model_in_transformers(run_dir, tmp_path):
    """`redjax export` of a LoRA run: transformers' logits of the merged folder are the adapted
    model's (the base in model/ with the checkpoint's adapters, on the fly), to 1e-5."""
    torch = pytest.importorskip("torch")
    import transformers

    out = str(tmp_path / "hf")
    cli.main(["export", run_dir, out])
    ids = np.random.default_rng(1).integers(0, 16, (2, 11))
    ours = _lora_logits(run_dir, ids)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def _lora_logits(run_dir, ids):
    """Logits of a LoRA run's policy computed as the trainer does: base + adapters on the fly."""
    from redjax import runs
    from redjax.models.hf import load_params

    saved = runs.read_run(run_dir)
    base = load_params(saved.base_dir, saved.model_cfg)
    joined = lora.join(base, saved.params)
    assert (
        lora.has_adapters(joined)
        and np.abs(np.asarray(saved.params["layers"]["attn"]["q"]["lora_b"])).max() > 1e-3
    )  # trained: the merge has something to fold in
    return np.asarray(forward(joined, saved.model_cfg, jnp.asarray(ids))[0])


def test_peft_folder_loads_in_peft(run_dir, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import transformers

    cli.main(["export", run_dir, str(tmp_path / "hf"), "--peft", str(tmp_path / "adapter")])
    ids = np.random.default_rng(2).integers(0, 16, (2, 9))
    ours = _lora_logits(run_dir, ids)
    base = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "model"))
    model = peft.PeftModel.from_pretrained(base.float().eval(), str(tmp_path / "adapter"))
    with torch.no_grad():
        theirs = model.eval()(torch.tensor(ids)).logits.numpy()
        with model.disable_adapter():
            plain = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    assert np.abs(plain - ours).max() > 1e-3  # the adapters are what made the difference


# ----------------------------------------------------------------------------- the plan


def test_plan_counts_lora_by_hand():
    """Frozen base in its dtype, float32 adapters and their AdamW moments, adapter-sized
    gradients, no reference copy: against the adapter shapes written out by hand."""
    mc = CFG.replace(vocab_size=96, num_layers=3, param_dtype="bfloat16", dtype="bfloat16")
    args = ["lora.rank=8", "lora.targets=q,v,down", "rl.beta_kl=0.1", "optim.micro_batches=2"]
    cfg = config.load(None, [*args, "data.max_prompt_len=32", "data.max_offline_len=32",
                             "rollout.max_new_tokens=32"])  # fmt: skip
    full_cfg = config.load(None, ["rl.beta_kl=0.1", "optim.micro_batches=2", "data.max_prompt_len=32",
                                  "data.max_offline_len=32", "rollout.max_new_tokens=32"])  # fmt: skip
    mesh = {"data": 1, "fsdp": 2, "tensor": 2}
    est = plan.estimate(mc, cfg, mesh)
    full = plan.estimate(mc, full_cfg, mesh)
    d, i, q, kv, r, layers = 64, 128, 64, 32, 8, 3
    # Per device: q's A [d, r] split over fsdp, B [r, q] over tensor; v's B [r, kv] over
    # tensor; down's A [i, r] over tensor, B [r, d] over fsdp. float32.
    per_layer = (d // 2 * r + r * q // 2) + (d // 2 * r + r * kv // 2) + (i // 2 * r + r * d // 2)
    assert est["adapters"] == 4 * layers * per_layer
    assert est["num_adapter_params"] == layers * (
        (d * r + r * q) + (d * r + r * kv) + (i * r + r * d)
    )
    assert (
        est["optimizer"] == 2 * est["adapters"] + 2 * 4
    )  # mu, nu; Adam's count and the schedule's
    assert est["gradients"] == 2 * est["adapters"]  # accumulator + one micro-batch
    assert est["reference"] == 0 and full["reference"] == full["params"]
    assert est["params"] == full["params"]  # the base, in bfloat16, sharded as before
    assert (
        full["optimizer"] == 2 * full["params"] + 2 * 4 and full["gradients"] == 2 * full["params"]
    )
    persistent = est["params"] + est["adapters"] + est["optimizer"]
    assert est["sample_peak"] == persistent + est["decode_weights"] + est["sampling_buffers"]
    assert est["train_peak"] == (persistent + est["gradients"] + est["activations"]
                                 + est["logprob_buffers"] + est["gathered"])  # fmt: skip
    # Residuals: x A of the three projections (r each, bfloat16) per token and layer.
    assert (
        est["activation_bytes_per_token"] - full["activation_bytes_per_token"]
        == 2
        * (
            2 * 3 * r  # remat none: the kept layers and the backward's working layer
        )
        * (layers + 1)
        // 2
    )
