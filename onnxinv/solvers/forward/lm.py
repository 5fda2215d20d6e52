"""Batched Levenberg–Marquardt root finding with box constraints (the forward pass).

Every sample in the batch is its own problem ``r(x) = 0`` with its own damping λ, accept/reject
decision and stopping test; they share only the Jacobian evaluations. Inversions are
underdetermined (m outputs, n ≥ m inputs), which MINPACK refuses, so the step is the
minimum-norm damped step ``dx = -Jᵀ (J Jᵀ + μ I)⁻¹ r`` (an m×m solve); when m > n the usual
``(JᵀJ + μ I) dx = -Jᵀ r`` is used. μ = λ · mean(diag(J Jᵀ)) keeps λ scale-free.

Bounds use a projected step with an active set: coordinates sitting on a bound whose steepest
descent direction points outward are frozen (their Jacobian columns removed) before the step is
computed. Coordinates the step would push past a bound then stop on it, and the step of the
others is solved again against the residual the linear model predicts after that partial move,
for a few rounds (:func:`box_step`): clamping an unconstrained step instead moves the free
coordinates as if the clamped ones had made their whole move, and from a random start the
first, long steps then land on a corner of the box. The trial point is projected onto the box
(round-off only). A step is accepted only when it lowers the residual norm, so the method is
monotone; the step is computed in the space of the coordinates that can actually move.

Samples that stall (λ blown up, or the iteration cap reached without converging) restart from a
fresh random point; the best point of all attempts is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import MemoryBudgetError
from ..residual import DeadlineReached, Residual

LAMBDA_MIN = 1e-12
LAMBDA_MAX = 1e10


@dataclass
class LMSettings:
    """Settings of :func:`levenberg_marquardt`.

    Attributes:
        tol: a sample is solved when ``error(r) ≤ tol``.
        error: per-sample error of residuals (B, m) -> (B,); default max |r|.
        max_iter: iterations per attempt.
        restarts: fresh random starts for a sample whose attempt failed.
        lam0: initial relative damping.
        deadline: ``time.monotonic()`` value after which the solver returns what it has.
        max_memory: bytes the Jacobians may take; larger batches are solved in slices.
    """

    tol: float
    error: Callable[[torch.Tensor], torch.Tensor] | None = None
    max_iter: int = 30
    restarts: int = 3
    lam0: float = 1e-3
    deadline: float | None = None
    max_memory: int | None = None


@dataclass
class LMOutcome:
    """Per-sample results: best point, its error, iterations used, whether solved."""

    x: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    timed_out: bool = False


#: Jacobian entries per Gram-matrix block: larger products are summed block by block, with
#: the deadline checked between blocks, so one step on a huge model can be interrupted.
GRAM_BLOCK = 2**25


def _gram(jac: torch.Tensor, deadline: float | None) -> torch.Tensor:
    """``jac @ jacᵀ`` (B, m, m), over column blocks when the product is large."""
    b, m, n = jac.shape
    if b * m * n <= GRAM_BLOCK:
        return jac @ jac.transpose(1, 2)
    width = max(1, GRAM_BLOCK // max(1, b * m))
    a = torch.zeros((b, m, m), dtype=jac.dtype, device=jac.device)
    for j in range(0, n, width):
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineReached
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
        scale = torch.diagonal(a, dim1=1, dim2=2).mean(1).clamp_min(1e-300)
        a = a + (lam * scale)[:, None, None] * torch.eye(m, dtype=jac.dtype, device=jac.device)
        y = torch.linalg.solve(a, r.unsqueeze(-1))
        return -(jac.transpose(1, 2) @ y).squeeze(-1)
    a = jac.transpose(1, 2) @ jac
    scale = torch.diagonal(a, dim1=1, dim2=2).mean(1).clamp_min(1e-300)
    a = a + (lam * scale)[:, None, None] * torch.eye(n, dtype=jac.dtype, device=jac.device)
    g = jac.transpose(1, 2) @ r.unsqueeze(-1)
    return -torch.linalg.solve(a, g).squeeze(-1)


#: Rounds of :func:`box_step`: each stops the coordinates the step pushes past a bound.
BOX_ROUNDS = 5


def box_step(
    jac: torch.Tensor,
    r: torch.Tensor,
    lam: torch.Tensor,
    free: torch.Tensor,
    x: torch.Tensor,
    lo: float,
    hi: float,
    deadline: float | None = None,
    rounds: int = BOX_ROUNDS,
) -> torch.Tensor:
    """The damped step under the box ``lo ≤ x + dx ≤ hi``, for each sample.

    The free coordinates' step is :func:`damped_step`; coordinates it carries past a bound stop
    on the bound (a partial move, ``bound − x``), leave the free set, and the remaining free
    coordinates solve the damped system again for the residual the linear model predicts after
    the stopped moves, ``r + J·dx_stopped``. After ``rounds`` rounds whatever still crosses a
    bound is left to the caller's projection.

    Args:
        jac, r, lam: as for :func:`damped_step`.
        free: (B, n) coordinates allowed to move (the active set already removed).
        x: (B, n) current points, inside the box.
        lo, hi: the box.
        deadline: as for :func:`damped_step`.
        rounds: at most this many solves per sample.
    """
    free = free.clone()
    dx = damped_step(jac, r, lam, free, deadline)
    stopped = torch.zeros_like(dx)
    todo = torch.arange(len(x))
    for _ in range(rounds - 1):
        x_new = x[todo] + dx[todo]
        out = free[todo] & ((x_new < lo) | (x_new > hi))
        crossing = out.any(1)
        if not crossing.any():
            break
        todo, out, x_new = todo[crossing], out[crossing], x_new[crossing]
        stopped[todo] = torch.where(out, x_new.clamp(lo, hi) - x[todo], stopped[todo])
        free[todo] = free[todo] & ~out
        jt = jac[todo]
        rt = r[todo] + (jt @ stopped[todo].unsqueeze(-1)).squeeze(-1)
        dx[todo] = stopped[todo] + damped_step(jt, rt, lam[todo], free[todo], deadline)
    return dx


def per_sample_bytes(m: int, n: int) -> int:
    """Memory one sample's LM iteration may hold at once, in float64.

    Four Jacobian-sized arrays (the kept one, a fresh one being written, the active rows'
    copy, and the masked copy under bounds), the m×m (or n×n) system, and vectors.
    """
    return 8 * (4 * m * n + min(m, n) ** 2 + 16 * (m + n))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def slice_size(m: int, n: int, max_memory: int | None) -> int | None:
    """How many samples one LM slice may hold under ``max_memory`` (None: no limit).

    Raises:
        MemoryBudgetError: not even one sample fits.
    """
    if max_memory is None:
        return None
    need = per_sample_bytes(m, n)
    if need > max_memory:
        raise MemoryBudgetError(
            f"one sample's Jacobian ({m} outputs x {n} inputs) needs {_size(need)}, "
            f"more than the --max-memory budget of {_size(max_memory)}"
        )
    return max(1, max_memory // need)


def levenberg_marquardt(
    residual: Residual,
    x0: torch.Tensor,
    settings: LMSettings,
    new_start: Callable[[int], torch.Tensor],
    lo: float | None = None,
    hi: float | None = None,
    on_finish: Callable[[int], None] | None = None,
) -> LMOutcome:
    """Solve ``residual(x) = 0`` for every row of ``x0`` (B, n).

    The batch is solved in slices that fit ``settings.max_memory``; the deadline is checked
    between iterations and inside Jacobian evaluations.

    Args:
        residual: the residual provider.
        x0: starting points, inside the bounds.
        settings: tolerances and caps.
        new_start: returns k fresh starting points (k, n) for restarts.
        lo, hi: box bounds, or None for unbounded.
        on_finish: called with the number of samples that just finished (for progress bars).
    """
    residual.deadline = settings.deadline
    width = slice_size(residual.m, residual.n, settings.max_memory) or len(x0)
    if len(x0) <= width:
        return _solve(residual, x0, settings, new_start, lo, hi, on_finish, 0)
    parts = [
        _solve(residual, x0[i : i + width], settings, new_start, lo, hi, on_finish, i)
        for i in range(0, len(x0), width)
    ]
    return LMOutcome(
        torch.cat([p.x for p in parts]),
        torch.cat([p.residual for p in parts]),
        torch.cat([p.iterations for p in parts]),
        torch.cat([p.converged for p in parts]),
        any(p.timed_out for p in parts),
    )


def _solve(residual, x0, settings, new_start, lo, hi, on_finish, offset) -> LMOutcome:
    """LM on one slice; rows are samples ``offset ...`` of the whole batch."""
    bounded = lo is not None
    x = x0.clone()
    b = x.shape[0]
    try:
        r, jac = residual.value_and_jacobian(x, torch.arange(b) + offset)
    except DeadlineReached:
        inf = torch.full((b,), float("inf"), dtype=x.dtype)
        zeros = torch.zeros(b, dtype=torch.long)
        return LMOutcome(x, inf, zeros, torch.zeros(b, dtype=torch.bool), True)
    err_fn = settings.error or _rmax
    rmax = _finite(err_fn(r))
    cost = _cost(r)
    lam = torch.full((b,), settings.lam0, dtype=x.dtype)
    it_attempt = torch.zeros(b, dtype=torch.long)
    iterations = torch.zeros(b, dtype=torch.long)
    attempts = torch.zeros(b, dtype=torch.long)
    best_x, best_r = x.clone(), rmax.clone()
    finished = torch.zeros(b, dtype=torch.bool)
    timed_out = False

    while not timed_out:
        solved = rmax <= settings.tol
        better = rmax < best_r
        best_x[better], best_r[better] = x[better], rmax[better]
        failed = ~solved & ((it_attempt >= settings.max_iter) | (lam >= LAMBDA_MAX))
        retry = failed & (attempts < settings.restarts)
        gave_up = failed & ~retry
        newly = (solved | gave_up) & ~finished
        if newly.any():
            finished |= newly
            if on_finish is not None:
                on_finish(int(newly.sum()))
        if retry.any():
            idx = retry.nonzero().squeeze(1)
            attempts[idx] += 1
            it_attempt[idx] = 0
            lam[idx] = settings.lam0
            x[idx] = new_start(len(idx)).to(x.dtype)
            try:
                r[idx], jac[idx] = residual.value_and_jacobian(x[idx], idx + offset)
            except DeadlineReached:
                timed_out = True  # the fresh starts have no residual: keep the best points
                x[idx], rmax[idx] = best_x[idx], best_r[idx]
                break
            rmax[idx], cost[idx] = _finite(err_fn(r[idx])), _cost(r[idx])
            continue
        active = (~finished).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        if settings.deadline is not None and time.monotonic() > settings.deadline:
            timed_out = True
            break
        xa, ra, ja = x[active], r[active], jac[active]
        free = None
        if bounded:
            g = (ja.transpose(1, 2) @ ra.unsqueeze(-1)).squeeze(-1)
            free = ~(((xa <= lo) & (g > 0)) | ((xa >= hi) & (g < 0)))
        try:
            if bounded:
                dx = box_step(ja, ra, lam[active], free, xa, lo, hi, settings.deadline)
            else:
                dx = damped_step(ja, ra, lam[active], free, settings.deadline)
        except DeadlineReached:
            timed_out = True
            break
        x_try = xa + dx
        if bounded:
            x_try = x_try.clamp(lo, hi)
        r_try = residual.value(x_try, active + offset)
        cost_try = _cost(r_try)
        ok = torch.isfinite(cost_try) & (cost_try < cost[active])
        it_attempt[active] += 1
        iterations[active] += 1
        acc, rej = active[ok], active[~ok]
        lam[rej] = lam[rej] * 4.0
        if acc.numel():
            lam[acc] = (lam[acc] / 3.0).clamp_min(LAMBDA_MIN)
            x[acc] = x_try[ok]
            try:
                r[acc], jac[acc] = residual.value_and_jacobian(x[acc], acc + offset)
            except DeadlineReached:
                timed_out = True  # x moved without its residual: keep the best point instead
                x[acc] = best_x[acc]
                rmax[acc] = best_r[acc]
                break
            rmax[acc], cost[acc] = _finite(err_fn(r[acc])), _cost(r[acc])

    better = rmax < best_r
    best_x[better], best_r[better] = x[better], rmax[better]
    return LMOutcome(best_x, best_r, iterations, best_r <= settings.tol, timed_out)


def _rmax(r: torch.Tensor) -> torch.Tensor:
    return r.abs().amax(1)


def _finite(v: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(v), v, torch.full_like(v, float("inf")))


def _cost(r: torch.Tensor) -> torch.Tensor:
    c = (r * r).sum(1)
    return torch.where(torch.isfinite(c), c, torch.full_like(c, float("inf")))
