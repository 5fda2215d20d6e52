"""Pulling affine families back through affine maps.

:class:`DenseAffine` handles any ``y = M x + c`` with a dense matrix: one SVD (cached on the
instance, so once per layer per model), singular values below ``σ_max / max_condition`` treated
as zero (the paper's cut-off), the null space added as free directions, and, for maps that are
not onto, the family restricted to the part that lies in the map's range.
:func:`permute_family` handles shape-only ops (a reshape is the identity on flat values, a
transpose a permutation), with no linear algebra at all.
"""

from __future__ import annotations

import numpy as np

from ..errors import MemoryBudgetError
from .base import Family

DENSE_LIMIT = 4_000_000  # entries of M above which a dense SVD is refused (~2000 x 2000)


def orthonormal_columns(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis of span(A)'s significant part (d, r)."""
    if A.shape[1] == 0:
        return A
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    keep = s > rtol * max(s[0], 1e-300) if s.size else s.astype(bool)
    return U[:, keep]


def null_basis(A: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis of the null space of A (k, r) as (k, r - rank) columns."""
    if A.shape[1] == 0:
        return np.zeros((0, 0))
    _, s, Vt = np.linalg.svd(A, full_matrices=True)
    rank = int(np.sum(s > rtol * max(s[0], 1e-300))) if s.size else 0
    return Vt[rank:].T


class DenseAffine:
    """``y = M x + c`` with an SVD pseudo-inverse cut at ``max_condition``."""

    def __init__(self, M: np.ndarray, c: np.ndarray | None, max_condition: float = 100.0):
        M = np.asarray(M, dtype=np.float64)
        if M.size > DENSE_LIMIT:
            raise MemoryBudgetError(f"a dense {M.shape} matrix is too large to invert by SVD")
        self.M = M
        self.c = np.zeros(M.shape[0]) if c is None else np.asarray(c, np.float64).ravel()
        self.max_condition = max_condition
        U, s, Vt = np.linalg.svd(M, full_matrices=True)
        cut = s[0] / max_condition if s.size and s[0] > 0 else np.inf
        r = int(np.sum(s >= cut)) if s.size else 0
        self.rank = r
        self.Ur, self.sr, self.Vr = U[:, :r], s[:r], Vt[:r].T
        self.N = Vt[r:].T  # (n, n - r) null space (after the cut)
        self.onto = r == M.shape[0]

    def pinv(self, Y: np.ndarray) -> np.ndarray:
        """Minimum-norm least-squares solutions for rows of ``Y`` (B, m) -> (B, n)."""
        return ((Y @ self.Ur) / self.sr) @ self.Vr.T

    def pullback(self, family: Family) -> Family:
        v = family.v0 - self.c
        x0 = self.pinv(v)
        X = self.pinv(family.V.T).T if family.free else np.zeros((self.M.shape[1], 0))
        residual = family.residual.copy()
        if not self.onto:
            # Only the part of v0 + V u inside range(Ur) can be produced: require the rest to
            # vanish, E u = e, and keep the u that do that (least squares when none does).
            def off_range(A: np.ndarray) -> np.ndarray:
                return A - (A @ self.Ur) @ self.Ur.T

            e = -off_range(v)  # (B, m)
            E = off_range(family.V.T).T if family.free else np.zeros((len(self.c), 0))
            if family.free:
                u_p = np.linalg.lstsq(E, e.T, rcond=None)[0].T  # (B, k)
                miss = np.linalg.norm(E @ u_p.T - e.T, axis=0)
                F = null_basis(E)
                x0 = x0 + u_p @ X.T
                X = X @ F
            else:
                miss = np.linalg.norm(e, axis=1)
            residual = residual + miss
        V = orthonormal_columns(np.concatenate([X, self.N], axis=1))
        return Family(x0, V, residual)


def permute_family(family: Family, index: np.ndarray) -> Family:
    """Pull back through ``y_flat = x_flat[index]`` (a permutation of flat positions)."""
    inverse = np.argsort(index)
    return Family(family.v0[:, inverse], family.V[inverse], family.residual.copy())
