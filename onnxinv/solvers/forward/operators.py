"""The Jacobian as a linear operator, and the damped Levenberg–Marquardt step computed from it.

Two forms share one interface (``rows``, ``matvec``, ``rmatvec``, ``damped_step``), batched
over samples (each row of a (B, ·) tensor is its own sample's problem):

* :class:`DenseOperator` holds the (B, m, n) Jacobians; the step is a direct solve of the
  damped normal equations in the smaller of the m- and n-spaces (:func:`damped_step`);
* :class:`MatrixFreeOperator` holds only a linearisation point and computes ``J v``
  (Jacobian–vector products) and ``Jᵀ u`` (vector–Jacobian products) on demand; the step is
  conjugate gradients on the same damped normal equations (:func:`cg_damped_step`), so memory
  is a few copies of the model's activations per sample instead of m·n numbers.

The damping is relative in both: μ = λ · mean(diag(J Jᵀ)) for the m-space form, λ ·
mean(diag(Jᵀ J)) for the n-space one; the matrix-free operator estimates ‖J‖²_F with a few
Rademacher probes (Hutchinson's estimator: E‖Jᵀu‖² = ‖J‖²_F).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ...errors import DeadlineReached

#: Jacobian entries per Gram-matrix block: larger products are summed block by block, with
#: the deadline checked between blocks, so one step on a huge model can be interrupted.
GRAM_BLOCK = 2**25
#: Conjugate-gradient iterations per step at most (each costs one J·v and one Jᵀ·u).
CG_MAX_ITER = 40
#: CG stops when the residual of the damped system falls below this share of its right side.
CG_TOLERANCE = 0.05
#: Rademacher probes for the ‖J‖²_F estimate that scales the damping.
NORM_PROBES = 2


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineReached


def _gram(jac: torch.Tensor, deadline: float | None) -> torch.Tensor:
    """``jac @ jacᵀ`` (B, m, m), over column blocks when the product is large."""
    b, m, n = jac.shape
    if b * m * n <= GRAM_BLOCK:
        return jac @ jac.transpose(1, 2)
    width = max(1, GRAM_BLOCK // max(1, b * m))
    a = torch.zeros((b, m, m), dtype=jac.dtype, device=jac.device)
    for j in range(0, n, width):
        _check(deadline)
        part = jac[:, :, j : j + width]
        a += part @ part.transpose(1, 2)
    return a


def damped_step(
    jac: torch.Tensor,
    r: torch.Tensor,
    lam: torch.Tensor,
    free: torch.Tensor | None = None,
    deadline: float | None = None,
) -> torch.Tensor:
    """The LM step for each sample: minimum-norm form when m ≤ n, normal equations otherwise.

    Args:
        jac: (B, m, n) Jacobians.
        r: (B, m) residuals.
        lam: (B,) relative damping.
        free: optional (B, n) mask of coordinates allowed to move.
        deadline: ``time.monotonic()`` value; past it a long product raises DeadlineReached.
    """
    if free is not None:
        jac = jac * free[:, None, :].to(jac.dtype)
    b, m, n = jac.shape
    if m <= n:
        a = _gram(jac, deadline)
        scale = _positive(torch.diagonal(a, dim1=1, dim2=2).mean(1))
        a = a + (lam * scale)[:, None, None] * torch.eye(m, dtype=jac.dtype, device=jac.device)
        y = torch.linalg.solve(a, r.unsqueeze(-1))
        return -(jac.transpose(1, 2) @ y).squeeze(-1)
    a = jac.transpose(1, 2) @ jac
    scale = _positive(torch.diagonal(a, dim1=1, dim2=2).mean(1))
    a = a + (lam * scale)[:, None, None] * torch.eye(n, dtype=jac.dtype, device=jac.device)
    g = jac.transpose(1, 2) @ r.unsqueeze(-1)
    return -torch.linalg.solve(a, g).squeeze(-1)


def _positive(scale: torch.Tensor) -> torch.Tensor:
    """The damping's scale, 1 where it is 0 (every coordinate frozen: the step is then 0, where
    a tiny scale would overflow the solve into NaN)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


class DenseOperator:
    """Jacobians held as a (B, m, n) tensor."""

    def __init__(self, jac: torch.Tensor):
        self.jac = jac

    def rows(self, idx: torch.Tensor) -> DenseOperator:
        return DenseOperator(self.jac[idx])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return (self.jac @ v.unsqueeze(-1)).squeeze(-1)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return (self.jac.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1)

    def damped_step(self, r, lam, free=None, deadline=None) -> torch.Tensor:
        return damped_step(self.jac, r, lam, free, deadline)


class MatrixFreeOperator:
    """Jacobians of a batch through products, never formed.

    Args:
        jvp: (B, n) -> (B, m), every sample's ``J v`` at the linearisation point.
        vjp: (B, m) -> (B, n), every sample's ``Jᵀ u``.
        m, n: residuals and inputs per sample.
        batch: B, the rows of the linearisation.
        rng: generator of the norm-estimate probes (seeded: the same run gives the same steps).
        rows: which of the B rows this operator stands for (None: all).
    """

    def __init__(
        self,
        jvp: Callable[[torch.Tensor], torch.Tensor],
        vjp: Callable[[torch.Tensor], torch.Tensor],
        m: int,
        n: int,
        batch: int,
        rng: torch.Generator | None = None,
        rows: torch.Tensor | None = None,
        norm2: torch.Tensor | None = None,
    ):
        self._jvp, self._vjp = jvp, vjp
        self.m, self.n, self.batch = m, n, batch
        self.rng = rng
        self.index = rows
        self._norm2 = norm2

    def rows(self, idx: torch.Tensor) -> MatrixFreeOperator:
        index = idx if self.index is None else self.index[idx]
        norm2 = None if self._norm2 is None else self._norm2[idx]
        return MatrixFreeOperator(
            self._jvp, self._vjp, self.m, self.n, self.batch, self.rng, index, norm2
        )

    def _full(self, v: torch.Tensor, width: int) -> torch.Tensor:
        if self.index is None:
            return v
        full = torch.zeros((self.batch, width), dtype=v.dtype, device=v.device)
        full[self.index] = v
        return full

    def _mine(self, v: torch.Tensor) -> torch.Tensor:
        return v if self.index is None else v[self.index]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._mine(self._jvp(self._full(v, self.n)))

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        return self._mine(self._vjp(self._full(u, self.m)))

    def norm2(self) -> torch.Tensor:
        """(B,) estimates of ‖J‖²_F, one per sample (Hutchinson, Rademacher probes)."""
        if self._norm2 is None:
            total = None
            for _ in range(NORM_PROBES):
                u = torch.randint(0, 2, (self.batch, self.m), generator=self.rng)
                u = (2 * u - 1).to(dtype=torch.float64)  # (the residual moves it to its device)
                g = self._vjp(u)
                s = (g * g).sum(1)
                total = s if total is None else total + s
            full = total / NORM_PROBES
            self._norm2 = full if self.index is None else full[self.index]
        return self._norm2

    def damped_step(self, r, lam, free=None, deadline=None) -> torch.Tensor:
        return cg_damped_step(self, r, lam, free, deadline)


def cg_damped_step(
    op: MatrixFreeOperator,
    r: torch.Tensor,
    lam: torch.Tensor,
    free: torch.Tensor | None = None,
    deadline: float | None = None,
    max_iter: int = CG_MAX_ITER,
    tol: float = CG_TOLERANCE,
) -> torch.Tensor:
    """The damped step of :func:`damped_step`, by conjugate gradients on products.

    ``(D Jᵀ J D + μ I) dx = -D Jᵀ r`` (CGLS; ``D`` the diagonal of ``free``), whatever the
    shape: started from zero its iterates stay in the row space, so the converged step is the
    minimum-norm one of the m-space form, and every iterate lowers the damped linear model
    ``|r + J dx|² + μ|dx|²``, so a solve cut short is still a descent step. (CG on the m-space
    form ``(J Jᵀ + μ I) y = -r`` is not: cut at 40 iterations it can make ``|r + J dx|`` 30×
    worse.) μ is λ times the mean of diag(J Jᵀ) for m ≤ n, of diag(Jᵀ J) otherwise, as in the
    dense step. Each sample's CG stops when its residual is below ``tol`` times its right side,
    or after ``max_iter`` iterations (one J·v and one Jᵀ·u each).
    """
    mask = None if free is None else free.to(r.dtype)

    def masked(v: torch.Tensor) -> torch.Tensor:
        return v if mask is None else v * mask

    m, n = op.m, op.n
    frob = op.norm2()  # (of the unmasked Jacobian: it only sets the damping's scale)
    mu = lam * (frob / min(m, n)).clamp_min(1e-300)

    def apply(v):
        return masked(op.rmatvec(op.matvec(masked(v)))) + mu[:, None] * v

    return _cg(apply, -masked(op.rmatvec(r)), max_iter, tol, deadline)


def _cg(apply, b: torch.Tensor, max_iter: int, tol: float, deadline: float | None):
    """Batched conjugate gradients for ``apply(x) = b`` (each row symmetric positive definite)."""
    x = torch.zeros_like(b)
    res = b.clone()
    p = res.clone()
    rs = (res * res).sum(1)
    goal = (tol * tol) * rs
    active = rs > goal
    for _ in range(max_iter):
        if not active.any():
            break
        _check(deadline)
        ap = apply(p)
        pap = (p * ap).sum(1)
        alpha = torch.where(active & (pap > 0), rs / pap.clamp_min(1e-300), torch.zeros_like(rs))
        x = x + alpha[:, None] * p
        res = res - alpha[:, None] * ap
        rs_new = (res * res).sum(1)
        active = active & (pap > 0) & (rs_new > goal)
        beta = torch.where(active, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = res + beta[:, None] * p
        rs = torch.where(active, rs_new, rs)
    return x
