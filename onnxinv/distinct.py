"""Repeated samples: two solver runs that end at the same preimage count once.

:func:`duplicate_rows` marks every sample that repeats an earlier one within a tolerance
relative to the samples' magnitude; :func:`onnxinv.api.invert` draws those again and drops what
still repeats. The search costs about linear time in N (a grid over a few coordinates).
"""

from __future__ import annotations

import itertools

import numpy as np

GRID_AXES = 4  # coordinates the duplicate check's grid uses (3**4 neighbouring cells)


def duplicate_rows(x: np.ndarray, rel: float = 1e-3) -> np.ndarray:
    """(N,) mask of samples that repeat an earlier one.

    Two samples repeat each other when no value differs by more than ``rel`` times the largest
    magnitude among the samples (at least 1): solvers stop within a tolerance, so two runs to
    the same preimage rarely agree to the last bit. Candidates are found on a grid of that
    cell size over a few coordinates that separate the samples (a repeat lies in the same or a
    neighbouring cell), so the cost stays about linear in N (see :func:`grid_axes`).
    """
    flat = np.asarray(x).reshape(len(x), -1)  # a view: no float64 copy of every sample
    dup = np.zeros(len(flat), dtype=bool)
    if len(flat) < 2:
        return dup
    top, spread = finite_stats(flat)
    tol = rel * max(1.0, top)
    axes = grid_axes(flat, spread, tol)
    scaled = np.nan_to_num(flat[:, axes].astype(np.float64)) / tol
    cells = np.floor(scaled).astype(np.int64)
    # One integer key per cell (|cells| <= 1/rel + 1 since tol scales with the largest value,
    # so the strides cannot overflow).
    base = cells.min(0) - 1
    span = cells.max(0) - base + 2
    stride = np.concatenate([[1], np.cumprod(span[:-1])])
    keys = (cells - base) @ stride
    # Candidates: samples sharing a cell of side 2·tol with another, on any of the 2^d grids
    # shifted by 0 or tol per axis (two samples within tol on every axis share a cell on one
    # of them), found by sorting keys; only those are compared.
    candidate = np.zeros(len(flat), dtype=bool)
    for shift in itertools.product((0.0, 1.0), repeat=len(axes)):
        coarse = np.floor((scaled + np.asarray(shift)) / 2).astype(np.int64)
        cb = coarse.min(0)
        cs = np.concatenate([[1], np.cumprod((coarse.max(0) - cb + 1)[:-1])])
        ckeys = (coarse - cb) @ cs
        _, inverse, counts = np.unique(ckeys, return_inverse=True, return_counts=True)
        candidate |= counts[inverse] > 1
    near = [np.array(off) for off in itertools.product((-1, 0, 1), repeat=len(axes))]
    seen: dict[int, list[int]] = {}
    offsets = [int(off @ stride) for off in near]
    for i in np.flatnonzero(candidate):
        row = flat[i].astype(np.float64)
        key = int(keys[i])
        dup[i] = any(
            np.max(np.abs(row - flat[j])) <= tol for off in offsets for j in seen.get(key + off, ())
        )
        seen.setdefault(key, []).append(int(i))
    return dup


def grid_axes(flat: np.ndarray, spread: np.ndarray, tol: float, rows: int = 1024) -> np.ndarray:
    """The ``GRID_AXES`` coordinates whose grid cells separate the most samples.

    The most spread coordinates are not enough: with bounds, many samples sit on a bound in
    the same coordinates (a real digit's zeros), so they share a cell there and the pairwise
    comparisons grow as N². The coordinates chosen are those whose most crowded cell holds
    the fewest of up to ``rows`` samples; ties go to the more spread coordinate.
    """
    pick = np.linspace(0, len(flat) - 1, min(rows, len(flat))).astype(np.int64)
    cells = np.floor(np.nan_to_num(flat[pick].astype(np.float64)) / tol)
    cells.sort(axis=0)
    # Longest run of equal cells per column: position minus the start of its run.
    position = np.arange(len(cells))[:, None]
    new_run = np.ones(cells.shape, dtype=bool)
    new_run[1:] = cells[1:] != cells[:-1]
    start = np.maximum.accumulate(np.where(new_run, position, 0), axis=0)
    crowd = (position - start).max(0)
    return np.lexsort((-spread, crowd))[:GRID_AXES]


def finite_stats(flat: np.ndarray, rows: int = 1024) -> tuple[float, np.ndarray]:
    """Largest finite magnitude (over every sample, a block at a time, in the samples' own
    dtype) and each column's standard deviation over its finite values (over at most ``rows``
    evenly spaced samples: it only ranks the columns)."""
    top = 0.0
    for i in range(0, len(flat), 4 * rows):
        block = flat[i : i + 4 * rows]
        if not np.isfinite(block).all():
            block = np.where(np.isfinite(block), block, 0)
        if block.size:
            top = max(top, float(block.max()), -float(block.min()))
    pick = np.linspace(0, len(flat) - 1, min(rows, len(flat))).astype(np.int64)
    sample = flat[pick].astype(np.float64)
    ok = np.isfinite(sample)
    sample[~ok] = 0.0
    n = np.maximum(ok.sum(0), 1)
    mean = sample.sum(0) / n
    return top, np.sqrt(np.maximum((sample * sample).sum(0) / n - mean * mean, 0.0))
