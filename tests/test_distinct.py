"""Repeated samples (``onnxinv.distinct``): found within the tolerance, in about linear time."""

from __future__ import annotations

import numpy as np


def test_duplicate_rows_on_samples_that_sit_on_the_bounds():
    """Most coordinates on a bound (a real digit's zeros): repeats still found, no others."""
    from onnxinv.distinct import duplicate_rows, finite_stats, grid_axes

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3000, 64))
    x[rng.random(x.shape) < 0.7] = 0.0  # 70% of each column on the lower bound
    x[:, :8] = np.where(rng.random((3000, 8)) < 0.95, 1.0, x[:, :8])  # and some nearly all on 1
    x[2999] = x[10] + 2e-4
    x[1500] = x[7]
    assert np.flatnonzero(duplicate_rows(x)).tolist() == [1500, 2999]
    axes = grid_axes(x, finite_stats(x)[1], 1e-3)
    assert (axes >= 8).all()  # the columns almost all on a bound separate nothing: not chosen


def test_duplicate_rows_finds_repeats_within_the_tolerance_only():
    from onnxinv.distinct import duplicate_rows

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5000, 16))
    x[5] = x[3] + 1e-5  # a repeat (within 1e-3)
    x[4000] = x[17]  # an exact one
    x[100] = x[50]
    x[100, 0] += 2e-3  # close, but not a repeat
    assert np.flatnonzero(duplicate_rows(x)).tolist() == [5, 4000]
    blocks = np.repeat(rng.normal(size=(3, 4)), 4, axis=0)
    assert duplicate_rows(blocks).tolist() == [False, True, True, True] * 3
    assert duplicate_rows(np.array([[1.0], [1.0005], [2.0]])).tolist() == [False, True, False]
