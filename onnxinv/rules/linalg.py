"""Pulling affine families back through affine maps.

:class:`LinearInverse` holds the one pull-back every affine map shares: the particular solution
by a pseudo-inverse, the family's free directions mapped the same way, the map's null space
added as new free directions, and, for maps that are not onto, the family restricted to the part
that lies in the map's range. Subclasses say how to apply the map and its pseudo-inverse:

* :class:`DenseAffine` – any ``y = M x + c`` with a dense matrix: one SVD (cached on the
  instance, so once per layer per model), singular values below ``σ_max / max_condition``
  treated as zero (the paper's cut-off);
* :mod:`onnxinv.rules.matfree` – maps known only through products with them and their
  transpose (large convolutions: LSQR), or with an exact structured inverse (selections, means
  over disjoint windows).

:func:`permute_family` handles shape-only ops (a reshape is the identity on flat values, a
transpose a permutation), with no linear algebra at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..errors import MemoryBudgetError
from .base import Family

DENSE_LIMIT = 4_000_000  # entries of M above which a dense SVD is refused (~2000 x 2000)


def too_large(n_in: int, n_out: int) -> bool:
    """Whether an ``n_out × n_in`` matrix is over :data:`DENSE_LIMIT` (read at call time, so a
    test can lower it to force the matrix-free path)."""
    return n_in * n_out > DENSE_LIMIT


def orthonormal_columns(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis of span(A)'s significant part (d, r)."""
    if A.shape[1] == 0:
        return A
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    keep = s > rtol * max(s[0], 1e-300) if s.size else s.astype(bool)
    return U[:, keep]


def null_basis(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis of the null space of ``A`` (k, r): (r, r − rank) columns, the right
    singular vectors past the rank (singular values at most ``rtol`` times the largest count as
    zero). The one null-space helper: the backward pass's families and the exact sampler's slice
    (:mod:`onnxinv.solvers.exact.analysis`) both use it."""
    if A.shape[1] == 0:
        return np.zeros((0, 0))
    # A tall A's thin SVD already has every right singular vector (no k × k U needed); LAPACK
    # computes them the same way either way (the same bidiagonalisation), so Vt is the same.
    _, s, Vt = np.linalg.svd(A, full_matrices=A.shape[0] < A.shape[1])
    rank = int(np.sum(s > rtol * max(s[0], 1e-300))) if s.size else 0
    return Vt[rank:].T


class LinearInverse(ABC):
    """``y = A x + c`` on flat values, with a pseudo-inverse: pulls families back to families.

    Attributes:
        n, m: input and output sizes.
        c: (m,) offset.
    """

    def __init__(self, n: int, m: int, c: np.ndarray | None):
        self.n, self.m = n, m
        self.c = np.zeros(m) if c is None else np.asarray(c, np.float64).ravel()

    @abstractmethod
    def apply(self, X: np.ndarray) -> np.ndarray:
        """``A x`` for rows of ``X`` (B, n) -> (B, m), without the offset."""

    @abstractmethod
    def pinv(self, Y: np.ndarray) -> np.ndarray:
        """Minimum-norm least-squares solutions ``A⁺ y`` for rows of ``Y`` (B, m) -> (B, n)."""

    @property
    @abstractmethod
    def onto(self) -> bool:
        """Whether every output is reachable (after the cut, where there is one)."""

    @property
    @abstractmethod
    def null(self) -> np.ndarray:
        """(n, k) orthonormal directions of the null space that :meth:`pullback` adds."""

    @property
    def nullity(self) -> int:
        """``k``, the number of :attr:`null`'s directions."""
        return self.null.shape[1]

    def off_range(self, Y: np.ndarray) -> np.ndarray:
        """The part of rows of ``Y`` (B, m) that no input produces: ``Y − A A⁺ Y``."""
        return Y - self.apply(self.pinv(Y))

    def miss(self, V: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Per row, how far ``A X`` is from ``V`` on an onto map: 0 where the pseudo-inverse
        is exact; an iterative one reports what it did not reach."""
        return np.zeros(len(V))

    def pullback(self, family: Family) -> Family:
        v = family.v0 - self.c
        x0 = self.pinv(v)
        X = self.pinv(family.V.T).T if family.free else np.zeros((self.n, 0))
        residual = family.residual.copy()
        if not self.onto:
            # Only the part of v0 + V u inside the range can be produced: require the rest to
            # vanish, E u = e, and keep the u that do that (least squares when none does).
            e = -self.off_range(v)  # (B, m)
            if family.free:
                E = self.off_range(family.V.T).T
                u_p = np.linalg.lstsq(E, e.T, rcond=None)[0].T  # (B, k)
                miss = np.linalg.norm(E @ u_p.T - e.T, axis=0)
                F = null_basis(E)
                x0 = x0 + u_p @ X.T
                X = X @ F
            else:
                miss = np.linalg.norm(e, axis=1)
            residual = residual + miss
        else:
            residual = residual + self.miss(v, x0)
        # X lies in the row space (a pseudo-inverse's image), the null space is its orthogonal
        # complement: only X needs orthonormalising.
        V = np.concatenate([orthonormal_columns(X), self.null], axis=1)
        return Family(x0, V, residual)


class DenseAffine(LinearInverse):
    """``y = M x + c`` with an SVD pseudo-inverse cut at ``max_condition``."""

    def __init__(self, M: np.ndarray, c: np.ndarray | None, max_condition: float = 100.0):
        M = np.asarray(M, dtype=np.float64)
        if M.size > DENSE_LIMIT:
            raise MemoryBudgetError(f"a dense {M.shape} matrix is too large to invert by SVD")
        super().__init__(M.shape[1], M.shape[0], c)
        self.M = M
        self.max_condition = max_condition
        # The thin SVD: a wide layer's full one (784 x 784 for 784 -> 10) costs 50x more, and
        # only a pull-back through this rule needs the null space (computed then, once).
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
        cut = s[0] / max_condition if s.size and s[0] > 0 else np.inf
        r = int(np.sum(s >= cut)) if s.size else 0
        self.rank = r
        self.Ur, self.sr, self.Vr = U[:, :r], s[:r], Vt[:r].T
        self._null: np.ndarray | None = None
        self._onto = r == M.shape[0]

    @property
    def onto(self) -> bool:
        return self._onto

    @property
    def null(self) -> np.ndarray:
        """(n, n - rank) orthonormal null space (after the cut), the complement of ``Vr``."""
        if self._null is None:
            Vt = np.linalg.svd(self.M, full_matrices=True)[2]
            # (the same decomposition as Vr's, so the complement matches the cut exactly)
            self._null = Vt[self.rank :].T
        return self._null

    @property
    def nullity(self) -> int:
        return self.n - self.rank  # (without computing the null space)

    def apply(self, X: np.ndarray) -> np.ndarray:
        return X @ self.M.T

    def pinv(self, Y: np.ndarray) -> np.ndarray:
        return ((Y @ self.Ur) / self.sr) @ self.Vr.T

    def off_range(self, Y: np.ndarray) -> np.ndarray:
        return Y - (Y @ self.Ur) @ self.Ur.T


def permute_family(family: Family, index: np.ndarray) -> Family:
    """Pull back through ``y_flat = x_flat[index]`` (a permutation of flat positions)."""
    inverse = np.argsort(index)
    return Family(family.v0[:, inverse], family.V[inverse], family.residual.copy())
