"""`redjax train`: the RED loop (docs/design.md, "The loop"), top to bottom.

    setup(cfg) -> Run: data, tokenizer, mesh, model, step functions, controller, checkpoints
    for each step, the phases of the run's algo (redjax.algos):
        collect rollouts -> score -> (rollout.filter_groups: refill) -> advantages and shift
        -> update (L_rl + lambda * L_ext) -> probe and adjust lambda -> log / evaluate / checkpoint

Re-running the same command on the same run folder resumes from its last checkpoint.
SIGTERM / SIGINT (preemptible TPU VMs) save a checkpoint at the end of the current step, then
exit 128 + signal (an unfinished run, for schedulers to restart).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from redjax import (
    checkpoint,
    config,
    distributed,
    evaluate,
    groups,
    hub,
    logs,
    lora,
    red,
    rewards,
    runs,
    sharding,
    step,
)
from redjax import sampler as sampling
from redjax.algos import Phase, Plan
from redjax.data.pipeline import concat as concat_batches
from redjax.data.pipeline import make_loader
from redjax.data.task import (
    fit_lengths,
    load_data,
    load_tokenizer_for,
    scratch_note,
    tokenize_train,
)
from redjax.models import (
    Model,
    ModelConfig,
    attention,
    from_pretrained,
    init_params,
    param_shapes,
    save_pretrained,
    scratch_config,
)
from redjax.models.hf import write_config
from redjax.rewards.length import overlong_penalty
from redjax.rows import Rows, concat, make_rows
from redjax.shapes import pad_cols, response_width
from redjax.tokenizer import eos_ids

log = logging.getLogger("redjax")


# ----------------------------------------------------------------------------- the loop


def run(config_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Train (or resume) one run; returns the final evaluation results. Stopped by a signal, it
    saves and raises distributed.Stopped (exit 128 + signal)."""
    r = setup(config.load(config_path, overrides))
    stop, handlers = _catch_signals()
    try:
        if r.start == 0 and r.cfg.eval.every:
            run_eval(r, 0)
        for it in range(r.start, r.cfg.train.steps):
            clock = Clock()
            phase = r.plan.phase(it)
            got = collect(r, it, phase)
            clock.mark("sample")
            scores = score(r, got, phase)
            clock.mark("reward")
            got, scores = refill(r, it, phase, got, scores, clock)  # rollout.filter_groups
            targets = advantages(r, got, scores, phase)
            rows, checks = train_rows(r, got, targets, phase)
            metrics = {**update(r, rows, targets.lam, it), **checks}
            adjust_lambda(r, metrics, targets)
            clock.mark("train")
            report(r, it + 1, {**metrics, **summary(r, got, scores, targets, clock)}, targets)
            log_samples(r, it + 1, got, scores)
            stopping = distributed.global_any(stop["signal"] is not None)  # any host signalled
            save_and_evaluate(r, it + 1, stopping)
            if stopping:
                _stopped(r, it + 1, stop["signal"])
        return finish(r)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        r.close()


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Run:
    """Everything a run builds once, before its first step; `state` changes every update."""

    cfg: config.Config
    plan: Plan  # which rows each step trains on
    run_dir: str
    tokenizer: Any
    model_cfg: ModelConfig
    mesh: Any
    loader: Any  # this host's prompt batches (redjax.data.pipeline.Loader)
    test_records: list[dict]  # held-out problems
    state: dict  # params (the whole model, or its LoRA adapters), opt_state, step: on the mesh
    base: Any  # LoRA: the frozen base weights the adapters sit on; None: full fine-tuning
    base_dir: str | None  # LoRA: the base's folder, named in each checkpoint (runs.base_folder)
    ref_params: Any  # the frozen reference policy (rl.beta_kl > 0), else None
    train_step: Callable  # (state, Rows, lam, base) -> (state, metrics), jitted
    score_fn: Callable  # (params, Rows) -> (logp, entropy), jitted
    ctrl: red.RedController
    sp: sampling.SamplingParams
    verifier: Any
    ckpts: checkpoint.Checkpoints
    schedule_steps: int  # the run length the lr and lambda schedules were built for
    guard: step.SkipGuard  # counts updates skipped for a non-finite loss or gradient
    logger: logs.Logger
    bar: Any  # the progress bar
    start: int  # the first step to run (the checkpoint's step when resuming)

    @property
    def policy(self) -> Any:
        """The current policy's parameters for the sampler, the scorer and evaluation: the
        trained ones, with LoRA beside their frozen base (redjax.lora.join)."""
        return lora.join(self.base, self.state["params"])

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def hosts(self) -> int:
        return jax.process_count()

    @property
    def shards(self) -> int:
        """Ways the rows are split over the mesh (all hosts)."""
        return sharding.data_shards(self.mesh)

    def close(self) -> None:
        self.bar.close()
        self.ckpts.close()
        self.verifier.close()
        self.logger.close()


def setup(cfg: config.Config) -> Run:
    """Build a run from its config: run folder, data, model, step functions, controller,
    checkpoints (restored when the folder has one)."""
    _console_log()
    checkpoint.check_writable(os.path.abspath(cfg.train.run_dir))  # a clear error first
    train_records, test_records = load_data(cfg)
    local = dataclasses.replace(cfg, model=hub.local_model(cfg.model))  # hub ids resolved once
    tokenizer = load_tokenizer_for(local)
    tokenized = tokenize_train(cfg, train_records, tokenizer)  # once, for the fit and loader
    cfg = fit_lengths(cfg, tokenized)  # limits left at 0, from the data
    scratch_note(cfg, train_records)
    ckpts = checkpoint.Checkpoints(
        os.path.join(os.path.abspath(cfg.train.run_dir), "checkpoints"), keep=cfg.train.keep
    )
    schedule_steps = runs.check_resume(cfg, ckpts.saved_host())  # refuses another run's folder
    run_dir, model_dir = _run_folder(cfg)
    mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    model_cfg, params = load_model(local, tokenizer, mesh)
    sp = sampling_params(cfg.rollout, tokenizer, model_cfg)
    if jax.process_index() == 0:  # for eval and export: the model, its end ids, its tokenizer
        write_config(model_cfg.replace(generation_eos=sp.eos_ids), model_dir)
        tokenizer.save_pretrained(model_dir)
    model_cfg, params, base = adapt(cfg, model_cfg, params, mesh, model_dir)
    loader = make_train_loader(cfg, train_records, tokenizer, tokenized)
    tx = step.make_optimizer(cfg.optim, schedule_steps * cfg.optim.minibatches)
    state, state_sh = step.init_state(params, tx, mesh)
    ref_params = reference(cfg, params, base)
    del params
    ctrl = red.RedController.from_config(cfg.red, cfg.rl, schedule_steps)
    ckpts.check_space(state)  # fail now if one checkpoint cannot fit
    guard = step.SkipGuard(cfg.train.max_skipped_steps)  # updates skipped as non-finite
    start, state, host = ckpts.restore_latest(state)  # the newest readable checkpoint
    if start:
        ctrl.load_state_dict(host["controller"])
        loader.set_state(host["loader"])
        guard.load_state_dict(host.get("skips", {"total": 0, "run": 0}))
        log.info("resumed %s from step %d", run_dir, start)
        if start >= cfg.train.steps:
            log.info("the run is finished (train.steps=%d); to train on, raise train.steps "
                     "with train.extend=true", cfg.train.steps)  # fmt: skip
    main = jax.process_index() == 0
    return Run(
        cfg=cfg,
        plan=Plan.from_config(cfg),
        run_dir=run_dir,
        tokenizer=tokenizer,
        model_cfg=model_cfg,
        mesh=mesh,
        loader=loader,
        test_records=test_records,
        state=state,
        base=base,
        base_dir=None if base is None else runs.base_folder(local, run_dir),
        ref_params=ref_params,
        train_step=step.jit_train_step(
            model_cfg, step.StepConfig.from_config(cfg), tx, state_sh, mesh
        ),
        score_fn=step.jit_score(
            model_cfg,
            cfg.train.chunk,
            cfg.optim.micro_batches,
            mesh,
            step.scoring_temperature(cfg),
        ),  # fmt: skip
        ctrl=ctrl,
        sp=sp,
        verifier=rewards.Verifier.from_config(cfg.reward),
        ckpts=ckpts,
        schedule_steps=schedule_steps,
        guard=guard,
        logger=logs.Logger(run_dir, start, main, cfg.train.report_to, config.to_dict(cfg)),
        bar=_progress(cfg.train.steps, start, main),
        start=start,
    )


def _run_folder(cfg: config.Config) -> tuple[str, str]:
    """The run folder and its model/ folder (config + tokenizer, for export and eval), made;
    the resolved config written into it."""
    run_dir = os.path.abspath(cfg.train.run_dir)
    model_dir = os.path.join(run_dir, "model")
    os.makedirs(model_dir, exist_ok=True)
    if jax.process_index() == 0:
        config.dump(cfg, os.path.join(run_dir, "config.yaml"))
    return run_dir, model_dir


def load_model(cfg: config.Config, tokenizer: Any, mesh: Any) -> tuple[ModelConfig, Any]:
    """The policy's config and parameters, placed straight onto their shardings."""
    m = cfg.model
    attention.check(m.attention, m.dtype)
    shardings = lambda mc: sharding.param_shardings(param_shapes(mc), mesh)
    if m.path:
        model = from_pretrained(m.path, m.dtype, param_dtype=m.param_dtype, shardings=shardings)
        return model.cfg.replace(remat=m.remat, attention=m.attention), model.params
    extra = (("eos_token_id", tokenizer.eos_token_id), ("pad_token_id", tokenizer.pad_token_id))
    mc = scratch_config(m, len(tokenizer), extra)
    init = jax.jit(lambda: init_params(mc, cfg.train.seed), out_shardings=shardings(mc))
    return mc, init()


def adapt(
    cfg: config.Config, model_cfg: ModelConfig, params: Any, mesh: Any, model_dir: str
) -> tuple[ModelConfig, Any, Any]:
    """(model config, trained parameters, frozen base). With lora.rank > 0 the loaded weights
    become the frozen base and the trained parameters are new adapters (B = 0: the policy starts
    as the base), placed by the base's partition rules; a base trained from scratch is written
    to model/ so that export finds it (runs.base_folder). Otherwise the parameters themselves and no base."""
    spec = lora.LoraSpec.from_config(cfg.lora)
    if spec is None:
        return model_cfg, params, None
    model_cfg = model_cfg.replace(lora_alpha=spec.alpha)
    if not cfg.model.path:
        done = os.path.isfile(os.path.join(model_dir, "model.safetensors"))
        if distributed.global_any(not done):  # every process takes part in the gathers
            save_pretrained(Model(model_cfg, params), model_dir)
    return model_cfg, lora.placed_adapters(model_cfg, spec, cfg.train.seed + 1, mesh), params


def reference(cfg: config.Config, params: Any, base: Any) -> Any:
    """The frozen reference policy for rl.beta_kl > 0 (else None): a copy of the initial
    parameters; with LoRA the base itself (the adapters start at zero update), no copy."""
    if not cfg.rl.beta_kl:
        return None
    return base if base is not None else jax.tree.map(jnp.copy, params)


def make_train_loader(
    cfg: config.Config, records: list[dict], tokenizer: Any, tokenized: tuple | None = None
) -> Any:
    """This host's endless, resumable loader of rollout.prompts / hosts prompts a batch
    (`tokenized`: the records' `tokenize_train` output, if made already)."""
    hosts = jax.process_count()
    if cfg.rollout.prompts % hosts:
        raise ValueError(f"rollout.prompts={cfg.rollout.prompts} must divide over {hosts} hosts")
    d = cfg.data
    return make_loader(
        records,
        tokenizer,
        batch_size=cfg.rollout.prompts // hosts,
        seed=cfg.train.seed,
        max_prompt_len=d.max_prompt_len,
        max_offline_len=d.max_offline_len,
        prompt_suffix=d.prompt_suffix,
        chat=d.chat,
        system=d.system,
        shard_index=jax.process_index(),
        shard_count=hosts,
        tokenized=tokenized,
    )


def sampling_params(
    ro: config.RolloutCfg, tokenizer: Any, model_cfg: ModelConfig
) -> sampling.SamplingParams:
    """The sampler's settings for rollouts, from the rollout section; a rollout ends at the
    model's and the tokenizer's end ids (`tokenizer.eos_ids`)."""
    return sampling.SamplingParams(
        temperature=ro.temperature,
        top_k=ro.top_k,
        top_p=ro.top_p,
        max_new_tokens=ro.max_new_tokens,
        eos_ids=tuple(eos_ids(tokenizer, model_cfg)),
    )


# ----------------------------------------------------------------------------- the phases


@dataclasses.dataclass
class Collected:
    """One step's prompt batch (left-padded to the widest of all hosts) and its rollouts."""

    batch: dict  # redjax.data.pipeline layout: prompt_ids, prompt_text, answer, ...
    ro: sampling.Rollouts | None  # G rollouts per prompt (None in an SFT phase)
    group: int  # G
    # rollout.filter_groups: the prompts (of `batch`) whose groups the Recall term trains on,
    # -1 in a slot no group with a signal filled; None: every prompt's
    trained: np.ndarray | None = None
    counts: dict = dataclasses.field(default_factory=dict)  # the filter's logged counters


@dataclasses.dataclass
class Scores:
    """Rewards and correctness of the rollouts and of the teacher traces."""

    rew: np.ndarray  # [B, G] (G = 0 in an SFT phase): what the advantages are made of
    correct: np.ndarray  # bool [B, G]: the answer is right (the format bonus aside)
    off_rew: np.ndarray  # [B]
    has_off: np.ndarray  # bool [B]: a teacher trace this phase trains on
    overlong: np.ndarray | None = None  # [B, G]: reward taken off over-long rollouts (rl section)

    @staticmethod
    def concat(parts: list[Scores]) -> Scores:
        """The scores of `parts`, one prompt batch after the other."""
        cat = lambda xs: None if xs[0] is None else np.concatenate(xs)
        return Scores(
            *(cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Scores))
        )


@dataclasses.dataclass
class Targets:
    """What the objective weighs each row by, and lambda for this step."""

    adv: np.ndarray  # [B, G]
    adv_off: np.ndarray  # [B]
    shift: np.ndarray  # [B]
    lam: float
    any_off: bool  # some host has a teacher trace this step (one decision for all hosts)


def collect(r: Run, it: int, phase: Phase, refills: int = 0) -> Collected:
    """1. The next prompt batch and, in an online phase, G rollouts per prompt (`refills`: the
    batches this step drew before, for a sampling seed of its own)."""
    batch = next(r.loader)
    width = distributed.global_max(batch["prompt_ids"].shape[1])
    batch = {
        **batch,
        "prompt_ids": pad_cols(batch["prompt_ids"], width, r.pad_id, left=True),
        "prompt_mask": pad_cols(batch["prompt_mask"], width, False, left=True),
    }
    g = r.cfg.rollout.group_size
    seed = r.cfg.train.seed * 1_000_003 + it + refills * 2**24
    ro = rollouts(r, batch, group=g, seed=seed) if phase.online else None
    return Collected(batch, ro, g)


def rollouts(r: Run, batch: dict, *, group: int, seed: int) -> sampling.Rollouts:
    """G rollouts of this host's prompts. The sampler runs on the global batch (every host's
    prompts, gathered), then each host keeps the rows of its own prompts."""
    ids, mask = batch["prompt_ids"], batch["prompt_mask"]
    if r.hosts > 1:
        ids = distributed.gather(ids).reshape(-1, ids.shape[1])
        mask = distributed.gather(mask).reshape(-1, mask.shape[1])
    ro = sampling.sample(
        r.policy,
        r.model_cfg,
        ids,
        mask,
        num_samples=group,
        sp=r.sp,
        seed=seed,
        tokenizer=r.tokenizer,
        mesh=r.mesh,
        sub_batch=r.cfg.rollout.sub_batch,
    )
    if r.hosts == 1:
        return ro
    n = len(batch["prompt_ids"]) * group
    lo = jax.process_index() * n
    fields = [f.name for f in dataclasses.fields(ro) if getattr(ro, f.name) is not None]
    return dataclasses.replace(ro, **{k: getattr(ro, k)[lo : lo + n] for k in fields})


def score(r: Run, got: Collected, phase: Phase) -> Scores:
    """2. Rewards and correctness of every rollout (less the overlong penalty, rl section),
    rewards of the teacher traces this phase trains on."""
    golds, records = got.batch["answer"], got.batch["record"]
    b, g = len(golds), got.group
    overlong = None
    if got.ro is not None:
        each = lambda xs: [x for x in xs for _ in range(g)]  # prompt-major, as the rollouts
        judged = r.verifier.judge(got.ro.text, each(golds), each(records))
        rew, correct = judged.reward.reshape(b, g), judged.correct.reshape(b, g)
        rl = r.cfg.rl
        if rl.overlong_buffer:
            budget = r.cfg.rollout.max_new_tokens
            overlong = overlong_penalty(
                got.ro.lengths, budget, rl.overlong_buffer, rl.overlong_penalty
            ).reshape(b, g)
            rew = rew - overlong
    else:
        rew, correct = np.zeros((b, 0), np.float32), np.zeros((b, 0), bool)
    has_off = np.asarray(got.batch["has_offline"]) & phase.offline
    off_rew = np.zeros(b)
    if has_off.any():
        off_rew = r.verifier.score(got.batch["solution"], golds, records)
    return Scores(rew, correct, off_rew, has_off, overlong)


def refill(
    r: Run, it: int, phase: Phase, got: Collected, s: Scores, clock: Clock
) -> tuple[Collected, Scores]:
    """2b. rollout.filter_groups: the groups whose rewards are all equal (zero advantage) are
    not trained on, and further prompt batches are drawn, up to rollout.max_refills, until every
    host has its share of rollout.prompts groups with a signal (else the step trains on those it
    has). Every prompt drawn keeps its teacher trace for the Extend term."""
    ro_cfg = r.cfg.rollout
    if not (ro_cfg.filter_groups and phase.online):
        return got, s
    want, parts = ro_cfg.prompts // r.hosts, [(got, s)]
    trained = groups.keep(group_rewards(r, s), want)
    while len(parts) <= ro_cfg.max_refills and distributed.global_any(trained.min() < 0):
        more = collect(r, it, phase, refills=len(parts))
        clock.mark("sample")
        parts.append((more, score(r, more, phase)))
        clock.mark("reward")
        s = Scores.concat([p[1] for p in parts])
        trained = groups.keep(group_rewards(r, s), want)
    total = lambda n: int(distributed.gather(np.int64(n)).sum())
    counts = {
        "groups_filtered": total((~groups.has_signal(group_rewards(r, s))).sum()),
        "groups_trained": total((trained >= 0).sum()),
        "refills": len(parts) - 1,
        "prompts_consumed": total(len(s.rew)),
    }
    if counts["groups_trained"] < ro_cfg.prompts:
        log.info(
            "step %d: %d of %d groups have a learning signal after %d refills "
            "(rollout.max_refills): the step trains on those", it + 1,
            counts["groups_trained"], ro_cfg.prompts, counts["refills"],
        )  # fmt: skip
    batch = concat_batches([p[0].batch for p in parts], r.pad_id)
    ro = sampling.concat_rollouts([p[0].ro for p in parts])
    return Collected(batch, ro, got.group, trained, {k: float(v) for k, v in counts.items()}), s


def group_rewards(r: Run, s: Scores) -> np.ndarray:
    """The rewards each group's advantages are made of: its rollouts' and, with
    red.offline_in_group, its trace's (redjax.groups)."""
    return groups.group_rewards(s.rew, s.off_rew, s.has_off & r.ctrl.offline_in_group)


def advantages(r: Run, got: Collected, s: Scores, phase: Phase) -> Targets:
    """3. Group advantages, the per-prompt policy shift and lambda (the controller); without
    rollouts, SFT: teacher traces with unit advantage and no shift."""
    if phase.online:
        adv, adv_off, _acc, shift = r.ctrl.advantages(s.rew, s.off_rew, s.has_off, s.correct)
    else:
        adv = s.rew
        adv_off, shift = s.has_off.astype(np.float32), np.zeros(len(s.has_off), np.float32)
    any_off = distributed.global_any(s.has_off.any())
    return Targets(adv, adv_off, shift, r.ctrl.lam if any_off else 0.0, any_off)


def train_rows(r: Run, got: Collected, t: Targets, phase: Phase) -> tuple[Rows, dict]:
    """4a. This host's rows: the B*G rollouts of the trained groups and the teacher traces of
    the step's prompts, each after its prompt, with the old (and reference) log-probs of their
    response tokens and the entropy gate; and how far the sampler's log-probs are from the old
    ones."""
    mb = r.cfg.optim.micro_batches * r.cfg.optim.minibatches
    cfg = r.cfg
    rows = host_rows(
        got, t, online=phase.online, multiple=r.shards * mb // r.hosts, pad=r.pad_id,
        max_width=max(cfg.rollout.max_new_tokens, cfg.data.max_offline_len),
        mark_truncated=cfg.rl.mask_truncated,
    )  # fmt: skip
    tokens = sharding.put_local(rows.tokens(), r.mesh)
    old_logp, old_ent = map(sharding.get_local, r.score_fn(r.policy, tokens))
    ref_logp = old_logp
    if r.ref_params is not None:
        ref_logp = sharding.get_local(r.score_fn(r.ref_params, tokens)[0])
    gate = entropy_gate(old_ent, rows, cfg.rl.gate_frac) if cfg.rl.gate_frac < 1 else None
    checks = {
        **logp_mismatch(old_logp, trained_rollouts(got)[1], cfg.rollout.temperature),
        "row_width": float(rows.resp_ids.shape[1]),  # response tokens a row has in this step
    }
    return rows.replace(old_logp=old_logp, ref_logp=ref_logp, gate=gate), checks


def entropy_gate(entropy: np.ndarray, rows: Rows, frac: float) -> np.ndarray:
    """The online tokens the gate keeps: entropy (old policy) at least the (1 - frac)-quantile
    over every host's online tokens, one threshold for the whole step."""
    on = rows.resp_mask & rows.online[:, None]
    if rows.truncated is not None:  # rl.mask_truncated: those rows are out of the Recall term
        on = on & ~rows.truncated[:, None]
    values = everywhere(entropy, on)
    threshold = np.quantile(values, 1.0 - frac) if values.size else np.inf
    return on & (entropy >= threshold)


def logp_mismatch(old_logp: np.ndarray, ro: sampling.Rollouts | None, temperature: float) -> dict:
    """Mean and max |sampler's log-prob - trainer's old log-prob| over the sampled tokens (all
    hosts): the training / inference mismatch (nan without sampled rollouts)."""
    if ro is None or temperature == 0:
        return {"logp_mismatch_mean": float("nan"), "logp_mismatch_max": float("nan")}
    n, w = len(ro.logp), min(ro.logp.shape[1], old_logp.shape[1])  # trained tokens fit the rows
    diff, mask = np.abs(old_logp[:n, :w] - ro.logp[:, :w]), ro.mask[:, :w]
    return {
        "logp_mismatch_mean": mean(diff[mask]),
        "logp_mismatch_max": float(everywhere(diff, mask).max(initial=0.0)),
    }


def trained_rollouts(got: Collected) -> tuple[np.ndarray, sampling.Rollouts | None]:
    """The rollouts the Recall term trains on, as rows of got.ro, and those rollouts: every
    group's, or those of the groups got.trained names (a -1 slot: G rows without tokens)."""
    ro, g = got.ro, got.group
    if ro is None or got.trained is None:
        return np.arange(0 if ro is None else len(ro.tokens)), ro
    idx = (np.maximum(got.trained, 0)[:, None] * g + np.arange(g)).reshape(-1)
    live = np.repeat(got.trained >= 0, g)
    pick = lambda x: x[idx]
    return idx, sampling.Rollouts(
        tokens=pick(ro.tokens), mask=pick(ro.mask) & live[:, None], logp=pick(ro.logp),
        logp_model=pick(ro.logp_model), lengths=pick(ro.lengths) * live, finish=pick(ro.finish),
    )  # fmt: skip


def host_rows(
    got: Collected,
    t: Targets,
    *,
    online: bool,
    multiple: int,
    pad: int,
    max_width: int,
    mark_truncated: bool = False,
) -> Rows:
    """Host rows of one step. Responses are cut or right-padded to the longest response of any
    host, bucketed up to `max_width` (shapes.response_width); rows are padded with empty rows
    (no response tokens) to a multiple of the data shards times the micro-batches. Every host
    builds the same shapes: widths and row counts are global maxima. `mark_truncated`: set
    `Rows.truncated`, the rollouts the budget cut (for rl.mask_truncated)."""
    flag = (lambda x: np.asarray(x, bool)) if mark_truncated else (lambda x: None)
    batch, parts = got.batch, []
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    if online:
        idx, ro = trained_rollouts(got)
        n, q = len(idx), idx // got.group  # q: the prompt of each rollout
        parts.append(
            make_rows(
                prompt_ids[q], prompt_mask[q], ro.tokens, ro.mask, np.ones(n, bool),
                t.adv.reshape(-1)[idx] * ro.mask.any(1), np.zeros(n),
                truncated=flag(ro.finish == "length"),
            )
        )  # fmt: skip
    keep = np.flatnonzero(batch["has_offline"]) if t.any_off else np.zeros(0, int)
    if len(keep):
        parts.append(
            make_rows(
                prompt_ids[keep], prompt_mask[keep], batch["offline_ids"][keep],
                batch["offline_mask"][keep], np.zeros(len(keep), bool), t.adv_off[keep],
                t.shift[keep], truncated=flag(np.zeros(len(keep))),
            )
        )  # fmt: skip
    if not parts:  # nothing to learn from on this host: one empty row keeps shapes in step
        empty = np.zeros((1, 1), bool)
        parts.append(
            make_rows(
                prompt_ids[:1], prompt_mask[:1], np.full((1, 1), pad), empty, [True], [0], [0],
                truncated=flag([False]),
            )
        )  # fmt: skip
    longest = distributed.global_max(max(int(p.resp_mask.sum(1).max()) for p in parts))
    width = response_width(longest, max_width)
    fit = lambda x, value: pad_cols(x[:, :width], width, value)
    parts = [
        p.replace(resp_ids=fit(p.resp_ids, pad), resp_mask=fit(p.resp_mask, False)) for p in parts
    ]
    rows = concat(parts)
    n = rows.size
    total = distributed.global_max(n)
    extra = total - n + (-total % multiple)
    if extra:  # empty rows: a copy of row 0 with no response tokens
        rows = jax.tree.map(lambda v: np.concatenate([v, v[:1].repeat(extra, 0)]), rows)
        rows.resp_mask[n:] = False
    return rows


def update(r: Run, rows: Rows, lam: float, it: int) -> dict[str, float]:
    """4b. optim.minibatches updates, each on every n-th row with its own probe subset; the
    mean of their metrics."""
    n, frac, o = r.cfg.optim.minibatches, r.cfg.red.probe_fraction, r.cfg.optim
    multiple = r.shards // r.hosts * o.micro_batches  # the probe is scored in micro-batches too
    ms = []
    for u in range(n):
        part = jax.tree.map(lambda v, u=u: v[u::n], rows)
        idx = step.probe_rows(part.online, frac, multiple, seed=it)
        size = distributed.global_max(len(idx))  # the same probe size on every host
        if size > len(idx):
            idx = step.probe_rows(part.online, frac, multiple, seed=it, size=size)
        dev = sharding.put_local(part.with_probe(idx), r.mesh)
        r.state, m = r.train_step(r.state, dev, jnp.float32(lam), r.base)
        ms.append(m)
    ms = jax.device_get(ms)  # one transfer of every update's metrics
    skipped = r.guard.count(ms)  # updates skipped for a non-finite loss or gradient
    m = {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}
    count = max((it + 1) * n - 1 - r.guard.total, 0)  # skipped updates do not count
    lr = step.learning_rate(r.cfg.optim, r.schedule_steps * n)(count)  # the last update's
    return {**m, "lr": float(lr), "skipped": float(skipped), "skipped_steps": r.guard.total}


def adjust_lambda(r: Run, m: dict[str, float], t: Targets) -> None:
    """5. The controller's step: lambda's target from the entropy changes this update caused
    (where lambda adapts and the step trained on traces: the probe's, or the drift of the batch
    entropies), and its step count, which advances every step (red.lam=schedule follows it)."""
    dh = None
    if r.plan.adapts and t.any_off and not m["skipped"]:  # a skipped update changed nothing
        dh = r.ctrl.entropy_changes(m)
    elif r.plan.adapts:
        r.ctrl.h_prev = None  # drift spans one update
    if dh is None:
        r.ctrl.advance()
        return
    r.ctrl.update(*dh)
    m["dH_on"], m["dH_off"] = dh  # drift: the changes the controller read


# ----------------------------------------------------------------------------- logs, evaluation


class Clock:
    """Wall time of the phases of one step: a mark ends a phase begun at the previous mark (a
    phase marked again, as sampling and rewards in a refill, adds up)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.spent: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.spent[name] = self.spent.get(name, 0.0) + now - self.last
        self.last = now

    def times(self) -> dict[str, float]:
        t = self.spent
        return {
            "time/sample": t["sample"],
            "time/reward": t["reward"],
            "time/train": t["train"],
            "time/step": self.last - self.start,
        }


def mean(x: Any) -> float:
    """Mean over the rows of all hosts (nan when there are none)."""
    x = np.asarray(x, np.float64).reshape(-1)
    total, count = distributed.gather(np.array([x.sum(), x.size])).sum(0)
    return float(total / count) if count else float("nan")


def digest(texts: list[str]) -> float:
    """A 24-bit checksum of the step's prompts on all hosts (exact as a float): runs that see
    the same data in the same order log the same digests."""
    own = zlib.crc32("\x00".join(texts).encode("utf-8"))
    return float(zlib.crc32(distributed.gather(np.int64(own)).tobytes()) & 0xFFFFFF)


def everywhere(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The kept values of x from every host (hosts hold the same number of rows)."""
    xs, keeps = distributed.gather(x), distributed.gather(keep)
    return np.asarray(xs, np.float64)[np.asarray(keeps, bool)]


def summary(r: Run, got: Collected, s: Scores, t: Targets, clock: Clock) -> dict[str, float]:
    """The step's host-side metrics: rewards, controller state, rollout lengths, times."""
    ro, times = got.ro, clock.times()
    return {
        "reward": mean(s.rew),
        "accuracy": mean(s.correct),
        "offline_reward": mean(s.off_rew[s.has_off]),
        "shift_mean": mean(t.shift[s.has_off]),
        "shift": everywhere(t.shift, s.has_off),  # its distribution: quantiles, histogram
        "lambda_next": r.ctrl.lam,
        "lambda_target": r.ctrl.target,
        "lambda_at_bound": float(r.ctrl.at_bound),  # -1 / +1: the target at a bound, 0 inside
        "D_on": r.ctrl.d_on,
        "D_off": r.ctrl.d_off,
        "response_length": mean(ro.lengths) if ro is not None else float("nan"),
        "response_length_max": float(distributed.global_max(0 if ro is None else ro.lengths.max())),
        "rollouts": float(distributed.gather(np.int64(0 if ro is None else len(ro.tokens))).sum()),
        "batch_digest": digest(got.batch["prompt_text"]),
        "truncated_frac": mean(ro.finish == "length") if ro is not None else float("nan"),
        **got.counts,  # rollout.filter_groups: groups filtered and trained, refills, prompts
        **({} if s.overlong is None else {"overlong_penalty": mean(s.overlong)}),
        **times,
    }


def report(r: Run, done: int, metrics: dict[str, float], t: Targets) -> None:
    """6a. metrics.jsonl / TensorBoard every train.log_every steps, and the progress bar."""
    n_tok = metrics["tokens_on"] + metrics["tokens_off"]
    metrics["tokens_per_sec"] = n_tok / metrics["time/step"]
    metrics["verifier_timeouts"] = getattr(r.verifier, "timeouts", 0)
    if done % r.cfg.train.log_every == 0 or done == r.cfg.train.steps:
        r.logger.log(done, metrics)
    r.guard.check(done, metrics)  # raises after train.max_skipped_steps in a row
    r.bar.set_postfix(
        reward=f"{metrics['reward']:.2f}",
        acc=f"{metrics['accuracy']:.2f}",
        lam=f"{t.lam:.2f}",
        tok_s=f"{metrics['tokens_per_sec']:.0f}",
        skipped=r.guard.total,
        refresh=False,
    )
    r.bar.update(1)


def log_samples(r: Run, done: int, got: Collected, s: Scores) -> None:
    """6b. A few rollouts with their prompt, answer and reward, every eval.samples_every steps."""
    e, ro, g = r.cfg.eval, got.ro, got.group
    if ro is None or not e.samples_every or done % e.samples_every:
        return
    b = got.batch
    r.logger.samples(
        done,
        [
            {
                "prompt": b["prompt_text"][i // g],
                "completion": ro.text[i],
                "answer": b["answer"][i // g],
                "reward": float(s.rew.reshape(-1)[i]),
            }
            for i in range(0, min(len(ro.text), e.num_samples * g), g)
        ],
    )


def save_and_evaluate(r: Run, done: int, stopping: bool) -> None:
    """6c. Held-out evaluation every eval.every steps (the last one comes in `finish`), and a
    checkpoint every train.save_every steps, at the end, or when stopping."""
    cfg = r.cfg
    if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.train.steps:
        run_eval(r, done)
    if done % cfg.train.save_every == 0 or done == cfg.train.steps or stopping:
        host = {
            "step": done,
            "controller": r.ctrl.state_dict(),
            "loader": r.loader.get_state(),
            "seed": cfg.train.seed,
            "skips": r.guard.state_dict(),
            "config": config.to_dict(cfg),  # a resume with another config is refused
            "schedule_steps": r.schedule_steps,
        }
        if r.base_dir is not None:  # LoRA: the checkpoint holds adapters; this names their base
            host["base"] = r.base_dir
        r.logger.sync()  # the logs up to this checkpoint reach the disk
        r.ckpts.save(done, r.state, host)


def run_eval(r: Run, step_: int) -> dict:
    """Held-out evaluation; logs eval/* metrics and returns the results."""
    cfg, e = r.cfg, r.cfg.eval
    res = evaluate.evaluate(
        r.policy,
        r.model_cfg,
        r.tokenizer,
        r.test_records,
        r.verifier,
        n=e.k,  # eval.k: samples per problem (n); pass@1 and pass@n are reported
        ks=(e.k,),
        temperature=e.temperature,
        top_p=1.0,  # held-out evaluation samples the whole distribution (no eval.top_p)
        max_new_tokens=e.max_new_tokens or cfg.rollout.max_new_tokens,
        batch_size=evaluate.batch_size(cfg),
        prompt_suffix=cfg.data.prompt_suffix,
        chat=cfg.data.chat,
        system=cfg.data.system,
        seed=cfg.train.seed,
        extract=cfg.reward.extract,
        mesh=r.mesh,
        keep_samples=e.num_samples,
    )
    metrics = {
        "eval/heldout_acc": res[f"avg@{e.k}"],  # = pass@1
        f"eval/pass@{e.k}": res[f"pass@{e.k}"],
        "eval/mean_length": res["mean_length"],
        "eval/truncated_frac": res["truncated_frac"],
    }
    if e.k > 1:
        metrics[f"eval/maj@{e.k}"] = res[f"maj@{e.k}"]
    r.logger.log(step_, metrics)
    r.logger.samples(step_, [{**s, "eval": True} for s in res["samples"]])
    log.info("step %d: held-out pass@1 %.3f on %d problems", step_, res["pass@1"], res["problems"])
    return res


def finish(r: Run) -> dict:
    """The final evaluation, written into the run folder (eval.md, eval.json) and printed."""
    r.bar.close()
    results = run_eval(r, r.cfg.train.steps)
    r.ckpts.wait()
    if jax.process_index() == 0:
        _summary(r.run_dir, results)
    return results


def _stopped(r: Run, done: int, signum: int | None) -> None:
    """After the signal's checkpoint: exit 128 + signal, an unfinished run for schedulers."""
    r.ckpts.wait()
    r.bar.close()
    log.info(
        "stopped by a signal at step %d; checkpoint saved. Re-run the same command to resume.",
        done,
    )
    raise distributed.Stopped(signum or signal.SIGTERM)


def _catch_signals() -> tuple[dict, dict]:
    """A flag set by SIGTERM / SIGINT (the step in progress finishes and saves), and the
    previous handlers to put back. A second signal stops at once, without saving."""
    stop: dict = {"signal": None}

    def handle(signum: int, _frame: Any) -> None:
        if stop["signal"] is not None:
            log.info("second signal: stopping now, without a checkpoint of this step")
            raise distributed.Stopped(signum)
        stop["signal"] = signum
        log.info("signal %d: saving at the end of this step (again to stop at once)", signum)

    handlers = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return stop, handlers


def _console_log() -> None:
    """redjax's own info lines on the console (JAX and absl may own the root logger), on the
    current stderr (a notebook or a test may have replaced it since the last run)."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    for handler in log.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is not sys.stderr:
            handler.stream = sys.stderr  # not setStream: it flushes the old, maybe closed, one


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


def _summary(run_dir: str, results: dict) -> None:
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
