"""The methods redjax trains, each defined here once; `algo` in the config names one.

    red            rollouts + teacher traces every step; shift from the group accuracy, lambda
                   from the entropy changes (red.lam, red.rule)
    grpo           rollouts only (the Recall term)
    sft            teacher traces only, unit advantages, no shift (the Extend term as SFT)
    sft_then_grpo  sft for the first red.sft_steps steps, then grpo
    luffy          rollouts + traces, the trace in the group, s = 1, shaping pi/(pi+gamma),
                   fixed lambda
    fixed_mix      rollouts + traces, no shift, a fixed lambda

A Method says which terms its steps train and the red-section settings that make it what it
is; config.load applies those before the YAML file. A Plan is a run's method with its
settings: which phase each step is, and whether steps probe the entropy changes (only where
lambda adapts to them, so grpo, sft, fixed_mix and luffy do not pay for the probe forward).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redjax.config import Config


@dataclasses.dataclass(frozen=True)
class Phase:
    """What one iteration trains on."""

    online: bool  # sample rollouts and train the Recall term on them
    offline: bool  # train the Extend term on the teacher traces (SFT-style without rollouts)


RL = Phase(online=True, offline=False)
SFT = Phase(online=False, offline=True)
MIX = Phase(online=True, offline=True)


@dataclasses.dataclass(frozen=True)
class Method:
    """One algo: its phase (the second after red.sft_steps steps, if any) and its settings."""

    phase: Phase
    red: dict  # the red-section settings that define it (applied before the YAML file)
    then: Phase | None = None  # the phase after red.sft_steps steps


_AS_SFT = {"offline_in_group": False, "shift": "zero", "lam": "fixed", "lambda0": 1.0}
METHODS: dict[str, Method] = {
    "red": Method(MIX, {}),
    "grpo": Method(RL, {}),
    "sft": Method(SFT, _AS_SFT),
    "sft_then_grpo": Method(SFT, _AS_SFT, then=RL),
    "luffy": Method(
        MIX,
        {
            "offline_in_group": True,
            "shift": "one",
            "shaping_gamma": 0.1,
            "lam": "fixed",
            "lambda0": 1.0,
        },
    ),
    "fixed_mix": Method(MIX, {"offline_in_group": True, "shift": "zero", "lam": "fixed"}),
}
ALGOS = tuple(METHODS)
PRESETS = {name: {"red": dict(m.red)} for name, m in METHODS.items()}  # for config.load


@dataclasses.dataclass(frozen=True)
class Plan:
    """The phases of a run, step by step, and how its lambda moves."""

    algo: str
    sft_steps: int  # sft_then_grpo: steps of the SFT phase
    adapts: bool  # lambda follows the entropy changes (red.lam = red, traces and rollouts mixed)
    probe: bool  # steps re-score a probe subset after the update for those changes

    @classmethod
    def from_config(cls, cfg: Config) -> Plan:
        mixed = METHODS[cfg.algo].phase == MIX
        adapts = mixed and cfg.red.lam == "red"
        return cls(
            cfg.algo, cfg.red.sft_steps, adapts, adapts and cfg.red.entropy_change == "probe"
        )

    def phase(self, step: int) -> Phase:
        """The phase of step `step` (0-based)."""
        m = METHODS[self.algo]
        return m.then if m.then is not None and step >= self.sft_steps else m.phase

    @property
    def online(self) -> bool:
        """Whether any step samples rollouts."""
        m = METHODS[self.algo]
        return m.phase.online or (m.then is not None and m.then.online)

    @property
    def offline(self) -> bool:
        """Whether any step trains on teacher traces."""
        m = METHODS[self.algo]
        return m.phase.offline or (m.then is not None and m.then.offline)
