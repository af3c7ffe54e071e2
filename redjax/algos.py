"""The methods redjax trains, named once: `algo` in the config resolves into a phase plan.

    red            rollouts + teacher traces every step; shift and lambda from the controller
    grpo           rollouts only (the Recall term)
    sft            teacher traces only, unit advantages, no shift (the Extend term as SFT)
    sft_then_grpo  sft for the first red.sft_steps steps, then grpo
    luffy          red with the trace in the group, s = 1, shaping pi/(pi+gamma), fixed lambda
    fixed_mix      red with no shift and a fixed lambda

The settings that make luffy, fixed_mix and the SFT phases what they are (red.shift, red.lam,
...) are presets of redjax.config (PRESETS), applied before the YAML file; a plan only says
which rows each step trains on and whether the entropy probe drives lambda.
"""

from __future__ import annotations

import dataclasses

from redjax.config import Config

MIXED = ("red", "luffy", "fixed_mix")  # rollouts and traces in every step


@dataclasses.dataclass(frozen=True)
class Phase:
    """What one iteration trains on."""

    online: bool  # sample rollouts and train the Recall term on them
    offline: bool  # train the Extend term on the teacher traces (SFT-style without rollouts)


RL = Phase(online=True, offline=False)
SFT = Phase(online=False, offline=True)
MIX = Phase(online=True, offline=True)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The phases of a run, step by step."""

    algo: str
    sft_steps: int  # sft_then_grpo: steps of the SFT phase

    @classmethod
    def from_config(cls, cfg: Config) -> Plan:
        return cls(cfg.algo, cfg.red.sft_steps)

    def phase(self, step: int) -> Phase:
        """The phase of step `step` (0-based)."""
        if self.algo in MIXED:
            return MIX
        if self.algo == "grpo" or (self.algo == "sft_then_grpo" and step >= self.sft_steps):
            return RL
        return SFT

    @property
    def probe(self) -> bool:
        """Whether steps re-score a probe subset for the controller's entropy deltas (only
        when rollouts and traces share a step)."""
        return self.algo in MIXED

    @property
    def online(self) -> bool:
        """Whether any step samples rollouts."""
        return self.algo != "sft"

    @property
    def offline(self) -> bool:
        """Whether any step trains on teacher traces."""
        return self.algo != "grpo"
