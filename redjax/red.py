"""RED controller (numpy, host side): group advantages, the policy shift and the lambda update.

No JAX here: this runs between jitted steps. Arrays returned to the trainer are float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from redjax.config import RedCfg, RlCfg

SHIFT_MODES = ("linear", "step", "zero", "one")
LAMBDA_MODES = ("red", "fixed", "schedule")
RULES = ("sign", "ratio")  # lambda's target in "red" mode (docs/design.md section 1)
ENTROPY_CHANGES = ("probe", "drift")  # where dH comes from
RATIO_CAP = 2.0  # rule "ratio": target <= 2 lambda, so lambda moves by <= alpha * lambda a step


def group_advantages(
    rewards: np.ndarray,
    off_rewards: np.ndarray | None = None,
    has_off: np.ndarray | None = None,
    *,
    offline_in_group: bool = True,
    std_norm: bool = True,
    eps: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group GRPO advantages of online rollouts and of the offline trace, and group accuracy.

    rewards [B, G]; off_rewards [B] (None: no offline traces); has_off [B] bool (None: all True
    when off_rewards is given). acc = mean online reward. mu, sigma (population std, ddof=0) are
    over the G online rewards plus, with `offline_in_group` and has_off, the offline reward.
    A = (r - mu) / (sigma + eps) (r - mu without std_norm). A_off uses the same formula when the
    offline trace is in the group, else 1.0; A_off = 0 where has_off is False.
    Returns float32 (adv [B, G], adv_off [B], acc [B]).
    """
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"group_advantages: rewards must be [B, G] with G >= 1, got {r.shape}")
    b = r.shape[0]
    if off_rewards is None:
        r_off = np.zeros(b)
        has = np.zeros(b, bool)
    else:
        r_off = np.asarray(off_rewards, np.float64)
        has = np.ones(b, bool) if has_off is None else np.asarray(has_off, bool)
    if r_off.shape != (b,) or has.shape != (b,):
        raise ValueError(
            f"group_advantages: off_rewards and has_off must be [B]={b}, "
            f"got {r_off.shape} and {has.shape}"
        )
    if not np.all(np.isfinite(r)) or not np.all(np.isfinite(r_off[has])):
        raise ValueError("group_advantages: rewards must be finite")

    acc = r.mean(axis=1)
    with_off = has & offline_in_group
    # Group sum / sum of squares with the offline reward counted only where with_off.
    n = r.shape[1] + with_off
    mu = (r.sum(axis=1) + np.where(with_off, r_off, 0.0)) / n
    dev2 = ((r - mu[:, None]) ** 2).sum(axis=1) + np.where(with_off, (r_off - mu) ** 2, 0.0)
    sigma = np.sqrt(dev2 / n)
    scale = sigma + eps if std_norm else np.ones(b)
    adv = (r - mu[:, None]) / scale[:, None]
    adv_off = np.where(offline_in_group, (r_off - mu) / scale, 1.0)
    adv_off = np.where(has, adv_off, 0.0)
    return adv.astype(np.float32), adv_off.astype(np.float32), acc.astype(np.float32)


def policy_shift(acc: np.ndarray, mode: str = "linear", tau: float = 0.5) -> np.ndarray:
    """Shift s in [0, 1] per group: linear s = clip(acc, 0, 1); step s = 1[acc >= tau]; zero; one."""
    acc = np.asarray(acc, np.float64)
    if mode == "linear":
        s = np.clip(acc, 0.0, 1.0)
    elif mode == "step":
        s = (acc >= tau).astype(np.float64)
    elif mode == "zero":
        s = np.zeros_like(acc)
    elif mode == "one":
        s = np.ones_like(acc)
    else:
        raise ValueError(f"policy_shift: mode must be one of {SHIFT_MODES}, got {mode!r}")
    return s.astype(np.float32)


class RedController:
    """Holds lambda (weight of the Extend term) and the entropy-change EMAs between steps.

    Modes: "red" (entropy-change feedback with the target of `rule`, "sign" or "ratio",
    docs/design.md section 1), "fixed" (lambda0 always), "schedule" (linear warm-up from 0 to
    lambda0 over warmup_steps, then cosine decay to lambda_min at total_steps, constant after;
    not clipped to [lambda_min, lambda_max]).
    The EMAs D_on, D_off are tracked in every mode (for logging); the first finite observation
    initialises them (no zero-bias). A call to `update` with a non-finite dH_on or dH_off leaves
    the EMAs and (in "red" mode) lambda unchanged, counts it in `skipped`, and still advances
    the step (so the schedule follows training steps).

    Per step the trainer calls `entropy_changes(step_metrics)` (probe: the step's dH_on, dH_off;
    drift: `observe` of its entropy_on, entropy_off) and, unless that is None, `update(*dH)`;
    `lam` is the next step's lambda and `at_bound` where the last target sat.
    """

    def __init__(
        self,
        *,
        mode: str,
        lambda0: float,
        lambda_min: float,
        lambda_max: float,
        alpha: float,
        delta: float,
        ema: float,
        warmup_steps: int,
        total_steps: int,
        offline_in_group: bool,
        std_norm: bool,
        eps: float,
        shift: str,
        tau: float,
        rule: str = "sign",
        entropy_change: str = "probe",
    ):
        for name, value, allowed in (
            ("mode", mode, LAMBDA_MODES),
            ("shift", shift, SHIFT_MODES),
            ("rule", rule, RULES),
            ("entropy_change", entropy_change, ENTROPY_CHANGES),
        ):
            if value not in allowed:
                raise ValueError(f"RedController: {name} must be one of {allowed}, got {value!r}")
        if not 0 <= lambda_min <= lambda_max:
            raise ValueError(
                f"RedController: need 0 <= lambda_min <= lambda_max, got {lambda_min}, {lambda_max}"
            )
        if mode == "red" and not lambda_min <= lambda0 <= lambda_max:
            raise ValueError(f"RedController: lambda0={lambda0} outside [lambda_min, lambda_max]")
        if not 0 < alpha <= 1:
            raise ValueError(f"RedController: alpha must be in (0, 1], got {alpha}")
        if not 0 <= ema < 1:
            raise ValueError(f"RedController: ema must be in [0, 1), got {ema}")
        if not delta > 0:
            raise ValueError(f"RedController: delta must be > 0, got {delta}")
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError("RedController: need warmup_steps >= 0 and total_steps >= 1")
        self.mode, self.lambda0, self.lambda_min, self.lambda_max = (
            mode,
            lambda0,
            lambda_min,
            lambda_max,
        )
        self.alpha, self.delta, self.ema = alpha, delta, ema
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.offline_in_group, self.std_norm, self.eps = offline_in_group, std_norm, eps
        self.shift, self.tau = shift, tau
        self.rule, self.entropy_change = rule, entropy_change
        self.h_prev: tuple[float, float] | None = None  # drift: the last finite (H_on, H_off)
        self.step = 0
        self.skipped = 0
        self.d_on = 0.0
        self.d_off = 0.0
        self.target = float(lambda0)  # the last target lambda moved towards (red mode)
        self.initialised = False
        self._lam = float(lambda0)

    @classmethod
    def from_config(cls, red: RedCfg, rl: RlCfg, total_steps: int) -> RedController:
        """The controller of a run: the red section, the advantage options of the rl section,
        and the run's length (for the schedule mode)."""
        return cls(
            mode=red.lam,
            lambda0=red.lambda0,
            lambda_min=red.lambda_min,
            lambda_max=red.lambda_max,
            alpha=red.alpha,
            delta=red.delta,
            ema=red.ema,
            warmup_steps=red.lambda_warmup,
            total_steps=total_steps,
            offline_in_group=red.offline_in_group,
            std_norm=rl.std_norm,
            eps=rl.adv_eps,
            shift=red.shift,
            tau=red.tau,
            rule=red.rule,
            entropy_change=red.entropy_change,
        )

    @property
    def lam(self) -> float:
        """Lambda to use for the current step."""
        if self.mode == "schedule":
            return self._schedule(self.step)
        return self._lam if self.mode == "red" else float(self.lambda0)

    def _schedule(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lambda0 * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        cos = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lambda_min + (self.lambda0 - self.lambda_min) * cos

    def advantages(
        self,
        rewards: np.ndarray,
        off_rewards: np.ndarray | None = None,
        has_off: np.ndarray | None = None,
        correct: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(adv [B, G], adv_off [B], acc [B], shift [B]) with this controller's options; the
        shift follows the group accuracy acc, the share of `correct` rollouts (bool [B, G];
        None: rewards >= 0.5)."""
        adv, adv_off, _ = group_advantages(
            rewards,
            off_rewards,
            has_off,
            offline_in_group=self.offline_in_group,
            std_norm=self.std_norm,
            eps=self.eps,
        )
        correct = np.asarray(rewards) >= 0.5 if correct is None else np.asarray(correct, bool)
        acc = correct.mean(axis=1).astype(np.float32)
        return adv, adv_off, acc, policy_shift(acc, self.shift, self.tau)

    def observe(self, entropy_on: float, entropy_off: float) -> tuple[float, float] | None:
        """Drift: (dH_on, dH_off) = these pre-update batch mean entropies minus the previous
        call's, or None on the first call and the call after a non-finite entropy."""
        h_on, h_off = float(entropy_on), float(entropy_off)
        prev = self.h_prev
        self.h_prev = (h_on, h_off) if math.isfinite(h_on) and math.isfinite(h_off) else None
        if prev is None:
            return None
        return h_on - prev[0], h_off - prev[1]

    def entropy_changes(self, m: Mapping[str, float]) -> tuple[float, float] | None:
        """This step's (dH_on, dH_off) from its metrics as `entropy_change` says: probe,
        (m["dH_on"], m["dH_off"]); drift, observe(m["entropy_on"], m["entropy_off"])."""
        if self.entropy_change == "probe":
            return float(m["dH_on"]), float(m["dH_off"])
        return self.observe(m["entropy_on"], m["entropy_off"])

    def _target(self) -> float:
        """The value lambda moves towards, from the EMAs by `rule` (docs/design.md section 1)."""
        d_on, d_off = self.d_on, self.d_off
        if self.rule == "sign":
            if d_on < 0 and d_off > 0:
                return self._lam * (-d_on) / max(d_off, self.delta)
            return self.lambda_min
        if d_on >= 0:
            return self.lambda_min
        r = min(-d_on / max(abs(d_off), self.delta), RATIO_CAP)
        return min(max(self._lam * r, self.lambda_min), self.lambda_max)

    @property
    def at_bound(self) -> int:
        """-1 if the last target <= 1.01 lambda_min, +1 if >= 0.99 lambda_max, else 0 (always 0
        outside "red" mode)."""
        if self.mode != "red":
            return 0
        if self.target <= self.lambda_min * 1.01:
            return -1
        return 1 if self.target >= self.lambda_max * 0.99 else 0

    def advance(self) -> float:
        """A step without entropy changes to read: only the step count moves (the schedule);
        returns the next lambda."""
        self.step += 1
        return self.lam

    def update(self, dH_on: float, dH_off: float) -> float:
        """Fold this step's entropy changes into the EMAs and return the next lambda."""
        self.step += 1
        dh_on, dh_off = float(dH_on), float(dH_off)
        if not (math.isfinite(dh_on) and math.isfinite(dh_off)):
            self.skipped += 1
            return self.lam
        if self.initialised:
            self.d_on = self.ema * self.d_on + (1.0 - self.ema) * dh_on
            self.d_off = self.ema * self.d_off + (1.0 - self.ema) * dh_off
        else:
            self.d_on, self.d_off, self.initialised = dh_on, dh_off, True
        if self.mode == "red":
            self.target = self._target()
            lam = (1.0 - self.alpha) * self._lam + self.alpha * self.target
            self._lam = float(min(max(lam, self.lambda_min), self.lambda_max))
        return self.lam

    def state_dict(self) -> dict:
        """JSON-serialisable state (config is not included: it comes from the run config)."""
        prev = self.h_prev or (None, None)
        return {
            "lam": float(self._lam),
            "D_on": float(self.d_on),
            "D_off": float(self.d_off),
            "target": float(self.target),
            "step": int(self.step),
            "skipped": int(self.skipped),
            "initialised": bool(self.initialised),
            "H_on_prev": prev[0],
            "H_off_prev": prev[1],
        }

    def load_state_dict(self, d: dict) -> None:
        """Restore the state written by `state_dict` (keys added later take their defaults)."""
        missing = {"lam", "D_on", "D_off", "step", "initialised"} - set(d)
        if missing:
            raise ValueError(f"RedController.load_state_dict: missing keys {sorted(missing)}")
        self._lam = float(d["lam"])
        self.d_on, self.d_off = float(d["D_on"]), float(d["D_off"])
        self.target = float(d.get("target", self.lambda0))
        self.step = int(d["step"])
        self.skipped = int(d.get("skipped", 0))
        self.initialised = bool(d["initialised"])
        h_on, h_off = d.get("H_on_prev"), d.get("H_off_prev")
        self.h_prev = None if h_on is None or h_off is None else (float(h_on), float(h_off))
