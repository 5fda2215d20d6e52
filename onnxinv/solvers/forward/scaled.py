"""The forward pass's residual in the check's units: rows weighted by how much the check sees them.

A distribution target's residual is ``r = C(z) − C(log p)`` (centred logits, per softmax row).
Zero is the target, but away from it every class weighs the same, while the check measures
probabilities: a class at p = 1e-9 may be off by several logits and still pass, a class at
p = 0.3 must be within about tol/0.3. On a 1000-class output 80% of ``|r|²`` sits in the ~800
classes under the tolerance, in directions the model can barely move, so LM spends its steps
there and crawls (MobileNetV3 at 224×224: 3.9e-3 after 150 iterations, tolerance 1e-4).

:class:`ScaledResidual` solves on ``r_w = W r`` instead, with ``W = diag(s) (I − 1 pᵀ)`` per
row: centred by the target's own weights (so classes dropping far below their share do not
drag the others' centre) and each class scaled by ``s = max(p, tol) / tol``. To first order a
unit of ``r_w`` is then one tolerance of the check, for every class that can matter. ``W`` is
one-to-one on centred residuals (``r = u − mean(u)`` with ``u = r_w / s``), so the zero set and
the stop test (the check, computed from ``r``) are unchanged; only LM's steps and its
acceptance test see the weights.
"""

from __future__ import annotations

import torch

from .operators import MatrixFreeOperator

__all__ = ["ScaledResidual"]


class ScaledResidual:
    """``W r`` of another residual provider (see the module's docstring).

    Args:
        inner: the provider of centred residuals ``r`` (m = rows × V per sample).
        s: (m,) row weights.
        p: (rows, V) the target's probabilities, which centre each row; None: ``W = diag(s)``
            (a Sigmoid's outputs, which no constant shifts).
    """

    def __init__(self, inner, s, p):
        self.inner = inner
        self.m, self.n = inner.m, inner.n
        self.jacobian_source = inner.jacobian_source
        self.s = torch.as_tensor(s, dtype=torch.float64)
        self.p = None if p is None else torch.as_tensor(p, dtype=torch.float64)
        self.rows = 1 if p is None else self.p.shape[0]
        if hasattr(inner, "linearise"):  # (matrix-free steps exist only where the inner has them)
            self.linearise = self._linearise
        if hasattr(inner, "linearisation_bytes"):
            self.linearisation_bytes = inner.linearisation_bytes

    @property
    def deadline(self):
        return self.inner.deadline

    @deadline.setter
    def deadline(self, value) -> None:
        self.inner.deadline = value

    # -- the map and its inverse (B, m) ------------------------------------------------------------
    def scale(self, r: torch.Tensor) -> torch.Tensor:
        """``W r``."""
        if self.p is None:
            return r * self.s.to(r.dtype)
        p, s = self.p.to(r.dtype), self.s.to(r.dtype)
        g = r.reshape(r.shape[0], self.rows, -1)
        centred = g - (g * p).sum(2, keepdim=True)
        return centred.reshape(r.shape[0], -1) * s

    def unscale(self, rw: torch.Tensor) -> torch.Tensor:
        """``r`` from ``W r`` (residuals centred per row)."""
        if self.p is None:
            return rw / self.s.to(rw.dtype)
        u = (rw / self.s.to(rw.dtype)).reshape(rw.shape[0], self.rows, -1)
        return (u - u.mean(2, keepdim=True)).reshape(rw.shape[0], -1)

    def _transpose(self, u: torch.Tensor) -> torch.Tensor:
        """``Wᵀ u`` = ``(I − p 1ᵀ)(s ⊙ u)`` per row."""
        if self.p is None:
            return u * self.s.to(u.dtype)
        p = self.p.to(u.dtype)
        g = (u * self.s.to(u.dtype)).reshape(u.shape[0], self.rows, -1)
        return (g - p * g.sum(2, keepdim=True)).reshape(u.shape[0], -1)

    # -- the provider interface --------------------------------------------------------------------
    def value(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale(self.inner.value(x, index))

    def value_and_jacobian(self, x, index=None):
        r, jac = self.inner.value_and_jacobian(x, index)
        b, m, n = jac.shape
        cols = jac.transpose(1, 2).reshape(b * n, m)  # (each column of J is mapped by W)
        jw = self.scale(cols).reshape(b, n, m).transpose(1, 2)
        return self.scale(r), jw.contiguous()

    def value_and_gradient(self, x, loss):
        r, g = self.inner.value_and_gradient(x, lambda r: loss(self.scale(r)))
        return self.scale(r), g

    def _linearise(self, x: torch.Tensor, index: torch.Tensor | None = None):
        op = self.inner.linearise(x, index)
        return MatrixFreeOperator(
            lambda v: self.scale(op.matvec(v)),
            lambda u: op.rmatvec(self._transpose(u)),
            self.m, self.n, op.batch, op.rng,
        )  # fmt: skip
