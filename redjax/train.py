"""`redjax train`: the RED loop of DESIGN.md section 2, top to bottom.

    config -> data -> model -> for each step:
        sample G rollouts per prompt -> verify -> controller (advantages, shift, lambda)
        -> jitted train step (L_rl + lambda * L_ext, entropy probe) -> controller update
        -> logs, evaluation, checkpoint

Re-running the same command on the same run folder resumes from its last checkpoint.
SIGTERM / SIGINT (preemptible TPU VMs) save a checkpoint at the end of the current step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from redjax import checkpoint, config, distributed, evaluate, logs, red, rewards, sharding, step
from redjax import sampler as sampling
from redjax.data import load_records, make_task
from redjax.data.pipeline import bucket, default_buckets, make_loader
from redjax.models import ModelConfig, from_pretrained, init_params, param_shapes
from redjax.models.hf import config_to_hf
from redjax.tokenizer import eos_ids, load_tokenizer, make_char_tokenizer

log = logging.getLogger("redjax")


# ----------------------------------------------------------------------------- set-up


def load_data(cfg: config.Config) -> tuple[list[dict], list[dict]]:
    """Train and held-out records: the built-in arithmetic task, or JSONL / Parquet files."""
    d = cfg.data

    def read(spec: str, split: str, n: int) -> list[dict]:
        if spec == "builtin":
            return make_task(n, seed=cfg.train.seed, split=split, difficulty=d.builtin_difficulty)
        out = []
        for path in spec.split(","):
            out += load_records(path.strip(), fields=d.fields, on_error=d.on_error)
        return out

    train = read(d.train, "train", d.builtin_train)
    test = read(d.test, "test", d.builtin_test)[: cfg.eval.problems]
    return train, test


def load_tokenizer_for(cfg: config.Config, model_dir: str) -> Any:
    """The model's tokenizer, or (for a model from scratch) the built-in character tokenizer."""
    path = cfg.model.tokenizer or cfg.model.path
    if path:
        return load_tokenizer(path)
    # Built in a folder of this process's own (hosts would race on the shared run folder);
    # process 0 saves it into the run folder afterwards.
    return make_char_tokenizer(tempfile.mkdtemp(prefix="redjax-tokenizer-"))


def scratch_config(cfg: config.Config, vocab_size: int, extra: tuple = ()) -> ModelConfig:
    """The ModelConfig of a model trained from scratch: the model section's shape, Qwen2-,
    Llama- or Qwen3-style, tied embeddings."""
    m = cfg.model
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.hidden_size // m.num_heads,
        arch=m.arch,
        qkv_bias=m.arch == "qwen2",
        qk_norm=m.arch == "qwen3",
        tie_embeddings=True,
        max_position_embeddings=m.max_position_embeddings,
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        extra=extra,
    )


def load_model(cfg: config.Config, tokenizer: Any, mesh: Any) -> tuple[ModelConfig, Any]:
    """The policy's config and parameters, placed straight onto their shardings."""
    m = cfg.model
    shardings = lambda mc: sharding.param_shardings(param_shapes(mc), mesh)
    if m.path:
        model = from_pretrained(m.path, m.dtype, param_dtype=m.param_dtype, shardings=shardings)
        return model.cfg.replace(remat=m.remat), model.params
    extra = (("eos_token_id", tokenizer.eos_token_id), ("pad_token_id", tokenizer.pad_token_id))
    mc = scratch_config(cfg, len(tokenizer), extra)
    init = jax.jit(lambda: init_params(mc, cfg.train.seed), out_shardings=shardings(mc))
    return mc, init()


# ----------------------------------------------------------------------------- one iteration


def pad_cols(x: np.ndarray, width: int, value: Any = 0) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=value)


def build_rows(
    batch: dict,
    ro: Any,
    adv: np.ndarray,
    adv_off: np.ndarray,
    shift: np.ndarray,
    *,
    group: int,
    online: bool,
    offline: bool,
    pad_id: int,
    multiple: int,
) -> dict[str, np.ndarray]:
    """Host rows of one iteration: B*G rollouts and B teacher traces, each after its prompt.

    Responses are right-padded to a shared bucketed width; rows are padded with empty rows
    (no response tokens) to a multiple of the data shards times the micro-batches.
    """
    parts = []
    if online:
        parts.append(
            {
                "prompt": np.repeat(batch["prompt_ids"], group, 0),
                "prompt_mask": np.repeat(batch["prompt_mask"], group, 0),
                "resp": ro.tokens,
                "resp_mask": ro.mask,
                "online": np.ones(len(ro.tokens), bool),
                "adv": adv.reshape(-1),
                "shift": np.zeros(len(ro.tokens), np.float32),
            }
        )
    keep = np.flatnonzero(batch["has_offline"]) if offline else np.zeros(0, int)
    if len(keep):
        parts.append(
            {
                "prompt": batch["prompt_ids"][keep],
                "prompt_mask": batch["prompt_mask"][keep],
                "resp": batch["offline_ids"][keep],
                "resp_mask": batch["offline_mask"][keep],
                "online": np.zeros(len(keep), bool),
                "adv": adv_off[keep],
                "shift": shift[keep],
            }
        )
    if not parts:  # nothing to learn from on this host: one empty row keeps shapes in step
        b = batch["prompt_ids"][:1]
        parts.append(
            {
                "prompt": b,
                "prompt_mask": batch["prompt_mask"][:1],
                "resp": np.full((1, 1), pad_id, np.int32),
                "resp_mask": np.zeros((1, 1), bool),
                "online": np.ones(1, bool),
                "adv": np.zeros(1),
                "shift": np.zeros(1),
            }
        )
    # Every host must build arrays of the same shape: widths and row counts are global maxima.
    width = bucket(max(p["resp"].shape[1] for p in parts), default_buckets(4096))
    width = distributed.global_max(width)
    for p in parts:
        p["resp"] = pad_cols(p["resp"], width, pad_id)
        p["resp_mask"] = pad_cols(p["resp_mask"], width, False)
    rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = len(rows["online"])
    total = distributed.global_max(n)
    extra = total - n + (-total % multiple)
    if extra:  # empty rows: a copy of row 0 with no response tokens
        rows = {k: np.concatenate([v, v[:1].repeat(extra, 0)]) for k, v in rows.items()}
        rows["resp_mask"][n:] = False
    rows["adv"] = rows["adv"].astype(np.float32)
    rows["shift"] = rows["shift"].astype(np.float32)
    return rows


def mean(x: Any) -> float:
    """Mean over the rows of all hosts (nan when there are none)."""
    x = np.asarray(x, np.float64).reshape(-1)
    total, count = distributed.gather(np.array([x.sum(), x.size])).sum(0)
    return float(total / count) if count else float("nan")


def left_pad(batch: dict, width: int, pad_id: int) -> dict:
    """Prompts left-padded to `width` (the widest prompt of all hosts)."""
    extra = width - batch["prompt_ids"].shape[1]
    out = dict(batch)
    out["prompt_ids"] = np.pad(batch["prompt_ids"], ((0, 0), (extra, 0)), constant_values=pad_id)
    out["prompt_mask"] = np.pad(batch["prompt_mask"], ((0, 0), (extra, 0)))
    return out


def rollouts(state, model_cfg, batch, *, group, sp, seed, tokenizer, mesh, sub_batch=0):
    """G rollouts of this host's prompts. The sampler runs on the global batch (every host's
    prompts, gathered), then each host keeps the rows of its own prompts."""
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    hosts = jax.process_count()
    if hosts > 1:
        ids = distributed.gather(ids).reshape(-1, ids.shape[1])
        mask = distributed.gather(mask).reshape(-1, mask.shape[1])
    ro = sampling.sample(
        state["params"],
        model_cfg,
        ids,
        mask,
        num_samples=group,
        sp=sp,
        seed=seed,
        tokenizer=tokenizer,
        mesh=mesh,
        sub_batch=sub_batch,
    )
    if hosts == 1:
        return ro
    n = len(batch["prompt_ids"]) * group
    lo = jax.process_index() * n
    return dataclasses.replace(
        ro,
        **{
            f.name: getattr(ro, f.name)[lo : lo + n]
            for f in dataclasses.fields(ro)
            if getattr(ro, f.name) is not None
        },
    )


# ----------------------------------------------------------------------------- the loop


def run(config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Train (or resume) one run; returns the final evaluation results."""
    cfg = config.load(config_path, overrides)
    _console_log()
    main_proc = jax.process_index() == 0
    run_dir = os.path.abspath(cfg.train.run_dir)
    model_dir = os.path.join(run_dir, "model")  # config + tokenizer, for export and eval
    os.makedirs(model_dir, exist_ok=True)
    if main_proc:
        config.dump(cfg, os.path.join(run_dir, "config.yaml"))

    # Data, tokenizer, mesh, model.
    train_records, test_records = load_data(cfg)
    tokenizer = load_tokenizer_for(cfg, model_dir)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    model_cfg, params = load_model(cfg, tokenizer, mesh)
    if main_proc:
        config_to_hf(model_cfg).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    hosts, shards = jax.process_count(), sharding.data_shards(mesh)
    if cfg.rollout.prompts % hosts:
        raise ValueError(f"rollout.prompts={cfg.rollout.prompts} must divide over {hosts} hosts")
    loader = make_loader(
        train_records,
        tokenizer,
        batch_size=cfg.rollout.prompts // hosts,
        seed=cfg.train.seed,
        max_prompt_len=cfg.data.max_prompt_len,
        max_offline_len=cfg.data.max_offline_len,
        prompt_suffix=cfg.data.prompt_suffix,
        chat=cfg.data.chat,
        system=cfg.data.system,
        shard_index=jax.process_index(),
        shard_count=hosts,
    )

    # Objective, optimizer, controller, step functions.
    r, o = cfg.rl, cfg.optim
    sc = step.StepConfig(
        eps_low=r.eps_low,
        eps_high=r.eps_high,
        agg=r.agg,
        norm_const=r.norm_const or float(cfg.rollout.max_new_tokens),
        beta_kl=r.beta_kl,
        entropy_coef=r.entropy_coef,
        gate_frac=r.gate_frac,
        shaping_gamma=cfg.red.shaping_gamma,
        chunk=cfg.train.chunk,
        micro_batches=o.micro_batches,
        probe=cfg.red.offline and cfg.rollout.online,  # entropy deltas drive lambda
    )
    updates = cfg.train.steps * o.minibatches
    tx = step.make_optimizer(
        o.lr,
        updates,
        warmup_steps=o.warmup_steps,
        min_lr_ratio=o.min_lr_ratio,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        clip_norm=o.clip_norm,
    )
    state, state_sh = step.init_state(params, tx, mesh)
    ref_params = jax.tree.map(jnp.copy, params) if r.beta_kl else None
    del params
    train_step = step.jit_train_step(model_cfg, sc, tx, state_sh, mesh)
    score = step.jit_score(model_cfg, cfg.train.chunk, o.micro_batches, mesh)
    d = cfg.red
    ctrl = red.RedController(
        mode=d.lam,
        lambda0=d.lambda0,
        lambda_min=d.lambda_min,
        lambda_max=d.lambda_max,
        alpha=d.alpha,
        delta=d.delta,
        ema=d.ema,
        warmup_steps=d.lambda_warmup,
        total_steps=cfg.train.steps,
        offline_in_group=d.offline_in_group,
        std_norm=r.std_norm,
        eps=r.adv_eps,
        shift=d.shift,
        tau=d.tau,
    )
    sp = sampling.SamplingParams(
        temperature=cfg.rollout.temperature,
        top_k=cfg.rollout.top_k,
        top_p=cfg.rollout.top_p,
        max_new_tokens=cfg.rollout.max_new_tokens,
        eos_ids=tuple(eos_ids(tokenizer)),
    )
    verifier = rewards.Verifier(
        cfg.reward.fn,
        workers=cfg.reward.workers,
        timeout=cfg.reward.timeout,
        format_weight=cfg.reward.format_weight,
        think_format=cfg.reward.think_format,
    )
    ckpts = checkpoint.Checkpoints(os.path.join(run_dir, "checkpoints"), keep=cfg.train.keep)

    # Resume.
    start = ckpts.latest() or 0
    if start:
        state, host = ckpts.restore(start, state)
        ctrl.load_state_dict(host["controller"])
        loader.set_state(host["loader"])
        log.info("resumed %s from step %d", run_dir, start)
    logger = logs.Logger(run_dir, start, enabled=main_proc)
    evaluate_now = lambda s: run_eval(
        cfg, state["params"], model_cfg, tokenizer, test_records, verifier, mesh, logger, s
    )
    if start == 0 and cfg.eval.every:
        evaluate_now(0)

    stop = {"signal": None}
    handlers = {
        s: signal.signal(s, lambda n, _f: stop.update(signal=n))
        for s in (signal.SIGTERM, signal.SIGINT)
    }
    bar = _progress(cfg.train.steps, start, main_proc)
    pad_id = int(tokenizer.pad_token_id)
    try:
        for it in range(start, cfg.train.steps):
            t0 = time.perf_counter()
            batch = next(loader)
            batch = left_pad(batch, distributed.global_max(batch["prompt_ids"].shape[1]), pad_id)
            b, g = len(batch["answer"]), cfg.rollout.group_size
            sft_phase = it < d.sft_steps
            online = cfg.rollout.online and not sft_phase
            offline = d.offline and (sft_phase or not d.sft_steps)

            # 1. Rollouts: G samples per prompt from the current policy.
            ro = None
            if online:
                ro = rollouts(
                    state,
                    model_cfg,
                    batch,
                    group=g,
                    sp=sp,
                    tokenizer=tokenizer,
                    seed=cfg.train.seed * 1_000_003 + it,
                    mesh=mesh,
                    sub_batch=cfg.rollout.sub_batch,
                )
            t_sample = time.perf_counter()

            # 2. Rewards for every rollout and every teacher trace.
            golds = batch["answer"]
            rew = (
                verifier.score(ro.text, [a for a in golds for _ in range(g)]).reshape(b, g)
                if online
                else np.zeros((b, 0), np.float32)
            )
            has_off = np.asarray(batch["has_offline"]) & offline
            off_rew = verifier.score(batch["solution"], golds) if has_off.any() else np.zeros(b)
            t_reward = time.perf_counter()

            # 3. Controller: group advantages, per-prompt shift, lambda.
            if online:
                adv, adv_off, _acc, shift = ctrl.advantages(rew, off_rew, has_off)
            else:  # SFT: teacher traces with unit advantage, no policy shift
                adv = rew
                adv_off, shift = has_off.astype(np.float32), np.zeros(b, np.float32)
            any_off = distributed.global_any(has_off.any())  # one decision for all hosts
            lam = ctrl.lam if any_off else 0.0

            # 4. Train step(s) on the rollouts and the traces.
            rows = build_rows(
                batch,
                ro,
                adv,
                adv_off,
                shift,
                group=g,
                online=online,
                offline=any_off,
                pad_id=pad_id,
                multiple=shards * o.micro_batches * o.minibatches // hosts,
            )
            rows_dev = sharding.put_local({k: rows[k] for k in step.ROW_KEYS}, mesh)
            old_logp, _ = score(state["params"], rows_dev)
            rows["old_logp"] = sharding.get_local(old_logp)
            rows["ref_logp"] = (
                sharding.get_local(score(ref_params, rows_dev)[0])
                if ref_params is not None
                else rows["old_logp"]
            )
            ms = []
            for u in range(o.minibatches):
                part = {k: v[u :: o.minibatches] for k, v in rows.items()}
                idx = step.probe_rows(part["online"], d.probe_fraction, shards // hosts, seed=it)
                size = distributed.global_max(len(idx))  # the same probe size on every host
                if size > len(idx):
                    idx = step.probe_rows(
                        part["online"], d.probe_fraction, shards // hosts, seed=it, size=size
                    )
                dev = sharding.put_local(step.with_probe(part, idx), mesh)
                state, m = train_step(state, dev, jnp.float32(lam))
                ms.append(m)
            m = {k: float(np.mean([jax.device_get(x[k]) for x in ms])) for k in ms[0]}

            # 5. Controller update from the entropy changes the update caused.
            if any_off and online:
                ctrl.update(m["dH_on"], m["dH_off"])
            t_end = time.perf_counter()

            # 6. Logs, samples, evaluation, checkpoint.
            n_tok = m["tokens_on"] + m["tokens_off"]
            metrics = {
                **m,
                "reward": mean(rew),
                "accuracy": mean(rew >= 0.5),
                "offline_reward": mean(off_rew[has_off]),
                "shift_mean": mean(shift[has_off]),
                "lambda_next": ctrl.lam,
                "D_on": ctrl.d_on,
                "D_off": ctrl.d_off,
                "response_length": mean(ro.lengths) if online else float("nan"),
                "truncated_frac": mean(ro.finish == "length") if online else float("nan"),
                "time/sample": t_sample - t0,
                "time/reward": t_reward - t_sample,
                "time/train": t_end - t_reward,
                "time/step": t_end - t0,
                "tokens_per_sec": n_tok / (t_end - t0),
                "verifier_timeouts": getattr(verifier, "timeouts", 0),
            }
            logger.log(it + 1, metrics)
            bar.set_postfix(
                reward=f"{metrics['reward']:.2f}",
                acc=f"{metrics['accuracy']:.2f}",
                lam=f"{lam:.2f}",
                tok_s=f"{metrics['tokens_per_sec']:.0f}",
                refresh=False,
            )
            bar.update(1)
            done = it + 1
            if online and cfg.eval.samples_every and done % cfg.eval.samples_every == 0:
                logger.samples(
                    done,
                    [
                        {
                            "prompt": batch["prompt"][i // g],
                            "completion": ro.text[i],
                            "answer": golds[i // g],
                            "reward": float(rew.reshape(-1)[i]),
                        }
                        for i in range(0, min(len(ro.text), cfg.eval.num_samples * g), g)
                    ],
                )
            if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.train.steps:
                evaluate_now(done)
            stopping = distributed.global_any(stop["signal"] is not None)  # any host signalled
            if done % cfg.train.save_every == 0 or done == cfg.train.steps or stopping:
                ckpts.save(
                    done,
                    state,
                    {
                        "step": done,
                        "controller": ctrl.state_dict(),
                        "loader": loader.get_state(),
                        "seed": cfg.train.seed,
                    },
                )
            if stopping:
                ckpts.wait()
                bar.close()
                log.info(
                    "stopped by a signal at step %d; checkpoint saved. Re-run the same "
                    "command to resume.",
                    done,
                )
                return {}
        bar.close()
        results = evaluate_now(cfg.train.steps)
        ckpts.wait()
        if main_proc:
            _summary(cfg, run_dir, results)
        return results
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        ckpts.close()
        verifier.close()
        logger.close()


def run_eval(cfg, params, model_cfg, tokenizer, records, verifier, mesh, logger, step_: int):
    """Held-out evaluation; logs eval/* metrics and returns the results."""
    e = cfg.eval
    res = evaluate.evaluate(
        params,
        model_cfg,
        tokenizer,
        records,
        verifier,
        k=e.k,
        temperature=e.temperature,
        max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens,
        batch_size=max(cfg.rollout.prompts, 32),
        prompt_suffix=cfg.data.prompt_suffix,
        chat=cfg.data.chat,
        system=cfg.data.system,
        seed=cfg.train.seed,
        mesh=mesh,
        keep_samples=e.num_samples,
    )
    logger.log(
        step_,
        {
            "eval/heldout_acc": res["pass@1"],
            f"eval/pass@{e.k}": res[f"pass@{e.k}"],
            "eval/mean_length": res["mean_length"],
        },
    )
    logger.samples(step_, [{**s, "eval": True} for s in res["samples"]])
    log.info("step %d: held-out pass@1 %.3f on %d problems", step_, res["pass@1"], res["problems"])
    return res


def _console_log() -> None:
    """redjax's own info lines on the console (JAX and absl may own the root logger)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _progress(total: int, start: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )


def _summary(cfg: config.Config, run_dir: str, results: dict) -> None:
    """Print the final table and write it (eval.md, eval.json) into the run folder."""
    import json

    text = evaluate.table(results)
    history = logs.read_metrics(run_dir)
    evals = [(h["step"], h["eval/heldout_acc"]) for h in history if "eval/heldout_acc" in h]
    curve = " -> ".join(f"{a:.2f}@{s}" for s, a in evals)
    summary = f"held-out accuracy over steps: {curve}\n\n{text}\n"
    with open(os.path.join(run_dir, "eval.md"), "w") as f:
        f.write(summary)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\n{summary}\nrun folder: {run_dir}")


def export(run_dir: str, out: str, step: int | None = None) -> None:
    """`redjax export`: a run's parameters (latest or given step) as a Hugging Face folder."""
    from redjax.models import save_pretrained

    model, tokenizer, _ = checkpoint.load_model(run_dir, step=step)
    save_pretrained(model, out, tokenizer=tokenizer)
    print(f"exported {run_dir} to {out}")
