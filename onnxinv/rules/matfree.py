"""Affine maps too large for a dense matrix, pulled back without one.

A layer whose matrix would exceed :data:`~onnxinv.rules.linalg.DENSE_LIMIT` entries (a
convolution on a 224×224 image is a 10⁵ × 10⁵ map) is known here only through its forward
``x ↦ A x`` and its exact transpose ``y ↦ Aᵀ y`` (for a convolution, the transposed
convolution):

* :class:`LsqrInverse` – the minimum-norm least-squares solution of ``A x = y`` by
  ``scipy.sparse.linalg.lsqr`` on a ``LinearOperator`` (started from 0, its iterates stay in
  the row space, so it converges to ``A⁺ y``); one solve per distinct row;
* :class:`CoIsometry` – maps with ``A Aᵀ A = s·A`` (selections, crops and pads copy values;
  means over disjoint windows average them): ``A⁺ = Aᵀ / s``, exact and as cheap as a forward;
* :class:`PerPosition` – one small matrix applied at every position (a 1×1 convolution): its
  SVD is the map's, so the pseudo-inverse and the cut at ``max_condition`` are exactly the
  dense path's.

The null space cannot be held as a basis (a 2×2 average pool of a 128×56×56 tensor has 3·10⁵
null directions), so at most :data:`NULL_DIRECTIONS` of them are *sampled*: random vectors
``w`` projected off the row space, ``w − A⁺ A w``, orthonormalised. Every member of the
resulting family is an exact preimage; the family is a random slice of all of them, enough
for samples to differ. The directions come from a fixed seed, so runs are reproducible.

The singular-value cut of the dense path (``--max-condition`` c) becomes an iteration budget:
LSQR's iterations grow with the condition number (about ten per unit of it to round-off on
convolutions), so each solve gets :data:`ITERATIONS_PER_CONDITION` · c of them, and a map LSQR
cannot solve to :data:`ONTO_TOLERANCE` within them on a random output counts as not onto. The
plan then solves below it numerically, as it does for a dense map with singular values under the
cut. What a solve misses is added to the family's residual, so an inexact pull-back is flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsqr

from ..errors import check_deadline
from . import linalg
from .linalg import DenseAffine, LinearInverse

Linear = Callable[[np.ndarray], np.ndarray]  # rows (B, n) -> rows (B, m)

NULL_DIRECTIONS = 16  # most null-space directions a matrix-free pull-back adds
NULL_SEED = 20240612  # seed of the random vectors projected onto the null space
LSQR_TOLERANCE = 1e-12  # LSQR's atol and btol
ITERATIONS_PER_CONDITION = 10  # LSQR iterations per solve: this times max_condition
ONTO_TOLERANCE = 1e-7  # relative residual on a random output below which a map is onto
NULL_TOLERANCE = 1e-6  # relative norm a projected random vector needs to count as null


def _distinct_rows(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows, index of each row among them): identical requests are solved once."""
    if len(Y) <= 1:
        return Y, np.zeros(len(Y), dtype=int)
    rows, inverse = np.unique(Y, axis=0, return_inverse=True)
    return rows, inverse.ravel()


def null_budget(n: int) -> int:
    """How many null directions of an ``n``-value input are sampled: :data:`NULL_DIRECTIONS`,
    fewer when ``n`` × that would exceed the dense limit's memory."""
    return min(NULL_DIRECTIONS, max(1, linalg.DENSE_LIMIT // max(n, 1)))


def null_directions(project: Linear, n: int) -> np.ndarray:
    """(n, k ≤ :func:`null_budget`) orthonormal directions from ``project`` (rows onto the null
    space) applied to random vectors; fewer when the null space is smaller (none for an
    injective map)."""
    count = null_budget(n)
    if n == 0:
        return np.zeros((n, 0))
    W = np.random.default_rng(NULL_SEED).standard_normal((count, n))
    P = project(W) / np.linalg.norm(W, axis=1, keepdims=True)
    U, s, _ = np.linalg.svd(P.T, full_matrices=False)
    return U[:, s > NULL_TOLERANCE]


class _Operator(LinearInverse):
    """``y = A x + c`` known through ``forward`` (A) and ``adjoint`` (Aᵀ) on rows (B, ·)."""

    def __init__(self, n: int, m: int, c: np.ndarray | None, forward: Linear, adjoint: Linear):
        super().__init__(n, m, c)
        self.forward, self.adjoint = forward, adjoint

    def apply(self, X: np.ndarray) -> np.ndarray:
        return self.forward(X)

    @cached_property
    def null(self) -> np.ndarray:
        return null_directions(lambda W: W - self.pinv(self.apply(W)), self.n)


class LsqrInverse(_Operator):
    """The pseudo-inverse by LSQR, one solve per distinct row (``max_condition`` sets the
    iteration budget)."""

    def __init__(self, n, m, c, forward, adjoint, max_condition: float = 100.0):
        super().__init__(n, m, c, forward, adjoint)
        self.iter_lim = max(100, int(ITERATIONS_PER_CONDITION * max_condition))
        self.iterations: list[int] = []  # per solve, for measurements

    @cached_property
    def operator(self) -> LinearOperator:
        def matvec(x: np.ndarray) -> np.ndarray:
            check_deadline()  # (an LSQR solve on a large convolution can take minutes)
            return self.forward(x.reshape(1, -1)).ravel()

        def rmatvec(y: np.ndarray) -> np.ndarray:
            check_deadline()
            return self.adjoint(y.reshape(1, -1)).ravel()

        return LinearOperator((self.m, self.n), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)

    def _solve(self, y: np.ndarray) -> np.ndarray:
        if not y.any():
            return np.zeros(self.n)
        out = lsqr(
            self.operator, y, atol=LSQR_TOLERANCE, btol=LSQR_TOLERANCE, conlim=1e12,
            iter_lim=self.iter_lim,
        )  # fmt: skip
        self.iterations.append(int(out[2]))
        return out[0]

    def pinv(self, Y: np.ndarray) -> np.ndarray:
        rows, index = _distinct_rows(np.asarray(Y, dtype=np.float64))
        solved = np.stack([self._solve(r) for r in rows]) if len(rows) else np.zeros((0, self.n))
        return solved[index]

    def miss(self, V: np.ndarray, X: np.ndarray) -> np.ndarray:
        return np.linalg.norm(self.apply(X) - V, axis=1)

    @cached_property
    def onto(self) -> bool:
        if self.m > self.n:
            return False
        y = np.random.default_rng(NULL_SEED).standard_normal((1, self.m))
        miss = np.linalg.norm(self.off_range(y)) / np.linalg.norm(y)
        return bool(miss < ONTO_TOLERANCE)


class CoIsometry(_Operator):
    """``A Aᵀ A = scale · A``, so ``A⁺ = Aᵀ / scale`` exactly.

    Args:
        scale: the factor above (1 for a selection, 1/K for means over disjoint K-windows).
        onto: whether ``A Aᵀ = scale · I`` (no output is constant).
        null: (n, k) orthonormal null directions when the caller knows them (the inputs a
            selection drops); by default sampled as ``w − A⁺ A w``.
    """

    def __init__(self, n, m, c, forward, adjoint, scale: float = 1.0, onto: bool = True,
                 null: np.ndarray | None = None):  # fmt: skip
        super().__init__(n, m, c, forward, adjoint)
        self.scale, self._onto = scale, onto
        if null is not None:
            self.null = null  # replaces the sampled directions (a cached property)

    @property
    def onto(self) -> bool:
        return self._onto

    def pinv(self, Y: np.ndarray) -> np.ndarray:
        return self.adjoint(Y) / self.scale


class PerPosition(_Operator):
    """``M`` (C_out, C_in) applied at each of ``positions`` positions of (C, positions) values."""

    def __init__(self, M: np.ndarray, positions: int, c: np.ndarray | None, max_condition: float):
        self.channels = DenseAffine(M, None, max_condition)
        self.positions = positions
        m, n = M.shape
        super().__init__(n * positions, m * positions, c, self._mix(M), self._mix(M.T))

    @staticmethod
    def _mix(M: np.ndarray) -> Linear:
        return lambda X: (M @ X.reshape(len(X), M.shape[1], -1)).reshape(len(X), -1)

    @property
    def onto(self) -> bool:
        return self.channels.onto

    def pinv(self, Y: np.ndarray) -> np.ndarray:
        b, m = len(Y), self.channels.m
        pixels = Y.reshape(b, m, -1).transpose(0, 2, 1).reshape(-1, m)  # (B · positions, C_out)
        x = self.channels.pinv(pixels).reshape(b, self.positions, -1)
        return x.transpose(0, 2, 1).reshape(b, -1)


def coordinate_directions(n: int, free: np.ndarray) -> np.ndarray:
    """(n, k) orthonormal directions spanning (or sampling) the coordinates ``free``.

    The unit vectors when they fit under the dense limit; else their mean direction (so a box
    constraint can move every free coordinate at once) and random vectors supported on them.
    """
    free = np.asarray(free, dtype=int)
    if len(free) * n <= linalg.DENSE_LIMIT:
        V = np.zeros((n, len(free)))
        V[free, np.arange(len(free))] = 1.0
        return V
    k = min(null_budget(n), len(free))
    S = np.random.default_rng(NULL_SEED).standard_normal((len(free), k))
    S[:, 0] = 1.0
    V = np.zeros((n, k))
    V[free] = np.linalg.qr(S)[0]
    return V
