"""Length shaping of rollout rewards: DAPO's soft overlong punishment (docs/design.md, section 1).

A rollout of L tokens, under a budget of max_len tokens with the last `buffer` of them as a
soft zone, loses 0 reward up to max_len - buffer tokens, then linearly more, up to `penalty`
at the budget: what the trainer subtracts from the reward before the advantages.
"""

from __future__ import annotations

import numpy as np


def overlong_penalty(lengths: np.ndarray, max_len: int, buffer: int, penalty: float) -> np.ndarray:
    """float32 penalty >= 0 per rollout of `lengths` tokens: clip((L - (max_len - buffer)) /
    buffer, 0, 1) * penalty; all zeros when buffer is 0 (off)."""
    lengths = np.asarray(lengths, np.float64)
    if buffer <= 0:
        return np.zeros(lengths.shape, np.float32)
    if buffer >= max_len:
        raise ValueError(f"rl.overlong_buffer={buffer} must be < rollout.max_new_tokens={max_len}")
    over = (lengths - (max_len - buffer)) / buffer
    return (np.clip(over, 0.0, 1.0) * penalty).astype(np.float32)
