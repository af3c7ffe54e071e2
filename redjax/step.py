"""The RED train step: one pure function, jitted under the mesh.

A batch is a `redjax.rows.Rows` of N rows, each a left-padded prompt followed by a
right-padded response: the model's own rollouts (online rows) and the teacher's traces
(offline rows). The step scores the
response tokens (log-probs, entropies), forms L = L_rl + lambda * L_ext, accumulates gradients
over micro-batches, applies the optax update, then re-scores a probe subset with the new
parameters to measure the entropy change the update caused on online and offline tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from redjax import lora, objective, sharding
from redjax.algos import Plan
from redjax.config import Config, OptimCfg
from redjax.models import ModelConfig, forward, unembedding
from redjax.models.transformer import precision
from redjax.rows import Rows


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static knobs of the step (hashable), from the rl, red, train and optim sections of the
    config (docs/design.md, the objective)."""

    eps_low: float
    eps_high: float
    agg: str
    norm_const: float | None  # agg=constant: the divisor
    beta_kl: float
    entropy_coef: float
    gate_frac: float
    ratio: str  # the importance ratio: per token, or per sequence (GSPO)
    dual_clip: float | None  # dual-clip PPO bound for negative advantages (None: off)
    mask_truncated: bool  # rollouts cut by the budget (Rows.truncated) carry no RL loss
    shaping_gamma: float | None
    ext_agg: str  # the Extend term's mean: over trace tokens, or per trace then over traces
    chunk: int  # tokens per chunk of the log-prob / entropy computation
    micro_batches: int
    probe: bool  # re-score probe rows after the update (the controller's entropy deltas)
    temperature: float  # log-probs and entropies at the sampling temperature
    seed: int  # train.seed: the stochastic rounding's keys

    @classmethod
    def from_config(cls, cfg: Config, **replace: Any) -> StepConfig:
        """The step's knobs of a run (`replace`: fields to set otherwise, e.g. in tests)."""
        r = cfg.rl
        out = cls(
            eps_low=r.eps_low,
            eps_high=r.eps_high,
            agg=r.agg,
            norm_const=r.norm_const or float(cfg.rollout.max_new_tokens),
            beta_kl=r.beta_kl,
            entropy_coef=r.entropy_coef,
            gate_frac=r.gate_frac,
            ratio=r.ratio,
            dual_clip=r.dual_clip,
            mask_truncated=r.mask_truncated,
            shaping_gamma=cfg.red.shaping_gamma,
            ext_agg=cfg.red.ext_agg,
            chunk=cfg.train.chunk,
            micro_batches=cfg.optim.micro_batches,
            probe=Plan.from_config(cfg).probe,  # where the probe's entropy changes drive lambda
            temperature=scoring_temperature(cfg),
            seed=cfg.train.seed,
        )
        return dataclasses.replace(out, **replace)


def scoring_temperature(cfg: Config) -> float:
    """The temperature the step scores tokens at: the rollouts' (1 for greedy rollouts)."""
    return cfg.rollout.temperature or 1.0


def learning_rate(o: OptimCfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up then cosine decay to lr * min_lr_ratio at `total_steps` updates (and that
    value after them)."""
    return optax.warmup_cosine_decay_schedule(
        0.0,
        o.lr,
        max(o.warmup_steps, 0),
        max(total_steps, o.warmup_steps + 1),
        o.lr * o.min_lr_ratio,
    )


def make_optimizer(o: OptimCfg, total_steps: int) -> optax.GradientTransformation:
    """AdamW at `learning_rate(o, total_steps)`, after global-norm clipping (clip_norm 0:
    none)."""
    schedule = learning_rate(o, total_steps)
    adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
    if o.clip_norm:
        return optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)
    return adamw


def score(
    params: Any,
    cfg: ModelConfig,
    rows: Rows,
    chunk: int,
    mesh: Mesh | None = None,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies [N, C] of the response tokens at `temperature`, in float32
    chunks of `chunk` tokens (over all devices: chunk / data shards rows x positions on each)."""
    tokens = jnp.concatenate([rows.prompt_ids, rows.resp_ids], axis=1)
    mask = jnp.concatenate([rows.prompt_mask, rows.resp_mask], axis=1)
    hidden, _ = forward(params, cfg, tokens, mask=mask, hidden=True, mesh=mesh)
    p, c = rows.prompt_ids.shape[1], rows.resp_ids.shape[1]
    h = hidden[:, p - 1 : p + c - 1]  # the state before each response token predicts it
    # The unembedding stays in its parameter dtype: its gradient accumulates over chunks there.
    w, shards = unembedding(params, cfg), sharding.data_shards(mesh)
    if shards == 1:
        with precision(cfg.dtype):
            return objective.token_stats_chunked(
                h, w, rows.resp_ids, chunk=chunk, temperature=temperature
            )
    # Each device scores its own rows, so the unembedding's gradient sums over the chunks on
    # the device and is reduced over devices once, not once per chunk. "tensor" stays automatic.
    axes = sharding.batch_axes(mesh)

    def local(h, w, targets):  # w marked per-device up front: its cotangent is summed here...
        w = jax.lax.pcast(w, axes, to="varying")  # ...and reduced once, where this is transposed
        per_device = max(1, chunk // shards)
        return objective.token_stats_chunked(
            h, w, targets, chunk=per_device, temperature=temperature
        )

    spec = P(axes)
    with precision(cfg.dtype):
        return jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(spec, P(), spec),
            out_specs=(spec, spec),
            axis_names=set(axes),
        )(h, w, rows.resp_ids)


def _micro(x: jax.Array, m: int) -> jax.Array:
    """[N, ...] -> [m, N/m, ...] taking every m-th row, so each micro-batch stays spread over
    the devices that hold the rows (no data movement)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)


def _sum_stats(ent, mask, rows):
    """Entropy sums and token counts on online and offline tokens of the given rows."""
    on = mask * rows[:, None] * 1.0
    return jnp.sum(ent * on), jnp.sum(on)


def rl_mask(rows: Rows, mask_truncated: bool) -> jax.Array:
    """float32 [N, C]: the tokens the Recall term trains on, the rollouts' response tokens,
    without the rows the budget cut (`rows.truncated`) when `mask_truncated`."""
    on = rows.resp_mask.astype(jnp.float32) * rows.online[:, None]
    if not mask_truncated:
        return on
    if rows.truncated is None:
        raise ValueError("rl.mask_truncated needs the rows' truncated flags (Rows.truncated)")
    return on * (~jnp.asarray(rows.truncated))[:, None]


def loss_fn(
    params, cfg: ModelConfig, sc: StepConfig, mb: Rows, lam, counts: dict, mesh=None, base=None
):
    """L_rl + lam * L_ext on one micro-batch, normalised by the global counts. `params` are the
    trained ones: the whole model, or with a frozen `base` its LoRA adapters (redjax.lora)."""
    logp, ent = score(lora.join(base, params), cfg, mb, sc.chunk, mesh, sc.temperature)
    resp_mask = mb.resp_mask.astype(jnp.float32)
    online = mb.online
    on_mask = resp_mask * online[:, None]
    off_mask = resp_mask * (~online)[:, None]
    l_rl, m_rl = objective.rl_loss(
        logp,
        mb.old_logp,
        mb.adv,
        rl_mask(mb, sc.mask_truncated),
        eps_low=sc.eps_low,
        eps_high=sc.eps_high,
        agg=sc.agg,
        norm_const=sc.norm_const,
        n_tokens=counts["rl_tokens"],
        n_seqs=counts["rl_seqs"],
        ref_logp=mb.ref_logp if sc.beta_kl else None,
        beta_kl=sc.beta_kl,
        entropy=ent,
        entropy_coef=sc.entropy_coef,
        gate_frac=sc.gate_frac,
        gate=mb.gate,  # chosen once a step by the trainer (else per call, from gate_frac)
        ratio=sc.ratio,
        dual_clip=sc.dual_clip,
    )
    l_ext, m_ext = objective.ext_loss(
        logp,
        mb.adv,
        mb.shift,
        off_mask,
        gamma=sc.shaping_gamma,
        agg=sc.ext_agg,
        n_tokens=counts["off_tokens"],
        n_seqs=counts["off_seqs"],
    )
    ent = jax.lax.stop_gradient(ent)
    probe = mb.in_probe
    aux = {
        "loss_rl": l_rl,
        "loss_ext": l_ext,
        "clip_sum": m_rl["clip_sum"],
        "kl_old_sum": m_rl["kl_old_sum"],
        **({"dual_clip_sum": m_rl["dual_clip_sum"]} if sc.dual_clip is not None else {}),
        "ent_on_sum": jnp.sum(ent * on_mask),
        "ent_off_sum": jnp.sum(ent * off_mask),
        "off_logp_sum": m_ext["logp_sum"],
        "probe_on": _sum_stats(ent, on_mask, probe),
        "probe_off": _sum_stats(ent, off_mask, probe),
    }
    return l_rl + lam * l_ext, aux


def _ratio(pair):
    total, count = pair
    return total / jnp.maximum(count, 1.0)


def train_step(
    state: dict,
    batch: Rows,
    lam: jax.Array,
    base: Any = None,
    *,
    cfg: ModelConfig,
    sc: StepConfig,
    tx: optax.GradientTransformation,
    mesh: Mesh | None = None,
) -> tuple[dict, dict]:
    """One optimizer update on a full batch; returns the new state and scalar metrics.

    With a mesh, the batch rows are split over its data axes (see `score`). With LoRA,
    state["params"] are the adapters and `base` the frozen weights: only the adapters are
    differentiated, so the gradients and the optimizer state are adapter-sized."""
    params = state["params"]
    resp_mask = batch.resp_mask.astype(jnp.float32)
    online = batch.online
    rl = rl_mask(batch, sc.mask_truncated)
    counts = {
        "on_tokens": jnp.sum(resp_mask * online[:, None]),
        "off_tokens": jnp.sum(resp_mask * (~online)[:, None]),
        "off_seqs": jnp.sum(~online & (resp_mask.sum(-1) > 0)).astype(jnp.float32),
        "rl_tokens": jnp.sum(rl),  # the Recall term's normalisers
        "rl_seqs": jnp.sum(rl.sum(-1) > 0).astype(jnp.float32),
    }
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    one = lambda mb: grad_fn(params, cfg, sc, mb, lam, counts, mesh, base)  # ((loss, aux), grads)
    (loss, aux), grads = _accumulate(one, batch.without_probe(), sc.micro_batches)

    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = apply_updates(params, updates, state["step"], sc.seed)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # [faults] non-finite guard
    new_params, opt_state = keep_if_finite(
        ok, (new_params, opt_state), (params, state["opt_state"])
    )

    # Entropy probe: the same response tokens, re-scored with the updated parameters.
    before_on, before_off = _ratio(aux["probe_on"]), _ratio(aux["probe_off"])
    after_on = after_off = jnp.float32(jnp.nan)
    if sc.probe:  # in micro-batches, as the update
        probe = batch.probe
        _, ent_after = score_micro(
            lora.join(base, new_params), cfg, probe, sc.chunk, sc.micro_batches, mesh,
            sc.temperature,
        )  # fmt: skip
        p_mask = probe.resp_mask.astype(jnp.float32)
        after_on = _ratio(_sum_stats(ent_after, p_mask, probe.online))
        after_off = _ratio(_sum_stats(ent_after, p_mask, ~probe.online))

    n_on, n_off, n_rl = counts["on_tokens"], counts["off_tokens"], counts["rl_tokens"]
    metrics = {
        "loss": loss,
        "loss_rl": aux["loss_rl"],
        "loss_ext": aux["loss_ext"],
        "lambda": lam,
        "clip_frac": aux["clip_sum"] / jnp.maximum(n_rl, 1.0),
        "kl_old": aux["kl_old_sum"] / jnp.maximum(n_rl, 1.0),
        "entropy_on": aux["ent_on_sum"] / jnp.maximum(n_on, 1.0),
        "entropy_off": aux["ent_off_sum"] / jnp.maximum(n_off, 1.0),
        "offline_nll": -aux["off_logp_sum"] / jnp.maximum(n_off, 1.0),
        "H_on_before": before_on,
        "H_off_before": before_off,
        "H_on_after": after_on,
        "H_off_after": after_off,
        "dH_on": after_on - before_on,
        "dH_off": after_off - before_off,
        "grad_norm": grad_norm,
        "skipped": 1.0 - ok.astype(jnp.float32),
        "tokens_on": n_on,
        "tokens_off": n_off,
    }
    if sc.dual_clip is not None:
        metrics["dual_clip_frac"] = aux["dual_clip_sum"] / jnp.maximum(n_rl, 1.0)
    if sc.mask_truncated:
        metrics["tokens_rl"] = n_rl  # rollout tokens left in the Recall term
    new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, metrics


def stochastic_round(x: jax.Array, key: jax.Array) -> jax.Array:
    """float32 -> bfloat16 rounding up or down with probability by distance, so that the
    expected value is x: an update far below bfloat16's resolution still moves the weight on
    average, where round-to-nearest would drop it (lr 1e-6 on weights of size 0.02)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
    up = (bits + noise) & jnp.uint32(0xFFFF0000)  # add then truncate the 16 low bits
    rounded = jax.lax.bitcast_convert_type(up, jnp.float32).astype(jnp.bfloat16)
    return jnp.where(jnp.isfinite(x), rounded, x.astype(jnp.bfloat16))


def apply_updates(params: Any, updates: Any, step: jax.Array, seed: int = 0) -> Any:
    """params + updates; bfloat16 parameters are rounded stochastically (keys from the run's
    seed and the step, so a resumed run draws the same bits), float32 ones as usual."""
    leaves, tree = jax.tree.flatten(params)
    key = jax.random.fold_in(jax.random.key(seed), step)
    keys = jax.random.split(key, len(leaves))

    def add(p, u, key):
        total = p.astype(jnp.float32) + u.astype(jnp.float32)
        return stochastic_round(total, key) if p.dtype == jnp.bfloat16 else total.astype(p.dtype)

    new = [add(p, u, k) for p, u, k in zip(leaves, tree.flatten_up_to(updates), keys, strict=True)]
    return jax.tree.unflatten(tree, new)


def keep_if_finite(ok: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `ok`, else `old`, bit for bit: the update of a step whose loss or gradient is
    not finite is skipped inside the jitted step. (optax.apply_if_finite does not fit: it adds
    zero updates, which turns -0.0 into 0.0, changes the optimizer state's structure, and
    applies the update anyway after max_consecutive_errors.)"""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


@dataclasses.dataclass
class SkipGuard:
    """Host-side count of skipped updates: `total` (logged as skipped_steps, kept in
    checkpoints) and `run` (consecutive); stops the run after `limit` in a row."""

    limit: int
    total: int = 0
    run: int = 0
    last: tuple[int, dict] | None = None  # (step, metrics) of the last finite update
    clean: bool = True  # no update of the latest iteration was skipped

    def count(self, ms: list[dict]) -> int:
        """Count the skipped updates among `ms` (the metrics of each update of one iteration);
        returns how many were skipped."""
        flags = [bool(jax.device_get(m["skipped"])) for m in ms]
        for skipped in flags:
            self.run = self.run + 1 if skipped else 0
        self.total += sum(flags)
        self.clean = not any(flags)
        return sum(flags)

    def check(self, step: int, metrics: dict) -> None:
        """After logging iteration `step`: remember its metrics if no update was skipped, and
        raise NonFiniteError once `limit` updates in a row were skipped."""
        if self.clean:
            self.last = (step, metrics)
        if self.run >= self.limit:
            raise NonFiniteError(self._message(step))

    def _message(self, step: int) -> str:
        if self.last is None:
            last = "no finite update since the run (re)started"
        else:
            at, m = self.last
            keys = ("loss", "grad_norm", "reward", "lambda", "entropy_on", "entropy_off")
            shown = ", ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)
            last = f"last finite update at step {at}: {shown}"
        return (
            f"step {step}: {self.run} updates in a row skipped because the loss or gradient was "
            f"not finite (train.max_skipped_steps={self.limit}); {last}. Lower optim.lr, check "
            "the data or the reward, or resume from an earlier checkpoint."
        )

    def state_dict(self) -> dict:
        return {"total": self.total, "run": self.run}

    def load_state_dict(self, d: dict) -> None:
        self.total, self.run = int(d["total"]), int(d["run"])


class NonFiniteError(ValueError):
    """Too many consecutive non-finite updates (a ValueError: the CLI prints it in one line)."""


def _accumulate(fn, batch: Rows, m: int):
    """Sum fn(micro_batch) over m micro-batches with a scan (fn itself when m == 1)."""
    if m == 1:
        return fn(batch)
    micro = jax.tree.map(lambda x: _micro(x, m), batch)
    shapes = jax.eval_shape(fn, jax.tree.map(lambda x: x[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    body = lambda acc, mb: (jax.tree.map(jnp.add, acc, fn(mb)), None)
    return jax.lax.scan(body, zeros, micro)[0]


def state_shardings(
    param_shapes: Any, param_sh: Any, tx: optax.GradientTransformation, mesh: Mesh
) -> dict:
    """Shardings of the train state: optimizer moments follow their parameters."""
    rep = sharding.replicated(mesh)
    opt_shapes = jax.eval_shape(tx.init, param_shapes)
    opt = optax.tree_map_params(
        tx, lambda _, s: s, opt_shapes, param_sh, transform_non_params=lambda _: rep
    )
    return {"params": param_sh, "opt_state": opt, "step": rep}


def init_state(params: Any, tx: optax.GradientTransformation, mesh: Mesh) -> tuple[dict, dict]:
    """The train state (params, optimizer state, step) on the mesh, and its shardings."""
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    sh = state_shardings(params, param_sh, tx, mesh)
    opt_state = jax.jit(tx.init, out_shardings=sh["opt_state"])(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), sh["step"])
    return {"params": params, "opt_state": opt_state, "step": step}, sh


def jit_train_step(
    cfg: ModelConfig, sc: StepConfig, tx: optax.GradientTransformation, state_sh: dict, mesh: Mesh
):
    """train_step jitted for the mesh: (state, rows, lam, base=None); the state is donated and
    keeps its shardings, the frozen LoRA base (if any) is read only."""
    fn = functools.partial(train_step, cfg=cfg, sc=sc, tx=tx, mesh=mesh)
    return jax.jit(fn, out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)


def score_micro(
    params: Any,
    cfg: ModelConfig,
    rows: Rows,
    chunk: int,
    micro_batches: int,
    mesh: Mesh | None = None,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """score() over rows in `micro_batches` sequential parts (each as large as the update's),
    the results in row order."""
    if micro_batches == 1:
        return score(params, cfg, rows, chunk, mesh, temperature)
    micro = jax.tree.map(lambda x: _micro(x, micro_batches), rows)
    logp, ent = jax.lax.map(lambda mb: score(params, cfg, mb, chunk, mesh, temperature), micro)
    unmicro = lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, x.shape[-1])
    return unmicro(logp), unmicro(ent)


def jit_score(
    cfg: ModelConfig, chunk: int, micro_batches: int, mesh: Mesh, temperature: float = 1.0
):
    """score_micro jitted: (params, rows) -> (logp, entropy) [N, C] at `temperature`."""
    fn = lambda params, rows: score_micro(
        params, cfg, rows, chunk, micro_batches, mesh, temperature
    )
    return jax.jit(fn, out_shardings=sharding.batch_sharding(mesh))


def probe_rows(
    online: np.ndarray, fraction: float, multiple: int = 1, seed: int = 0, size: int = 0
) -> np.ndarray:
    """Indices of the probe subset: `fraction` of the online and of the offline rows (at least
    one of each kind present), drawn at random, padded with other rows to at least `size` and
    to a multiple of the data shards."""
    rng = np.random.default_rng(seed)
    picks = []
    for kind in (True, False):
        idx = np.flatnonzero(online == kind)
        if len(idx):
            k = max(1, int(np.ceil(fraction * len(idx))))
            picks.append(np.sort(rng.choice(idx, k, replace=False)))
    out = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    want = max(size, len(out))
    pad = want - len(out) + (-want % multiple)
    rest = np.setdiff1d(np.arange(len(online)), out)
    return np.concatenate([out, rest[:pad]]).astype(np.int32)
