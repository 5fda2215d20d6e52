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

Two forms of the linear model (:mod:`.operators`): dense Jacobians, one backward pass per
residual, and a direct solve; or, matrix-free, Jacobian–vector and vector–Jacobian products at
the current point and conjugate gradients on the same damped system, when the dense Jacobian
would not fit the memory budget or has many rows (:func:`matrix_free_for`). The matrix-free
form holds a few copies of the model's activations per sample instead of m·n numbers.

With dense Jacobians on a model whose forward pass outweighs a step's linear algebra
(:func:`chord_steps`), each iteration also takes up to :data:`CHORD_STEPS` further steps from its
trial point with the same Jacobian, corrected after every move by Broyden's rank-one update (a
Shamanskii-like LM iteration), and keeps the point of lowest residual norm along the chain (the
chain goes on from a worse point too: the updated Jacobian often turns it). A step costs one
forward pass where a Jacobian costs one backward pass per residual; on curved problems (a ViT's
class targets, where the linear model holds for steps far shorter than the way to the target)
one Jacobian then carries the point several steps.

Samples that stall (λ blown up, or the iteration cap reached without converging) restart from a
fresh random point; the best point of all attempts is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ...errors import DeadlineReached, MemoryBudgetError
from ...settings import JACOBIAN_MODES
from ..residual import Residual
from .operators import CG_MAX_ITER, GRAM_BLOCK, DenseOperator, damped_step

__all__ = [
    "GRAM_BLOCK",
    "LMOutcome",
    "LMSettings",
    "box_step",
    "chord_steps",
    "damped_step",
    "levenberg_marquardt",
    "matrix_free_for",
    "per_sample_bytes",
    "slice_size",
]

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
        jacobian: ``"auto"``, ``"dense"`` or ``"matrix-free"`` (see :func:`matrix_free_for`).
        restart_deadline: ``time.monotonic()`` value after which no restart begins.
    """

    tol: float
    error: Callable[[torch.Tensor], torch.Tensor] | None = None
    max_iter: int = 30
    restarts: int = 3
    lam0: float = 1e-3
    deadline: float | None = None
    max_memory: int | None = None
    jacobian: str = "auto"
    restart_deadline: float | None = None


@dataclass
class LMOutcome:
    """Per-sample results: best point, its error, iterations used, whether solved; and
    whether the steps came from products (matrix-free) instead of Jacobians."""

    x: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    timed_out: bool = False
    matrix_free: bool = False


#: Rounds of :func:`box_step`: each stops the coordinates the step pushes past a bound.
BOX_ROUNDS = 5
#: Steps per iteration after the first with the same, Broyden-updated, dense Jacobian (0: off).
CHORD_STEPS = 5
#: ... taken where the model's forward pass saves at least this many times the bytes of one
#: sample's Jacobian (:func:`chord_steps`).
CHORD_MIN_RATIO = 2
#: ... when each round is a CG solve of its own (matrix-free): the first solve's step is kept
#: for the coordinates that stay inside, one more moves the rest.
MATRIX_FREE_BOX_ROUNDS = 2


def box_step(
    jac,
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

    The free coordinates' step is the operator's damped step; coordinates it carries past a
    bound stop on the bound (a partial move, ``bound − x``), leave the free set, and the
    remaining free coordinates solve the damped system again for the residual the linear model
    predicts after the stopped moves, ``r + J·dx_stopped``. After ``rounds`` rounds whatever
    still crosses a bound is left to the caller's projection.

    Args:
        jac: (B, m, n) Jacobians, or an operator (:mod:`.operators`) standing for them.
        r, lam: as for :func:`damped_step`.
        free: (B, n) coordinates allowed to move (the active set already removed).
        x: (B, n) current points, inside the box.
        lo, hi: the box.
        deadline: as for :func:`damped_step`.
        rounds: at most this many solves per sample.
    """
    op = DenseOperator(jac) if isinstance(jac, torch.Tensor) else jac
    free = free.clone()
    dx = op.damped_step(r, lam, free, deadline)
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
        part = op.rows(todo)
        rt = r[todo] + part.matvec(stopped[todo])
        dx[todo] = stopped[todo] + part.damped_step(rt, lam[todo], free[todo], deadline)
    return dx


def per_sample_bytes(m: int, n: int) -> int:
    """Memory one sample's LM iteration may hold at once, in float64.

    Four Jacobian-sized arrays (the kept one, a fresh one being written, the active rows'
    copy, and the masked copy under bounds), the m×m (or n×n) system, and vectors.
    """
    return 8 * (4 * m * n + min(m, n) ** 2 + 16 * (m + n))


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def slice_size(m: int, n: int, max_memory: int | None, need: int | None = None) -> int | None:
    """How many samples one LM slice may hold under ``max_memory`` (None: no limit).

    ``need`` is one sample's bytes (default: :func:`per_sample_bytes`, the dense Jacobian's).

    Raises:
        MemoryBudgetError: not even one sample fits.
    """
    if max_memory is None:
        return None
    need = per_sample_bytes(m, n) if need is None else need
    if need > max_memory:
        raise MemoryBudgetError(
            f"one sample's Jacobian ({m} outputs x {n} inputs) needs {_size(need)}, "
            f"more than the --max-memory budget of {_size(max_memory)}"
        )
    return max(1, max_memory // need)


#: ``auto`` forms dense Jacobians for at most this many residuals, or this many entries: a dense
#: Jacobian costs one backward pass per residual, a matrix-free step about two products per CG
#: iteration, but on a small model the dense step is cheap whatever its rows, and exact.
DENSE_MAX_ROWS = 2 * CG_MAX_ITER
DENSE_MAX_ENTRIES = 2**22


def matrix_free_for(residual: Residual, mode: str, max_memory: int | None) -> bool:
    """Whether LM on ``residual`` computes its steps from products instead of Jacobians.

    ``mode`` ``"dense"``/``"matrix-free"`` forces one (matrix-free needs a residual with
    ``linearise``: autograd on a converted model); ``"auto"`` goes matrix-free when the dense
    Jacobian would not fit ``max_memory``, or has more than :data:`DENSE_MAX_ROWS` rows and
    :data:`DENSE_MAX_ENTRIES` entries.
    """
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"jacobian mode must be one of {JACOBIAN_MODES}, not {mode!r}")
    possible = hasattr(residual, "linearise")
    if mode != "auto":
        return mode == "matrix-free" and possible
    fits = max_memory is None or per_sample_bytes(residual.m, residual.n) <= max_memory
    large = residual.m > DENSE_MAX_ROWS and residual.m * residual.n > DENSE_MAX_ENTRIES
    return possible and (not fits or large)


def matrix_free_width(residual, max_memory: int | None) -> int | None:
    """Samples per matrix-free slice under ``max_memory``: each holds a few copies of the
    model's activations (``residual.linearisation_bytes()``) and some vectors.

    Raises:
        MemoryBudgetError: one sample's forward pass does not fit.
    """
    if max_memory is None:
        return None
    need = residual.linearisation_bytes() + 8 * 16 * (residual.m + residual.n)
    if need > max_memory:
        raise MemoryBudgetError(
            f"one sample's forward and backward pass needs {_size(need)}, more than the "
            f"--max-memory budget of {_size(max_memory)}"
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
    between iterations and inside Jacobian evaluations and CG iterations.

    Args:
        residual: the residual provider.
        x0: starting points, inside the bounds.
        settings: tolerances and caps.
        new_start: returns k fresh starting points (k, n) for restarts.
        lo, hi: box bounds, or None for unbounded.
        on_finish: called with the number of samples that just finished (for progress bars).
    """
    residual.deadline = settings.deadline
    free = matrix_free_for(residual, settings.jacobian, settings.max_memory)
    if free:
        width = matrix_free_width(residual, settings.max_memory) or len(x0)
    else:
        width = slice_size(residual.m, residual.n, settings.max_memory) or len(x0)
    store = _MatrixFree if free else _Dense
    firsts = range(0, len(x0), width)
    parts = []
    for j, i in enumerate(firsts):
        share = _share(settings, len(firsts) - j)
        parts.append(_solve(store(residual), x0[i : i + width], share, new_start, lo, hi,
                            on_finish, i))  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    return LMOutcome(
        torch.cat([p.x for p in parts]),
        torch.cat([p.residual for p in parts]),
        torch.cat([p.iterations for p in parts]),
        torch.cat([p.converged for p in parts]),
        any(p.timed_out for p in parts),
        parts[0].matrix_free,
    )


def _share(settings: LMSettings, left: int) -> LMSettings:
    """A slice's settings when ``left`` slices (this one included) remain: no restart begins
    after an equal share of the time left, so that a first slice restarting until the deadline
    does not leave the others without a single iteration; an attempt under way goes on to the
    deadline (cutting it at the share cost MobileNetV3 every sample when one needed just more
    than its share)."""
    if settings.deadline is None or left <= 1:
        return settings
    now = time.monotonic()
    return replace(settings, restart_deadline=now + max(0.0, settings.deadline - now) / left)


def chord_steps(residual: Residual) -> int:
    """Chord steps per dense LM iteration on ``residual``: :data:`CHORD_STEPS` where they pay.

    A chord step costs one forward pass and one box step (linear algebra on the m×n Jacobian);
    the Jacobian it saves costs m backward passes. On a small model (an MLP) the box step costs
    as much as the Jacobian, and the chord steps would only slow each iteration down, so they are
    taken where the model's forward pass saves (``linearisation_bytes``: three copies of what
    autograd keeps) at least :data:`CHORD_MIN_RATIO` times a Jacobian's bytes, and always with
    finite differences (2n model runs per Jacobian). Deterministic: no timings.
    """
    size = getattr(residual, "linearisation_bytes", None)
    if size is None:
        return CHORD_STEPS
    return CHORD_STEPS if size() >= CHORD_MIN_RATIO * 8 * residual.m * residual.n else 0


class _Dense:
    """Linear models as (B, m, n) Jacobians, refreshed where the points move."""

    matrix_free = False

    def __init__(self, residual: Residual):
        self.residual = residual
        self.jac: torch.Tensor | None = None
        self.chord = chord_steps(residual)

    def start(self, x, index) -> torch.Tensor:
        r, self.jac = self.residual.value_and_jacobian(x, index)
        return r

    def refresh(self, rows, x, index, r_known=None) -> torch.Tensor:
        r, self.jac[rows] = self.residual.value_and_jacobian(x, index)
        return r

    def operator(self, rows, x, index):
        return DenseOperator(self.jac[rows])


class _MatrixFree:
    """Linear models as products at the current points: linearised when a step is taken."""

    matrix_free = True
    chord = 0  # (a chord step would be a CG solve: as dear as the step itself)

    def __init__(self, residual: Residual):
        self.residual = residual

    def start(self, x, index) -> torch.Tensor:
        return self.residual.value(x, index)

    def refresh(self, rows, x, index, r_known=None) -> torch.Tensor:
        return self.residual.value(x, index) if r_known is None else r_known

    def operator(self, rows, x, index):
        return self.residual.linearise(x, index)


def _solve(model, x0, settings, new_start, lo, hi, on_finish, offset) -> LMOutcome:
    """LM on one slice; rows are samples ``offset ...`` of the whole batch."""
    bounded = lo is not None
    x = x0.clone()
    b = x.shape[0]
    try:
        r = model.start(x, torch.arange(b) + offset)
    except DeadlineReached:
        inf = torch.full((b,), float("inf"), dtype=x.dtype)
        zeros = torch.zeros(b, dtype=torch.long)
        return LMOutcome(x, inf, zeros, torch.zeros(b, dtype=torch.bool), True, model.matrix_free)
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
        late = (
            settings.restart_deadline is not None and time.monotonic() > settings.restart_deadline
        )
        retry = failed & (attempts < settings.restarts) & (not late)
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
                r[idx] = model.refresh(idx, x[idx], idx + offset)
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
        xa, ra = x[active], r[active]
        try:
            op = model.operator(active, xa, active + offset)
            if bounded:
                g = op.rmatvec(ra)
                free = ~(((xa <= lo) & (g > 0)) | ((xa >= hi) & (g < 0)))
                rounds = MATRIX_FREE_BOX_ROUNDS if model.matrix_free else BOX_ROUNDS
                dx = box_step(op, ra, lam[active], free, xa, lo, hi, settings.deadline, rounds)
            else:
                dx = op.damped_step(ra, lam[active], None, settings.deadline)
        except DeadlineReached:
            timed_out = True
            break
        x_try = xa + dx
        if bounded:
            x_try = x_try.clamp(lo, hi)
        r_try = model.residual.value(x_try, active + offset)
        if model.chord:
            x_try, r_try = _chord(
                op, model.residual, active + offset, xa, ra, x_try, r_try, lam[active], lo, hi,
                settings, err_fn, model.chord,
            )  # fmt: skip
        del op  # (a matrix-free operator holds the batch's autograd graph)
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
                r[acc] = model.refresh(acc, x[acc], acc + offset, r_try[ok])
            except DeadlineReached:
                timed_out = True  # x moved without its residual: keep the best point instead
                x[acc] = best_x[acc]
                rmax[acc] = best_r[acc]
                break
            rmax[acc], cost[acc] = _finite(err_fn(r[acc])), _cost(r[acc])

    better = rmax < best_r
    best_x[better], best_r[better] = x[better], rmax[better]
    return LMOutcome(
        best_x, best_r, iterations, best_r <= settings.tol, timed_out, model.matrix_free
    )


def _chord(op, residual, index, x, r, y, ry, lam, lo, hi, settings, err_fn, steps):
    """Up to ``steps`` more damped steps from the trial points ``y`` (residuals ``ry``)
    of the points ``x`` (``r``), with ``op``'s Jacobians updated by Broyden's rank-one formula
    ``J += (Δr − J s) sᵀ / sᵀs`` after each move ``s``; a sample's chain stops once its residual
    is non-finite or within the tolerance. Returns the lowest-cost point of each chain and its
    residuals (the first trial point where no later one is lower).

    ``op`` is a :class:`DenseOperator` holding this iteration's own copy of the Jacobians (they
    are updated in place).
    """
    best_x, best_r, best_c = y.clone(), ry.clone(), _cost(ry)
    going = torch.isfinite(best_c) & (_finite(err_fn(ry)) > settings.tol)
    x, r, y, ry = x.clone(), r.clone(), y.clone(), ry.clone()
    jac = op.jac
    for _ in range(steps):
        rows = going.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        if settings.deadline is not None and time.monotonic() > settings.deadline:
            break
        part = DenseOperator(jac[rows])
        s = y[rows] - x[rows]
        u = ry[rows] - r[rows] - part.matvec(s)
        ss = (s * s).sum(1)
        ss = torch.where(ss > 0, ss, torch.ones_like(ss))
        part.jac += u.unsqueeze(-1) * (s / ss.unsqueeze(-1)).unsqueeze(1)
        jac[rows] = part.jac
        yr, rr = y[rows], ry[rows]
        try:
            if lo is not None:
                g = part.rmatvec(rr)
                free = ~(((yr <= lo) & (g > 0)) | ((yr >= hi) & (g < 0)))
                d = box_step(part, rr, lam[rows], free, yr, lo, hi, settings.deadline)
                y_new = (yr + d).clamp(lo, hi)
            else:
                y_new = yr + part.damped_step(rr, lam[rows], None, settings.deadline)
        except DeadlineReached:
            break
        r_new = residual.value(y_new, index[rows])
        c_new = _cost(r_new)
        x[rows], r[rows], y[rows], ry[rows] = yr, rr, y_new, r_new
        lower = c_new < best_c[rows]
        low = rows[lower]
        best_x[low], best_r[low], best_c[low] = y_new[lower], r_new[lower], c_new[lower]
        going[rows] = torch.isfinite(c_new) & (_finite(err_fn(r_new)) > settings.tol)
    return best_x, best_r


def _rmax(r: torch.Tensor) -> torch.Tensor:
    return r.abs().amax(1)


def _finite(v: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(v), v, torch.full_like(v, float("inf")))


def _cost(r: torch.Tensor) -> torch.Tensor:
    c = (r * r).sum(1)
    return torch.where(torch.isfinite(c), c, torch.full_like(c, float("inf")))
