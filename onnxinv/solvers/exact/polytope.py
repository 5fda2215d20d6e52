"""Many inputs from one activation pattern: the pattern's polytope and a hit-and-run walk in it.

With every piecewise-linear activation held on one piece and every max pool on one entry, the
chain is one affine map ``z_top = A x + a``, valid on the polytope where each value stays on
its piece (and each picked entry stays the largest of its window), intersected with the input
box. The inputs reaching the request exactly are that polytope's slice ``G x = g`` (``G = D
A``, the top region's rows). A walk that moves only along the slice's null space keeps the
request met to round-off, so every point it visits is a preimage; each step picks a random
direction and a uniform point of the chord the polytope leaves in it (hit-and-run), so the
samples spread over the slice instead of sitting on vertices (what a linear program returns).

The pattern boundaries are not hard for the user: the chain is continuous, so a point a little
across one still maps next to the request; only the box is. The walk nevertheless keeps to the
polytope so that the affine map it relies on is the chain's own.
"""

from __future__ import annotations

import numpy as np

from ...partition.chain import Affine, Select
from .program import pieces

STEPS = 40  # hit-and-run steps per sample


def pattern_polytope(
    ops: list, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pattern ``x`` (n,) is on: (P, q, A, a) with the polytope ``P x ≤ q`` (box excluded)
    and the top values ``A x + a`` on it."""
    n = len(x)
    A, a = np.eye(n), np.zeros(n)
    P, q = [np.zeros((0, n))], [np.zeros(0)]
    for op in ops:
        if isinstance(op, Affine):
            A, a = op.M @ A, op.M @ a + op.c
            continue
        z = A @ x + a
        if isinstance(op, Select):
            W = op.rule.windows()
            vals = np.where(W >= 0, z[np.maximum(W, 0)], -np.inf)
            pick = W[np.arange(len(W)), vals.argmax(1)]
            rows, cols = np.nonzero((W >= 0) & (pick[:, None] != W))
            other = W[rows, cols]
            P.append(A[other] - A[pick[rows]])
            q.append(a[pick[rows]] - a[other])
            A, a = A[pick], a[pick]
            continue
        left, right, slope, icpt = pieces(op.rule, len(z))
        s = np.clip((z[None] >= left).sum(0) - 1, 0, len(left) - 1)
        cols = np.arange(len(z))
        lo, hi = left[s, cols], right[s, cols]
        f_lo, f_hi = np.isfinite(lo), np.isfinite(hi)
        P += [-A[f_lo], A[f_hi]]
        q += [a[f_lo] - lo[f_lo], hi[f_hi] - a[f_hi]]
        k = slope[s, cols]
        A, a = k[:, None] * A, k * a + icpt[s, cols]
    return np.concatenate(P), np.concatenate(q), A, a


def centre(P: np.ndarray, q: np.ndarray, G: np.ndarray, g: np.ndarray, N: np.ndarray):
    """The deepest point of ``{P x ≤ q, G x = g}`` measured along the slice (HiGHS LP):
    ``(x, radius)``, or None when the slice is empty."""
    from scipy.optimize import linprog

    n = P.shape[1]
    norms = np.linalg.norm(P @ N, axis=1)
    c = np.zeros(n + 1)
    c[-1] = -1.0
    res = linprog(
        c,
        A_ub=np.hstack([P, norms[:, None]]),
        b_ub=q,
        A_eq=np.hstack([G, np.zeros((len(G), 1))]),
        b_eq=g,
        bounds=[(None, None)] * n + [(0, None)],
        method="highs",
    )
    if res.status != 0:
        return None
    return res.x[:n], float(res.x[-1])


def nearest(P: np.ndarray, q: np.ndarray, G: np.ndarray, g: np.ndarray, prior=None):
    """A point of ``{P x ≤ q}`` with ``G x`` nearest ``g`` (largest deviation, HiGHS LP): the
    exact request where the pattern holds it, else as close as the pattern gets; with a
    ``prior``, of those points the one nearest it (L1). None when the polytope is empty."""
    from scipy.optimize import linprog

    n, r = P.shape[1], len(G)
    c = np.zeros(n + 1)
    c[-1] = 1.0
    ones = np.ones((r, 1))
    res = linprog(
        c,
        A_ub=np.vstack([np.hstack([P, np.zeros((len(P), 1))]), np.hstack([G, -ones]),
                        np.hstack([-G, -ones])]),
        b_ub=np.concatenate([q, g, -g]),
        bounds=[(None, None)] * n + [(0, None)],
        method="highs",
    )  # fmt: skip
    if res.status != 0:
        return None
    return res.x[:n] if prior is None else _closest(P, q, G, g, res.x[-1], prior)


def _closest(P, q, G, g, dev: float, prior: np.ndarray) -> np.ndarray | None:
    """The point of ``{P x ≤ q, |G x − g| ≤ dev}`` nearest ``prior`` in L1 (HiGHS LP)."""
    from scipy.optimize import linprog

    n = P.shape[1]
    eye, zero = np.eye(n), np.zeros((len(P), n))
    dev = dev + 1e-9 * (1 + abs(dev))
    zg = np.zeros((len(G), n))
    res = linprog(
        np.concatenate([np.zeros(n), np.ones(n)]),
        A_ub=np.vstack([np.hstack([P, zero]), np.hstack([G, zg]), np.hstack([-G, zg]),
                        np.hstack([eye, -eye]), np.hstack([-eye, -eye])]),
        b_ub=np.concatenate([q, g + dev, -g + dev, prior, -prior]),
        bounds=[(None, None)] * n + [(0, None)] * n,
        method="highs",
    )  # fmt: skip
    return res.x[:n] if res.status == 0 else None


def hit_and_run(
    P, q, N, x0: np.ndarray, k: int, rng: np.random.Generator, steps: int = STEPS,
    reach: float = 1.0,
):  # fmt: skip
    """``k`` points of ``{P x ≤ q}`` reached by ``steps`` hit-and-run moves each from ``x0``
    (one point, or one per walk),
    every move inside the span of ``N`` (k parallel walks, vectorised); ``reach`` < 1 draws
    each move from that fraction of its chord around the current point (staying near x0)."""
    X = np.tile(x0, (k, 1)) if np.ndim(x0) == 1 else np.array(x0, dtype=np.float64)
    if N.shape[1] == 0:
        return X
    for _ in range(steps):
        d = rng.standard_normal((k, N.shape[1])) @ N.T
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        rate = d @ P.T  # (k, R)
        room = np.maximum(q[None] - X @ P.T, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = room / rate
        up = np.where(rate > 1e-12, ratio, np.inf).min(1)
        down = np.where(rate < -1e-12, ratio, -np.inf).max(1)
        up, down = np.minimum(up, 1e6), np.maximum(down, -1e6)
        X += rng.uniform(reach * down, reach * up)[:, None] * d
    return X
