"""How far apart two arrays are, and how far apart they may be."""

from __future__ import annotations

import math

import numpy as np


def max_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference; ``inf`` for different shapes or NaN in only one of them."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return math.inf
    if actual.size == 0:
        return 0.0
    if actual.dtype == bool or expected.dtype == bool:
        return float(np.any(actual != expected))
    a, b = actual.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    with np.errstate(invalid="ignore"):
        diff = np.where(both_nan | same_inf, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max())


def tolerance(expected: np.ndarray, atol: float) -> float:
    """``atol * max(1, max |expected|)`` over the finite values of ``expected``."""
    values = np.asarray(expected)
    if values.dtype == bool or values.size == 0:
        return atol
    finite = np.abs(values[np.isfinite(values)].astype(np.float64))
    scale = float(finite.max()) if finite.size else 0.0
    return atol * max(1.0, scale)


def agrees(actual: np.ndarray, expected: np.ndarray, atol: float) -> tuple[bool, float]:
    """Whether ``actual`` is within :func:`tolerance` of ``expected``, and the difference."""
    difference = max_difference(actual, expected)
    return difference <= tolerance(expected, atol), difference
