"""The backward pass on an invertible chain: every free choice made jointly, for the whole batch.

A chain is the graph's first block when it holds only dense affine maps (Gemm, MatMul, Add,
BatchNormalization, reshapes...), smooth elementwise activations (SELU, LeakyReLU, Tanh,
Sigmoid, ...), and, at the very top, rules such as Softmax whose preimage of a point is an affine
family ``{v0 + V u}`` (``log p + c·1``). Consecutive affine steps are composed into one matrix
once per run and shared by every sample.

Greedy collapsing chooses one layer's free coefficients at a time, without knowing whether the
layers below can still produce the value, and fails inside a box. Here all of them (the Softmax
constant and every layer's null-space coefficients) are chosen together, in the coordinates
where the constraints are simplest: a point ``x`` of the input box determines every
intermediate value (each automatically inside the next inverse's domain) and the top value; what
remains is the top value's distance from the requested family, ``r(x) = Qᵀ(z(x) − v0)`` with
``Q`` spanning the directions the family does not leave free. It is driven to zero by a batched
interior Newton iteration:

* the chain's Jacobian ``J = M_L D_{L−1} M_{L−1} ⋯ D_1 M_1`` is built by one backward sweep of
  matrix products over the batch (``D`` are the activations' slopes), with only as many rows
  as the top has equations;
* the step is the minimum-norm solution of ``Qᵀ J dx = −r`` in the metric of the box (affine
  scaling: a coordinate close to a bound moves little), ``dx = −W Jᵀ(J W Jᵀ + μI)⁻¹ r``, then
  cut to stay strictly inside the box and halved until ``|r|`` decreases;
* each sample starts from its own anchor (a uniform random point of the box; without bounds
  the particular solution plus a random vector of relative size ``--std``), so samples differ
  and the steps only move them as far as the target requires.

Newton converges quadratically, so a sample is accepted when ``|r|`` is at round-off level
(``EXACT``): the request is met exactly, not to a tolerance. There is no per-sample Python
loop: every operation is a matrix product or a batched solve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..rules.base import AffineRule, Family, InverseRule
from ..rules.linalg import DENSE_LIMIT

EXACT = 1e-10  # |r| relative to the top value's scale at which a sample is exact
MAX_ITER = 100  # Newton iterations per attempt
BOUNDARY = 0.995  # fraction of the distance to the box boundary a step may take
SLOPE_STEP = 1e-6  # relative step of the activations' central-difference slopes
STALL = 8  # iterations over which |r| must fall by STALL_FACTOR
STALL_FACTOR = 0.9
HALVINGS = 30  # step halvings per iteration


def _reshape(rule) -> bool:
    """Whether an affine rule only rearranges values (its matrix is a permutation)."""
    if not isinstance(rule, AffineRule) or rule.ctx.input_size != rule.ctx.output_size:
        return False
    if rule.ctx.input_size > 4096:
        return False
    mc = rule.dense()
    return mc is not None and not mc[1].any() and ((mc[0] == 0) | (mc[0] == 1)).all()


@dataclass
class _Affine:
    """Composed affine steps ``z = M h + c`` on flat values."""

    M: np.ndarray
    c: np.ndarray


@dataclass
class _Activation:
    rule: InverseRule


def chain_of(block) -> tuple[list, list] | None:
    """The block's steps as ([affine or activation ops from the input up], [top rules]).

    None when a step is neither a dense affine map nor a smooth elementwise activation (below
    the block's top-only rules), or a matrix would be too large to hold densely.
    """
    steps = list(block.steps)
    top = []
    # Top-only rules (Softmax), and the shape-only steps after them (a final Identity).
    last = max((i for i, s in enumerate(steps) if s.rule.top_only), default=None)
    if last is not None and all(_reshape(s.rule) for s in steps[last + 1 :]):
        top = steps[last:]
        steps = steps[:last]
        while steps and steps[-1].rule.top_only:
            top.insert(0, steps.pop())
    if not steps:
        return None
    ops: list = []
    pending: list = []  # consecutive affine steps, composed when the run ends

    def close() -> bool:
        M = c = None
        for step in pending:
            if step.rule.ctx.input_size * step.rule.ctx.output_size > DENSE_LIMIT:
                return False
            mc = step.rule.dense()
            if mc is None:
                return False
            M, c = mc if M is None else (mc[0] @ M, mc[0] @ c + mc[1])
        if M is not None:
            ops.append(_Affine(np.ascontiguousarray(M), c))
        pending.clear()
        return True

    for step in steps:
        if isinstance(step.rule, AffineRule):
            pending.append(step)
            continue
        if not close() or step.rule.smooth_inverse() is None:
            return None
        ops.append(_Activation(step.rule))
    if not close():
        return None
    return ops, top


class ChainSolver:
    """Joint choice of every free coefficient of a chain (see the module docstring)."""

    def __init__(
        self, ops: list, top: list, n: int, bounds, settings, deadline=None, check=None, tol=0.0
    ):
        self.ops, self.top, self.n = ops, top, n
        self.bounds, self.settings, self.deadline = bounds, settings, deadline
        # check(z) -> per-sample error of top values in the user's check space, and the level
        # (half the tolerance) at which a sample is accepted before round-off exactness.
        self.check, self.tol = check, tol
        # For a Softmax top: log-probabilities below this are raised to it (the distribution
        # moves by far less than the tolerance, and the path avoids chasing p = 1e-19 exactly).
        self.floor: float | None = None
        self._particular: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Top values (B, m) and the activations' slopes at ``x`` (B, n), from the input up."""
        h, slopes = x, []
        for op in self.ops:
            if isinstance(op, _Affine):
                h = h @ op.M.T + op.c
                continue
            e = SLOPE_STEP * (1.0 + np.abs(h))
            with np.errstate(all="ignore"):
                up, down = op.rule.forward(h + e), op.rule.forward(h - e)
                slopes.append((up - down) / (2 * e))
                h = op.rule.forward(h)
        return h, slopes

    def jacobian(self, slopes: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``rows @ dz/dx`` (B, k, n) by one backward sweep; ``rows`` (k, m) acts on the top."""
        g = np.broadcast_to(rows, (len(slopes[0]) if slopes else 1, *rows.shape))
        d = len(slopes)
        for op in reversed(self.ops):
            if isinstance(op, _Affine):
                g = g @ op.M
            else:
                d -= 1
                g = g * slopes[d][:, None, :]
        return np.asarray(g)

    def top_family(self, fam: Family, rng, std: float) -> Family:
        """The request pulled through the top-only rules (Softmax: ``log p + c·1``)."""
        for step in reversed(self.top):
            if isinstance(step.rule, AffineRule):
                fam = step.rule.pullback(fam, self.settings.max_condition)
                continue
            if fam.free:
                raise ValueError("a top rule received a family, not a point")
            fam = step.rule.sample_preimage(fam.v0, rng, std)
        return fam

    # -- the batch ---------------------------------------------------------------------------
    def solve(self, fam: Family, rng) -> tuple[np.ndarray, np.ndarray]:
        """One input per row of ``fam`` (the request at the chain's top): (x, exact flags)."""
        s = self.settings
        fam = self.top_family(fam, rng, s.std)
        if self.floor is not None:
            fam = Family(np.maximum(fam.v0, self.floor), fam.V, fam.residual)
        if self.bounds is None and self._particular is None:
            # The particular solution: Newton from the zero input (minimum-norm steps).
            x0, ok0 = self._attempt(Family(fam.v0[:1], fam.V), np.zeros((1, self.n)))
            if ok0[0]:
                self._particular = x0[0]
        b = len(fam.v0)
        x = np.empty((b, self.n))
        done = np.zeros(b, dtype=bool)
        first = True
        for _ in range(1 + s.restarts):
            todo = np.flatnonzero(~done)
            if todo.size == 0 or self._expired():
                break
            xt, ok = self._attempt(Family(fam.v0[todo], fam.V), self._anchors(len(todo), rng))
            keep = ok | first
            x[todo[keep]] = xt[keep]
            done[todo] |= ok
            first = False
        return x, done

    def _anchors(self, k: int, rng) -> np.ndarray:
        if self.bounds is not None:
            return rng.uniform(self.bounds[0], self.bounds[1], size=(k, self.n))
        if self._particular is None:
            return rng.normal(0.0, self.settings.init_std, size=(k, self.n))
        p = self._particular
        g = rng.standard_normal((k, self.n))
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
        top = float(np.abs(p).max())
        size = top * float(np.linalg.norm(p / top)) if top > 0 else 0.0  # no overflow
        return p + self.settings.std * max(size, 1e-12) * g

    def _attempt(self, fam: Family, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interior Newton from ``x`` towards the family; (x, exact flags)."""
        m = fam.v0.shape[1]
        V = fam.V
        Q = _complement(V, m)  # (m, q): the equations the family fixes
        x = x.copy()
        z, slopes = self.forward(x)
        r = (z - fam.v0) @ Q
        scale = 1.0 + np.abs(fam.v0).max(1)  # |r| is measured relative to it (no overflow)
        norm = np.linalg.norm(r / scale[:, None], axis=1)
        exact = self._accepted(norm, z)
        lo, hi = self.bounds if self.bounds is not None else (None, None)
        alive = np.isfinite(norm)
        history = [norm.copy()]
        for it in range(MAX_ITER):
            idx = np.flatnonzero(~exact & alive)
            if idx.size == 0 or self._expired():
                break
            xa = x[idx]
            J = self.jacobian([s_[idx] for s_ in slopes], Q.T)  # (k, q, n)
            w = np.ones_like(xa) if lo is None else np.minimum(xa - lo, hi - xa) ** 2
            Jw = J * w[:, None, :]
            A = Jw @ J.transpose(0, 2, 1)
            mu = 1e-14 * np.trace(A, axis1=1, axis2=2)[:, None, None] + 1e-300
            A = A + mu * np.eye(Q.shape[1])
            y = np.linalg.solve(A, -r[idx][:, :, None])
            dx = (Jw.transpose(0, 2, 1) @ y)[:, :, 0]
            alpha = np.ones(len(idx))
            if lo is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    room = np.where(
                        dx < 0, (xa - lo) / -dx, np.where(dx > 0, (hi - xa) / dx, np.inf)
                    )
                alpha = np.minimum(1.0, BOUNDARY * room.min(1))
            better = np.zeros(len(idx), dtype=bool)
            for _half in range(HALVINGS):  # halve each sample's step until |r| decreases
                trial = xa + alpha[:, None] * dx
                zt, st = self.forward(trial)
                rt = (zt - fam.v0[idx]) @ Q
                nt = np.linalg.norm(rt / scale[idx, None], axis=1)
                now = ~better & (nt < norm[idx])
                if now.any():
                    rows = idx[now]
                    x[rows], z[rows], r[rows], norm[rows] = trial[now], zt[now], rt[now], nt[now]
                    for level, s_ in enumerate(st):
                        slopes[level][rows] = s_[now]
                    better |= now
                if better.all():
                    break
                alpha = np.where(better, alpha, alpha / 2)
            exact |= self._accepted(norm, z)
            alive[idx[~better]] = False  # no step of any length helped: a dead end
            history.append(norm.copy())
            if it >= STALL:
                # Newton converges fast; |r| barely falling over STALL steps is a stall (a
                # target outside what the box reaches, or a dead end): give up; a restart may
                # help.
                alive &= norm < STALL_FACTOR * history[-1 - STALL]
        return x, exact

    def _accepted(self, norm: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Exact at round-off, or within half the tolerance of the user's check."""
        ok = norm <= EXACT
        if self.check is not None:
            with np.errstate(all="ignore"):
                ok |= self.check(z) <= self.tol
        return ok

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _complement(V: np.ndarray, m: int) -> np.ndarray:
    """Orthonormal columns spanning the complement of ``V``'s columns in R^m."""
    if V.shape[1] == 0:
        return np.eye(m)
    q, _ = np.linalg.qr(np.concatenate([V, np.eye(m)], axis=1))
    return q[:, V.shape[1] : m]
