"""Choosing points in affine families: the free choices of the backward pass.

Collapsing a family ``{v0 + V u}`` to a point is where the paper's method fails in practice:
a random ``u`` easily leaves the domain of the next inverse (SELU's output must be > −γα,
Sigmoid's in (0, 1)) or, at the input, the bounds. Here, per sample:

1. propose the paper's point: ``u_r`` random with ``‖V u_r‖ = std·‖v0‖``;
2. if it lies inside ``[lo + margin, hi − margin]``, take it (the common, fast case);
3. otherwise solve a small LP with scipy's HiGHS for the feasible point nearest (in L1) to the
   random proposal: samples keep their own random directions instead of piling up on one
   vertex, and no coordinate is pushed further than the constraints require;
4. when no point satisfies the bounds, the LP's margin variable goes negative: the
   least-violating point is clipped into the domain and the sample is flagged inexact (the
   caller may polish it).

Bounds ``lo``/``hi`` combine the next rule's domain with interval bounds propagated forward from
the input box (:func:`onnxinv.partition.bounds.interval_bounds`; a necessary condition for the
layers below to reach the value): a cheap lookahead that keeps greedy layer-by-layer choices out
of dead ends.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import linprog

from ...rules.base import Family, Interval

T_CAP = 1e-6  # margin asked of the LP beyond the domain's own (open bounds are pre-shrunk)
MARGIN_WEIGHT = 1e6
JOINT_TOLERANCE = 1e-7
PULL_WEIGHT = 1e-4  # weight of |x − z| against the violation in the joint LP

__all__ = ["MARGIN", "box", "collapse", "joint_collapse"]


#: Distance kept from open domain bounds (relative to the bound's scale).
MARGIN = 1e-3


def box(
    domain: Interval | None,
    size: int,
    margin: float,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat (lo, hi) arrays: an open domain shrunk by ``margin``, intersected with ``extra``."""
    lo = np.full(size, -np.inf)
    hi = np.full(size, np.inf)
    if domain is not None:
        lo[:] = domain.lo + _inset(domain.lo, margin, domain.open)
        hi[:] = domain.hi - _inset(domain.hi, margin, domain.open)
    if extra is not None:
        lo = np.maximum(lo, extra[0])
        hi = np.minimum(hi, extra[1])
    return lo, hi


def _inset(end: float, margin: float, is_open: bool) -> float:
    """How far a domain's end moves in: ``margin`` relative to its size (at least 1) if open."""
    return margin * max(1.0, abs(end) if np.isfinite(end) else 1.0) if is_open else 0.0


def collapse(
    family: Family,
    lo: np.ndarray,
    hi: np.ndarray,
    rng: np.random.Generator,
    std: float,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One point per sample of ``family`` inside [lo, hi]; returns (points, inside flags).

    After ``deadline`` (``time.monotonic()``), samples still needing an LP keep their clipped
    proposal and are flagged outside.
    """
    v0, V = family.v0, family.V
    b, k = v0.shape[0], V.shape[1]
    if k and np.isfinite(lo).all() and np.isfinite(hi).all():
        # Inside a box: aim at a uniformly random point of the box (projected onto the
        # family), so samples spread over the whole feasible slice instead of hugging the
        # particular solution.
        u_r = (rng.uniform(lo, hi, size=(b, len(lo))) - v0) @ V
    elif k == 1:
        # A sphere in one dimension is two points: draw the signed length instead, so samples
        # differ (normal, of mean magnitude about std·|v0|).
        u_r = rng.standard_normal((b, 1)) * std * np.linalg.norm(v0, axis=1, keepdims=True)
    elif k:
        u_r = rng.standard_normal((b, k))
        u_r *= (
            std
            * np.linalg.norm(v0, axis=1, keepdims=True)
            / np.maximum(np.linalg.norm(u_r, axis=1, keepdims=True), 1e-300)
        )
    else:
        u_r = np.zeros((b, 0))
    y = v0 + u_r @ V.T
    ok = _inside(y, lo, hi)
    if k == 0 or ok.all():
        return _clip(y, lo, hi), ok
    rows_lo, rows_hi = np.isfinite(lo), np.isfinite(hi)
    # Variables [u (k), p (k), t]: minimise Σp − W·t with p ≥ |u − u_r| and a_i·u + t ≤ b_i
    # for every finite bound: the feasible point nearest the random proposal (L1), with a
    # non-negative margin t wherever one exists (W makes the margin come first).
    A = np.concatenate([-V[rows_lo], V[rows_hi]])
    m = len(A)
    eye = np.eye(k)
    A_ub = np.block(
        [
            [A, np.zeros((m, k)), np.ones((m, 1))],
            [eye, -eye, np.zeros((k, 1))],
            [-eye, -eye, np.zeros((k, 1))],
        ]
    )
    c = np.concatenate([np.zeros(k), np.ones(k), [-MARGIN_WEIGHT]])
    bounds = [(None, None)] * k + [(0, None)] * k + [(None, T_CAP)]
    for i in np.flatnonzero(~ok):
        if deadline is not None and time.monotonic() > deadline:
            break
        b_ub = np.concatenate(
            [v0[i, rows_lo] - lo[rows_lo], hi[rows_hi] - v0[i, rows_hi], u_r[i], -u_r[i]]
        )
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=bounds, method="highs")
        if res.status != 0:
            continue
        y[i] = v0[i] + V @ res.x[:k]
        ok[i] = res.x[-1] >= 0  # else least violating: clipped below, flagged inexact
    ok &= _inside(y, lo, hi, slack=1e-9)
    return _clip(y, lo, hi), ok


def _inside(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, slack: float = 0.0) -> np.ndarray:
    return np.all((y >= lo - slack) & (y <= hi + slack), axis=1)


def _clip(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.clip(y, lo, hi)


def joint_collapse(
    family: Family,
    inverse,
    M: np.ndarray,
    c: np.ndarray,
    x_lo: np.ndarray,
    x_hi: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    y_init: np.ndarray,
    rng: np.random.Generator,
    iterations: int = 10,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose points ``y`` of ``family`` such that ``inverse(y) = M x + c`` for some x in a box.

    Greedy collapsing picks ``y`` without looking at the box the input must lie in; below the
    last nonlinearity of a bounded problem that fails. Here ``y`` and ``x`` are chosen together
    by sequential linear programming: linearise ``inverse`` around the current ``y``, solve the
    LP (HiGHS) that minimises the L1 violation of ``inverse(y) = M x + c`` over the family's
    coefficients and ``x`` in the box, inside a trust region, and repeat. A small second term
    pulls ``x`` towards a random point of the box, so samples spread over the solutions.

    Returns:
        (y, ok): the points and whether each satisfied the equation to ``JOINT_TOLERANCE``
        (relative); the exact pullback and onnxruntime's check settle the rest.
    """
    v0, V = family.v0, family.V
    b, k = v0.shape[0], V.shape[1]
    d, n = M.shape
    y = np.clip(y_init.copy(), lo, hi)
    ok = np.zeros(b, dtype=bool)
    x_bounds = list(zip(x_lo, x_hi, strict=True))
    # Variables [u (k), x (n), s⁺ (d), s⁻ (d), q (n)] with q ≥ |x − z|, z random in the box.
    eye_n = np.eye(n)
    pull = np.concatenate([np.zeros((n, k)), eye_n, np.zeros((n, 2 * d)), -eye_n], axis=1)
    push = np.concatenate([np.zeros((n, k)), -eye_n, np.zeros((n, 2 * d)), -eye_n], axis=1)
    cost = np.concatenate([np.zeros(k + n), np.ones(2 * d), np.full(n, PULL_WEIGHT)])
    bounds = [(None, None)] * k + x_bounds + [(0, None)] * (2 * d + n)
    for i in range(b):
        if deadline is not None and time.monotonic() > deadline:
            break  # the rest keep their greedy points, flagged not ok
        z = rng.uniform(x_lo, x_hi)
        h, radius = y[i].copy(), 4.0
        for _ in range(iterations):
            g = inverse(h[None])[0]
            eps = 1e-6 * np.maximum(1.0, np.abs(h))
            up, down = np.minimum(h + eps, hi), np.maximum(h - eps, lo)
            slope = (inverse(up[None])[0] - inverse(down[None])[0]) / np.maximum(up - down, 1e-300)
            # M x − diag(slope) V u − s⁺ + s⁻ = g + slope ⊙ (v0 − h) − c
            A_eq = np.concatenate(
                [-(slope[:, None] * V), M, -np.eye(d), np.eye(d), np.zeros((d, n))], axis=1
            )
            b_eq = g + slope * (v0[i] - h) - c
            # Family point inside the domain and the trust region around h.
            top = np.minimum(hi, h + radius) - v0[i]
            bot = np.maximum(lo, h - radius) - v0[i]
            fin_t, fin_b = np.isfinite(top), np.isfinite(bot)
            A_ub = np.concatenate([V[fin_t], -V[fin_b]])
            A_ub = np.concatenate([A_ub, np.zeros((len(A_ub), n + 2 * d + n))], axis=1)
            A_ub = np.concatenate([A_ub, pull, push])
            b_ub = np.concatenate([top[fin_t], -bot[fin_b], z, -z])
            res = linprog(
                cost, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs"
            )
            if res.status != 0:
                break
            h_new = np.clip(v0[i] + V @ res.x[:k], lo, hi)
            x = res.x[k : k + n]
            miss = np.abs(inverse(h_new[None])[0] - (M @ x + c)).max()
            scale = 1.0 + np.abs(M @ x + c).max()
            violation = float(res.x[k + n : k + n + 2 * d].sum())
            if miss < np.abs(inverse(h[None])[0] - (M @ x + c)).max() or violation < 1e-12:
                h = h_new
                radius = min(radius * 2, 1e3)
            else:
                radius /= 4
            if violation <= JOINT_TOLERANCE * scale and miss <= JOINT_TOLERANCE * scale:
                ok[i] = True
                break
        y[i] = h
    return y, ok
