"""Shape helpers: length buckets and padding, shared by the data pipeline, the sampler and the
trainer, so that every jitted program compiles for a bounded number of shapes.

Two bucket rules, for two purposes:
  data_bucket     the width of a data batch: the smallest of an explicit list of widths
                  (`default_buckets`: powers of two, then the configured maximum);
                  `response_width` is it for the train step's responses
  sampler_bucket  a length the sampler compiles for: 2^k or 3 * 2^(k-1), unbounded
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_BUCKET = 16


def default_buckets(max_len: int, min_len: int = MIN_BUCKET) -> tuple[int, ...]:
    """Powers of two from `min_len` below `max_len`, then `max_len` itself."""
    if max_len < 1:
        raise ValueError(f"max length must be >= 1, got {max_len}")
    sizes, size = [], min_len
    while size < max_len:
        sizes.append(size)
        size *= 2
    return (*sizes, max_len)


def data_bucket(n: int, buckets: Sequence[int]) -> int:
    """The padded width of a data batch: the smallest bucket >= n; ValueError beyond the
    largest."""
    for size in sorted(buckets):
        if size >= n:
            return int(size)
    raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")


def response_width(longest: int, max_len: int) -> int:
    """The width of a train batch's responses (rollouts and traces): the longest one, bucketed
    in default_buckets(max_len), the configured maximum; the trainer and `redjax plan` use it."""
    return data_bucket(max(longest, 1), default_buckets(max(max_len, longest, 1)))


def sampler_bucket(n: int, minimum: int = 16) -> int:
    """Smallest size >= n of the form 2^k or 3 * 2^(k-1): few shapes, at most 50% padding."""
    size = minimum
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def left_pad(seqs: Sequence[Any], width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """[len(seqs), width] int32 ids with each sequence flush right, and its bool mask."""
    ids = np.full([len(seqs), width], pad, np.int32)
    mask = np.zeros([len(seqs), width], bool)
    for i, row in enumerate(seqs):
        if len(row):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = True
    return ids, mask


def right_pad(seqs: Sequence[Any], width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """[len(seqs), width] int32 ids with each sequence flush left, and its bool mask."""
    ids = np.full([len(seqs), width], pad, np.int32)
    mask = np.zeros([len(seqs), width], bool)
    for i, row in enumerate(seqs):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return ids, mask


def pad_cols(x: np.ndarray, width: int, value: Any = 0, *, left: bool = False) -> np.ndarray:
    """A 2-D array widened to `width` columns with `value`, on the right (or the left)."""
    extra = width - x.shape[1]
    return np.pad(x, ((0, 0), (extra, 0) if left else (0, extra)), constant_values=value)
