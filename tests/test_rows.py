"""The train step's rows: the one constructor's dtypes, the probe subset, and the trainer's
host rows (layout, bucketed widths, empty padding rows) against a hand-built expectation."""

import numpy as np
import pytest

from redjax import train
from redjax.rows import concat, make_rows
from redjax.sampler import Rollouts


def test_make_rows_fixes_dtypes_and_with_probe_takes_the_subset():
    rows = make_rows(
        [[0, 5], [6, 7], [0, 0]], [[0, 1], [1, 1], [0, 1]], [[1, 2], [3, 0], [4, 4]],
        [[1, 1], [1, 0], [1, 1]], [1, 1, 0], [0.5, -0.5, 1], [0, 0, 0.25],
    )  # fmt: skip
    assert rows.prompt_ids.dtype == np.int32 and rows.resp_mask.dtype == bool
    assert rows.online.dtype == bool and rows.adv.dtype == np.float32 and rows.old_logp is None
    probed = rows.with_probe(np.array([0, 2]))
    assert probed.in_probe.tolist() == [True, False, True]
    np.testing.assert_array_equal(probed.probe.resp_ids, [[1, 2], [4, 4]])
    assert probed.probe.online.tolist() == [True, False] and probed.probe.adv is None
    both = concat([rows, rows])
    assert both.size == 6 and both.shift.tolist() == [0, 0, 0.25] * 2


def test_host_rows_layout():
    """2 prompts x G=2 rollouts, then the one prompt with a trace, padded to a multiple of 4
    rows with empty rows; responses right-padded to the 16-token bucket."""
    pad = 9
    batch = {
        "prompt_ids": np.array([[pad, 1, 2], [3, 4, 5]], np.int32),
        "prompt_mask": np.array([[0, 1, 1], [1, 1, 1]], bool),
        "offline_ids": np.array([[7, 8, pad], [pad, pad, pad]], np.int32),
        "offline_mask": np.array([[1, 1, 0], [0, 0, 0]], bool),
        "has_offline": np.array([True, False]),
    }
    tokens = np.array([[1, 1], [2, 0], [3, 3], [4, 4]], np.int32)
    mask = np.array([[1, 1], [1, 0], [1, 1], [1, 1]], bool)
    ro = Rollouts(tokens, mask, None, None, mask.sum(1), np.array(["stop"] * 4))
    got = train.Collected(batch, ro, group=2)
    adv = np.array([[0.5, -0.5], [1.0, -1.0]], np.float32)
    t = train.Targets(adv, np.array([2.0, 0.0], np.float32), np.array([0.75, 0.0]), 1.0, True)
    rows = train.host_rows(got, t, online=True, multiple=4, pad=pad, max_width=512)
    assert rows.size == 8 and rows.resp_ids.shape == (8, 16)
    np.testing.assert_array_equal(rows.prompt_ids[:5], batch["prompt_ids"][[0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(rows.resp_ids[:4, :2], tokens)
    np.testing.assert_array_equal(rows.resp_ids[4, :3], [7, 8, pad])
    assert (rows.resp_ids[:5, 3:] == pad).all()
    assert rows.resp_mask.sum(1).tolist() == [2, 1, 2, 2, 2, 0, 0, 0]
    assert rows.online.tolist() == [True] * 4 + [False] + [True] * 3  # copies of row 0
    np.testing.assert_allclose(rows.adv[:5], [0.5, -0.5, 1.0, -1.0, 2.0])
    np.testing.assert_allclose(rows.shift[:5], [0, 0, 0, 0, 0.75])
    # An SFT phase without traces on this host: one empty row keeps the shapes in step.
    t_sft = train.Targets(np.zeros((2, 0)), np.zeros(2), np.zeros(2), 0.0, False)
    empty = train.host_rows(
        train.Collected(batch, None, 2), t_sft, online=False, multiple=2, pad=pad, max_width=512
    )
    assert empty.size == 2 and empty.resp_mask.sum() == 0


@pytest.mark.parametrize(
    ("longest", "budget", "width"), [(20, 512, 32), (3, 512, 16), (4500, 5000, 5000), (70, 96, 96)]
)
def test_host_rows_are_as_wide_as_the_longest_response(longest, budget, width):
    """Rollouts handed over at the budget's width are cut to the longest response (rollout or
    trace), bucketed in default_buckets(budget): 16, 32, ..., then the budget itself."""
    pad, wide = 0, budget + 7
    batch = {
        "prompt_ids": np.ones((1, 2), np.int32),
        "prompt_mask": np.ones((1, 2), bool),
        "offline_ids": np.full((1, wide), 5, np.int32),
        "offline_mask": np.arange(wide)[None] < min(longest, 3),
        "has_offline": np.array([True]),
    }
    lengths = np.array([longest, 1])
    mask = np.arange(wide)[None] < lengths[:, None]
    ro = Rollouts(np.where(mask, 3, 0), mask, None, None, lengths, np.array(["stop"] * 2))
    t = train.Targets(np.zeros((1, 2)), np.ones(1), np.zeros(1), 1.0, True)
    rows = train.host_rows(
        train.Collected(batch, ro, 2), t, online=True, multiple=1, pad=pad, max_width=budget
    )
    assert rows.resp_ids.shape[1] == width
    assert rows.resp_mask.sum(1).tolist() == [longest, 1, min(longest, 3)]
