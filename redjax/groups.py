"""Dynamic sampling (DAPO's filter_groups): which rollout groups carry a learning signal.

A group whose rewards are all equal gives every rollout a zero advantage (r - mu = 0), so its
rollouts add no Recall gradient. With `rollout.filter_groups` the trainer drops such groups and
draws further prompts until a step has its `rollout.prompts` groups with a signal
(docs/design.md, "Dynamic sampling"). Pure numpy: rewards in, kept indices out.
"""

from __future__ import annotations

import numpy as np


def group_rewards(rewards: np.ndarray, trace: np.ndarray, in_group: np.ndarray) -> np.ndarray:
    """The rewards each group's advantages are made of, [P, G + 1]: the G online rewards and the
    trace's where it is in the group (`in_group`), NaN where it is not."""
    rewards = np.asarray(rewards, np.float64)
    trace = np.where(np.asarray(in_group, bool), np.asarray(trace, np.float64), np.nan)
    return np.concatenate([rewards, trace[:, None]], axis=1)


def has_signal(rewards: np.ndarray) -> np.ndarray:
    """bool [P]: the groups whose rewards (NaN: no such member) are not all equal."""
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2 or r.shape[1] < 1:
        raise ValueError(f"has_signal: rewards must be [P, K] with K >= 1, got {r.shape}")
    return np.nanmax(r, axis=1) > np.nanmin(r, axis=1)


def keep(rewards: np.ndarray, want: int) -> np.ndarray:
    """int [want]: the indices of the first `want` groups with a signal, in order, then -1 for
    each slot no group fills."""
    idx = np.flatnonzero(has_signal(rewards))[:want]
    return np.concatenate([idx, np.full(want - len(idx), -1)]).astype(np.int64)
