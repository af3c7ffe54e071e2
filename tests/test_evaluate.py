"""pass@k against brute-force enumeration of k-subsets, and the results table."""

import itertools

import numpy as np
import pytest

from redjax.evaluate import pass_at_k, table


@pytest.mark.parametrize(
    "n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 5, 2), (4, 4, 4), (7, 1, 7)]
)
def test_pass_at_k_matches_enumeration(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    ref = np.mean([any(samples[i] for i in s) for s in subsets])
    assert pass_at_k(n, c, k) == pytest.approx(ref)


def test_table_rows():
    res = {
        "k": 4,
        "problems": 3,
        "pass@1": 0.5,
        "pass@4": 0.75,
        "mean_length": 10.0,
        "by_source": {
            "a": {"problems": 1, "pass@1": 1.0, "pass@4": 1.0, "mean_length": 5.0},
            "b": {"problems": 2, "pass@1": 0.25, "pass@4": 0.5, "mean_length": 12.5},
        },
    }
    text = table(res)
    assert "| a | 1 | 1.000 | 1.000 | 5.0 |" in text
    assert "| all | 3 | 0.500 | 0.750 | 10.0 |" in text
