"""The train step's rows: one typed pytree from the trainer (and the bench and the tests) to the
jitted step.

Each row is a left-padded prompt followed by a right-padded response: one of the model's own
rollouts (online) or a teacher trace (offline). `make_rows` is the one constructor: it fixes
the dtypes, so every caller hands the step the same types. `with_probe` adds the probe subset
the step re-scores after its update (the controller's entropy deltas).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import struct


@struct.dataclass
class Rows:
    """N rows of prompt + response tokens and what the objective needs of each."""

    prompt_ids: Any  # int32 [N, P], left-padded prompt
    prompt_mask: Any  # bool [N, P], True on prompt tokens
    resp_ids: Any  # int32 [N, C], right-padded response (rollout or teacher trace)
    resp_mask: Any  # bool [N, C], True on the response tokens trained on
    online: Any = None  # bool [N], True for a rollout, False for a teacher trace
    adv: Any = None  # float32 [N], advantage (online) or A_off (offline)
    shift: Any = None  # float32 [N], policy shift s in [0, 1] (offline rows)
    old_logp: Any = None  # float32 [N, C], log-probs under the sampling policy (ratio)
    ref_logp: Any = None  # float32 [N, C], log-probs under the reference policy (KL)
    gate: Any = None  # bool [N, C], online tokens the entropy gate keeps (rl.gate_frac < 1)
    truncated: Any = None  # bool [N], a rollout cut by the budget, no end token (rl.mask_truncated)
    in_probe: Any = None  # bool [N], row is in the probe subset
    probe: Rows | None = None  # the probe subset's tokens and `online`, re-scored after the update

    @property
    def size(self) -> int:
        """Number of rows."""
        return len(self.prompt_ids)

    def tokens(self) -> Rows:
        """Only the token fields: what scoring needs."""
        return Rows(self.prompt_ids, self.prompt_mask, self.resp_ids, self.resp_mask)

    def with_probe(self, idx: np.ndarray) -> Rows:
        """These host rows with the probe subset `idx` (its tokens and `online`) and the
        per-row `in_probe` flag."""
        flag = np.zeros(self.size, bool)
        flag[idx] = True
        probe = Rows(
            self.prompt_ids[idx],
            self.prompt_mask[idx],
            self.resp_ids[idx],
            self.resp_mask[idx],
            online=self.online[idx],
        )
        return self.replace(in_probe=flag, probe=probe)

    def without_probe(self) -> Rows:
        """These rows without the probe subset (the part that is split into micro-batches)."""
        return self.replace(probe=None)


def make_rows(
    prompt_ids: Any,
    prompt_mask: Any,
    resp_ids: Any,
    resp_mask: Any,
    online: Any,
    adv: Any,
    shift: Any,
    old_logp: Any = None,
    ref_logp: Any = None,
    truncated: Any = None,
) -> Rows:
    """Host rows with the step's dtypes (int32 ids, bool masks and flags, float32 values)."""
    f32 = lambda x: None if x is None else np.asarray(x, np.float32)
    return Rows(
        prompt_ids=np.asarray(prompt_ids, np.int32),
        prompt_mask=np.asarray(prompt_mask, bool),
        resp_ids=np.asarray(resp_ids, np.int32),
        resp_mask=np.asarray(resp_mask, bool),
        online=np.asarray(online, bool),
        adv=f32(adv),
        shift=f32(shift),
        old_logp=f32(old_logp),
        ref_logp=f32(ref_logp),
        truncated=None if truncated is None else np.asarray(truncated, bool),
    )


def concat(parts: list[Rows]) -> Rows:
    """The rows of `parts`, one after the other (fields set in every part)."""
    import jax

    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
