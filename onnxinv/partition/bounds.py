"""Bounds on a chain's values over an input box: intervals, activation lines, back-substitution.

The one place where the backward pass and the exact solver bound what a chain (or a block's
steps) can compute from a box of inputs:

* **interval arithmetic**, layer by layer: :func:`centre_spread` is the range of an affine map
  ``M h + c`` over a box (``M mid + c ± |M| rad``), :func:`intervals` walks a chain's ops or a
  block's steps (an :class:`~onnxinv.partition.chain.Affine` by :func:`centre_spread`, any other
  op or step by its rule's ``forward_interval``), :func:`interval_bounds` names the result by
  tensor, and :func:`widen` moves bounds outwards so that round-off cannot make them unsound.
  The backward pass (:mod:`onnxinv.solvers.backward.collapse`) keeps its choices inside them;
  the exact solver writes its program with them and starts its certificate from them.
* **activation lines**: two lines around an activation's graph on an interval, ``a_l z + b_l ≤
  σ(z) ≤ a_u z + b_u``, as a 4-tuple ``(a_l, b_l, a_u, b_u)`` of per-value arrays.
  :func:`chord_lines` is the chord moved down and up to the lowest and highest of some points of
  the graph; :func:`sampled_lines` takes those points on a grid (any monotone activation, with a
  margin for what the grid misses); the branch and bound's piecewise-linear graphs take their
  corners (:mod:`onnxinv.solvers.exact.branch`).
* **back-substitution** (linear bound propagation, CROWN-style): :func:`back_substitute`
  carries a linear function of a chain's top values down to its input, through every affine map
  exactly and every activation by its lines; bounding the result over the box bounds the
  function over everything the chain computes from it.
"""

from __future__ import annotations

import numpy as np

from .chain import Affine

GRID = 65  # points per value at which sampled_lines checks the graph


def centre_spread(M: np.ndarray, c, lo: np.ndarray, hi: np.ndarray):
    """The values ``M h + c`` takes for ``h`` in the box ``[lo, hi]``: ``(centre, spread)``, the
    range being ``centre ± spread`` (exact up to round-off, per output)."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    return M @ mid + c, np.abs(M) @ rad


def widen(lo, hi, slack: float, common: bool = False):
    """``[lo, hi]`` moved outwards by ``slack`` relative: each end by ``slack·(1 + |end|)``, or
    with ``common`` both by ``slack·(1 + the larger magnitude)``. An infinite end stays so."""
    with np.errstate(invalid="ignore"):
        if common:
            pad = slack * (1 + np.maximum(np.abs(lo), np.abs(hi)))
            return lo - pad, hi + pad
        return lo - slack * (1 + np.abs(lo)), hi + slack * (1 + np.abs(hi))


def intervals(
    ops, lo: np.ndarray, hi: np.ndarray, *, slack: float | None = None, finite: bool = False
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval bounds of each op's output for inputs in ``[lo, hi]``, from the input up.

    ``ops`` are a chain's ops or a block's steps: an :class:`Affine` is bounded by
    :func:`centre_spread`, anything else by its rule's ``forward_interval`` (flattened, float64).
    With ``slack``, each output's bounds are widened (:func:`widen`, ``common``) before the op
    above sees them. The walk stops at the first op it cannot bound: its rule gives no bounds,
    or they hold a NaN (with ``finite``: anything not finite). Returns one ``(lo, hi)`` per op
    below that one (all of them when none stops it).
    """
    out = []
    for op in ops:
        if isinstance(op, Affine):
            centre, spread = centre_spread(op.M, op.c, lo, hi)
            lo, hi = centre - spread, centre + spread
        else:
            with np.errstate(all="ignore"):
                found = op.rule.forward_interval(lo, hi)
            if found is None:
                break
            lo, hi = (np.asarray(b, dtype=np.float64).ravel() for b in found)
        if slack is not None:
            lo, hi = widen(lo, hi, slack, common=True)
        bad = (lambda v: ~np.isfinite(v)) if finite else np.isnan
        if bad(lo).any() or bad(hi).any():
            break
        out.append((lo, hi))
    return out


def interval_bounds(
    steps, lo: np.ndarray, hi: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Interval bounds of every tensor of a block's steps, by name, from bounds on its input
    (:func:`intervals`: a step whose rule cannot bound its output ends them)."""
    if not steps:
        return {}
    out = {steps[0].input: (lo, hi)}
    for step, bounds in zip(steps, intervals(steps, lo, hi), strict=False):
        out[step.output] = bounds
    return out


# -- activation lines ---------------------------------------------------------------------------
def chord_lines(z: np.ndarray, f: np.ndarray, run: np.ndarray):
    """Two lines parallel to the chord of the points ``(z, f)`` (n, P) of a graph, per row.

    The slope is ``(f[:, -1] − f[:, 0]) / run`` (0 where ``run ≤ 0``); the intercepts are those
    of its parallels through the lowest and the highest point. Returns ``(slope, low, high)``:
    every point lies between ``slope z + low`` and ``slope z + high``.
    """
    flat = run <= 0
    slope = np.where(flat, 0.0, (f[:, -1] - f[:, 0]) / np.where(flat, 1.0, run))
    gap = f - slope[:, None] * z
    return slope, gap.min(1), gap.max(1)


def sampled_lines(rule, lo: np.ndarray, hi: np.ndarray):
    """Parallel lines ``a z + b_l ≤ σ(z) ≤ a z + b_u`` on ``[lo, hi]``, per value, as lines
    ``(a, b_l, a, b_u)``.

    The slope is the chord's; the intercepts are the extreme gaps on a grid of ``GRID`` points,
    widened by the most the function can move between grid points (its largest secant slope
    on the grid, doubled, times half the spacing): sound for the smooth or piecewise-linear
    monotone activations the chain admits, up to that Lipschitz estimate.
    """
    width = np.maximum(hi - lo, 0.0)
    t = np.linspace(0.0, 1.0, GRID)
    z = lo[:, None] + width[:, None] * t[None, :]
    with np.errstate(all="ignore"):
        f = np.asarray(rule.forward(z), dtype=np.float64).reshape(z.shape)
    run = np.where(width > 0, np.maximum(width, 1e-300), 0.0)  # (a chord at least 1e-300 long)
    a, low, high = chord_lines(z, f, run)
    step = width / (GRID - 1)
    secant = np.abs(np.diff(f, axis=1)).max(1) / np.maximum(step, 1e-300)
    margin = (2 * secant + np.abs(a)) * step / 2
    return a, low - margin, a, high + margin


# -- back-substitution --------------------------------------------------------------------------
def back_substitute(ops: list, lines, W: np.ndarray, const: np.ndarray):
    """``W z + const`` (queries by rows) on the last op's output, bounded above by a linear
    function of the chain's input: ``(W', const')`` with ``W z + const ≤ W' x + const'``.

    Down through the ops: an :class:`Affine` ``z = M h + c`` substitutes exactly (``W M``,
    ``const + W c``); an activation ``i`` between the lines ``lines[i]`` (``(a_l, b_l, a_u,
    b_u)``, valid on the intervals its input keeps to) takes, per coefficient, the line that
    bounds its term from above: the upper one where the coefficient is positive, else the lower.
    Bound ``W' x + const'`` over the box to finish; a lower bound is minus the upper bound of
    ``−W z − const``.
    """
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        if isinstance(op, Affine):
            const = const + W @ op.c
            W = W @ op.M
        else:
            a_l, b_l, a_u, b_u = lines[i]
            up = W > 0
            const = const + np.where(up, W * b_u, W * b_l).sum(1)
            W = np.where(up, W * a_u, W * a_l)
    return W, const


__all__ = [
    "GRID",
    "back_substitute",
    "centre_spread",
    "chord_lines",
    "interval_bounds",
    "intervals",
    "sampled_lines",
    "widen",
]
