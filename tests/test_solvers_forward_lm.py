"""Levenberg–Marquardt (``onnxinv.solvers.forward.lm``) on analytic residuals, and the block solvers.

The unit tests use residuals whose roots are known in closed form: linear maps (square, wide and
tall), Rosenbrock's root problem, roots on the boundary of a box and a box that holds no root, a
cubic whose start stalls in a local minimum until a restart, and per-sample targets that tell
whether memory slices keep each sample's own row. :func:`damped_step` is checked against the
pseudo-inverse and least-squares solutions it approaches as the damping vanishes.

The shared suites (:mod:`solver_suites`) then run on every solver that solves any problem (not
only a whole model), over a plain :class:`Problem` whose residual is written by hand
(:class:`solver_suites.ModuleResidual`); onnxruntime on the original model still judges.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers import MODELS, assert_solved
from solver_suites import GD_FAILURES, AllSuites, case

from onnxinv import invert
from onnxinv.errors import MemoryBudgetError
from onnxinv.settings import Settings
from onnxinv.solvers.base import Problem
from onnxinv.solvers.forward import lm, operators
from onnxinv.solvers.forward.lm import (
    LMSettings,
    damped_step,
    levenberg_marquardt,
    per_sample_bytes,
    slice_size,
)
from onnxinv.solvers.forward.solver import ForwardSolver
from onnxinv.solvers.registry import default_solvers
from onnxinv.solvers.residual import DeadlineReached

SOLVERS = default_solvers()


class Analytic:
    """A residual from ``f(x, index) -> r`` and ``jac(x, index) -> J`` (torch, float64).

    Records every call; raises :class:`DeadlineReached` past its deadline when ``strict``.
    """

    jacobian_source = "analytic"

    def __init__(self, f, jac, n, m, strict=True):
        self.f, self.jac, self.n, self.m, self.strict = f, jac, n, m, strict
        self.deadline = None
        self.values = 0
        self.jacobians = 0
        self.indices: list[int] = []

    def value(self, x, index=None):
        self.values += 1
        return self.f(x, index)

    def value_and_jacobian(self, x, index=None):
        if self.strict and self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineReached
        self.jacobians += 1
        if index is not None:
            self.indices += [int(i) for i in index]
        return self.f(x, index), self.jac(x, index)

    def value_and_gradient(self, x, loss):
        r, jac = self.value_and_jacobian(x)
        rr = r.clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss(rr).sum(), rr)
        return r, torch.einsum("bm,bmn->bn", g, jac)


def linear(A: np.ndarray, b: np.ndarray) -> Analytic:
    """``r(x) = A x − b[index]`` for per-sample targets ``b`` (B, m)."""
    At, bt = torch.from_numpy(A), torch.from_numpy(b)

    def f(x, index):
        rows = bt if index is None else bt[index]
        return x @ At.T - rows[: len(x)]

    def jac(x, index):
        return At.expand(len(x), *At.shape).clone()

    return Analytic(f, jac, A.shape[1], A.shape[0])


def normal_starts(n: int, seed: int = 0, std: float = 1.0):
    rng = np.random.default_rng(seed)
    return lambda k: torch.from_numpy(rng.normal(0, std, (k, n)))


def constant_starts(value):
    calls = []

    def draw(k):
        calls.append(k)
        return torch.tensor(value, dtype=torch.float64).repeat(k, 1)

    draw.calls = calls
    return draw


# ------------------------------------------------------------------------------- linear maps


@pytest.mark.parametrize("m,n", [(3, 3), (2, 5), (6, 3)], ids=["square", "wide", "tall"])
def test_linear_maps_reach_their_known_solution(m, n):
    rng = np.random.default_rng(m * 10 + n)
    A = rng.normal(size=(m, n))
    x_true = rng.normal(size=(5, n))
    b = x_true @ A.T  # consistent, tall systems included
    res = linear(A, b)
    x0 = normal_starts(n, seed=1)(5)
    out = levenberg_marquardt(res, x0.clone(), LMSettings(tol=1e-10, max_iter=50), normal_starts(n))
    assert out.converged.all() and not out.timed_out
    x = out.x.numpy()
    assert np.abs(x @ A.T - b).max() <= 1e-10
    assert (out.residual.numpy() <= 1e-10).all()
    assert (out.iterations.numpy() >= 1).all()
    if m >= n:  # one solution: the known one
        np.testing.assert_allclose(x, x_true, atol=1e-8)
    else:
        # Minimum-norm steps move only in A's row space: the solution is the projection of the
        # start onto {A x = b}, so the null-space part of the start is kept, and samples differ.
        null = np.linalg.svd(A)[2][m:].T
        np.testing.assert_allclose((x - x0.numpy()) @ null, 0, atol=1e-9)
        assert np.abs(x[:, None] - x[None]).max(-1)[np.triu_indices(5, 1)].min() > 1e-2


def test_rosenbrock_root():
    def f(x, index):
        return torch.stack([10 * (x[:, 1] - x[:, 0] ** 2), 1 - x[:, 0]], 1)

    def jac(x, index):
        j = torch.zeros(len(x), 2, 2, dtype=x.dtype)
        j[:, 0, 0], j[:, 0, 1], j[:, 1, 0] = -20 * x[:, 0], 10.0, -1.0
        return j

    x0 = torch.tensor([[-1.2, 1.0], [2.0, -1.0], [0.0, 3.0]], dtype=torch.float64)
    out = levenberg_marquardt(
        Analytic(f, jac, 2, 2),
        x0,
        LMSettings(tol=1e-12, max_iter=100, restarts=0),
        normal_starts(2),
    )
    assert out.converged.all()
    np.testing.assert_allclose(out.x.numpy(), 1.0, atol=1e-10)
    assert (out.iterations.numpy() > 1).all()  # not a one-step problem


# ------------------------------------------------------------------------------------ bounds


def test_root_on_the_corner_of_the_box():
    """``x1 + x2 = 2`` in [0, 1]²: the only feasible root is the corner (1, 1)."""
    A = np.array([[1.0, 1.0]])
    res = linear(A, np.full((4, 1), 2.0))
    x0 = torch.tensor([[0.2, 0.9], [0.0, 0.0], [0.5, 0.5], [1.0, 0.1]], dtype=torch.float64)
    out = levenberg_marquardt(
        res, x0, LMSettings(tol=1e-10, max_iter=60, restarts=0), normal_starts(2), 0.0, 1.0
    )
    assert out.converged.all()
    x = out.x.numpy()
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x, 1.0, atol=1e-9)


def test_box_without_a_root_frozen_coordinates_still_let_the_others_move():
    """``x = (2, 0.5)`` lies outside [0, 1]²: x1 stops on its bound while x2 is solved."""
    res = linear(np.eye(2), np.tile([2.0, 0.5], (3, 1)))
    x0 = torch.tensor([[0.1, 0.9], [0.9, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # The best point is kept by the error measure; with the default max |r| every point with
    # x1 = 1 ties at 1, so measure by the Euclidean norm, which LM's accepted steps decrease.
    settings = LMSettings(tol=1e-10, error=lambda r: r.norm(dim=1), max_iter=40, restarts=1)
    out = levenberg_marquardt(res, x0, settings, constant_starts([0.5, 0.5]), 0.0, 1.0)
    assert not out.converged.any()
    x = out.x.numpy()
    np.testing.assert_allclose(x[:, 0], 1.0, atol=0)  # exactly on the bound, never beyond
    np.testing.assert_allclose(x[:, 1], 0.5, atol=1e-8)
    np.testing.assert_allclose(out.residual.numpy(), 1.0, atol=1e-8)  # max |r| at the best point


def test_box_step_solves_the_linear_model_where_clamping_a_step_does_not():
    """A wide linear residual (3 equations, 40 unknowns), one step with almost no damping.

    The unconstrained minimum-norm step leaves [0, 1]^40; clamping it leaves a large linear
    residual, while :func:`lm.box_step` stops the crossing coordinates on their bounds and
    solves the rest again, so the step stays in the box and its linear model reaches zero.
    """
    rng = np.random.default_rng(2)
    A = torch.from_numpy(rng.normal(size=(3, 40)))
    x_root = torch.from_numpy(rng.uniform(0.0, 1.0, size=(6, 40)))
    x = torch.from_numpy(rng.uniform(0.0, 1.0, size=(6, 40)))
    jac = A.expand(6, 3, 40).clone()
    r = 2.5 * (x - x_root) @ A.T
    lam = torch.full((6,), 1e-9, dtype=torch.float64)
    free = torch.ones(6, 40, dtype=torch.bool)
    plain = x + damped_step(jac, r, lam)
    assert ((plain < 0) | (plain > 1)).any(1).all()  # the case this is about
    step = lm.box_step(jac, r, lam, free, x, 0.0, 1.0)
    assert free.all()  # the caller's mask is left alone
    assert ((x + step) >= -1e-12).all() and ((x + step) <= 1 + 1e-12).all()

    def linear_after(dx):
        return (r + (jac @ dx.unsqueeze(-1)).squeeze(-1)).norm(dim=1) / r.norm(dim=1)

    assert (linear_after(step) < 1e-6).all()  # the damping λ = 1e-9 leaves ~1e-9
    assert (linear_after(plain.clamp(0, 1) - x) > 1e-2).all()


FASHION_6LAYER = MODELS / "fashion_6layer.onnx"


@pytest.mark.skipif(not FASHION_6LAYER.exists(), reason="run python models/fashion.py")
def test_bounded_forward_pass_within_30_iterations_on_the_6layer_fashion_net():
    """The paper's budget (30 LM iterations, one attempt) in the pixel box on a deep SELU net.

    With the step clamped to the box afterwards, 2 of these 8 samples verified; stopping the
    crossing coordinates on their bounds and solving the rest again verifies all 8.
    """
    k = 4
    result = invert(
        FASHION_6LAYER, {"class": k, "confidence": 0.9}, bounds=(0, 1), samples=8, seed=0,
        method="forward", max_iter=30, restarts=0,
    )  # fmt: skip
    target = np.full(10, 0.1 / 9)
    target[k] = 0.9
    assert_solved(
        FASHION_6LAYER, result, target, "probabilities", tol=result.target.tolerance,
        bounds=(0, 1), n=8,
    )  # fmt: skip
    assert (result.iterations <= 30).all()


# ---------------------------------------------------------------------------------- restarts


def cubic() -> Analytic:
    """``r(x) = x³ − 3x + 3``: a local minimum of |r| at x = 1 (r = 1), one root near −2.10."""
    return Analytic(
        lambda x, i: x**3 - 3 * x + 3, lambda x, i: (3 * x**2 - 3).unsqueeze(-1), n=1, m=1
    )


CUBIC_ROOT = float(np.real(next(r for r in np.roots([1, 0, -3, 3]) if abs(r.imag) < 1e-12)))


def test_a_stalled_start_is_not_reported_solved():
    x0 = torch.full((2, 1), 1.5, dtype=torch.float64)
    out = levenberg_marquardt(
        cubic(), x0, LMSettings(tol=1e-10, max_iter=25, restarts=0), constant_starts([-2.5])
    )
    assert not out.converged.any()
    np.testing.assert_allclose(out.x.numpy(), 1.0, atol=1e-2)  # stuck in the local minimum
    assert (out.residual.numpy() > 0.99).all()


def test_restarts_rescue_a_stalled_start_and_keep_the_best_point():
    starts = constant_starts([-2.5])
    x0 = torch.full((2, 1), 1.5, dtype=torch.float64)
    out = levenberg_marquardt(cubic(), x0, LMSettings(tol=1e-10, max_iter=25, restarts=2), starts)
    assert out.converged.all()
    np.testing.assert_allclose(out.x.numpy(), CUBIC_ROOT, atol=1e-10)
    assert sum(starts.calls) == 2  # one restart per sample: the second attempt solved it
    assert (out.iterations.numpy() > 25).all()  # the stalled attempt's iterations count too


# ---------------------------------------------------------------------------------- deadline


@pytest.mark.parametrize("strict", [True, False], ids=["residual-checks", "loop-checks"])
def test_deadline_in_the_past_returns_the_starts_flagged(strict):
    res = linear(np.eye(3), np.ones((4, 3)))
    res.strict = strict
    x0 = normal_starts(3)(4)
    settings = LMSettings(tol=1e-10, max_iter=50, deadline=time.monotonic() - 1.0)
    out = levenberg_marquardt(res, x0.clone(), settings, normal_starts(3, seed=9))
    assert out.timed_out
    assert not out.converged.any()
    assert (out.iterations.numpy() == 0).all()
    np.testing.assert_array_equal(out.x.numpy(), x0.numpy())
    assert res.values == 0  # no trial step was evaluated
    if strict:  # the Jacobian evaluation itself refused: no residual at all
        assert np.isinf(out.residual.numpy()).all()
    else:  # the starts were evaluated, then the loop stopped
        np.testing.assert_allclose(out.residual.numpy(), np.abs(x0.numpy() - 1).max(1))


def test_memory_slices_share_the_time_left():
    """One sample per slice, no root (x² + 1 = 0) and endless restarts: a slice past its share
    of the time begins no restart, so the last sample is iterated too, not handed back
    untouched (before: the first slice restarted until the deadline)."""

    def f(x, index):
        time.sleep(0.002)  # (a model run's worth of time)
        return x * x + 1.0

    def jac(x, index):
        return torch.diag_embed(2 * x)

    res = Analytic(f, jac, 1, 1, strict=False)
    b = 3
    settings = LMSettings(tol=1e-10, max_iter=5, restarts=10**6,
                          deadline=time.monotonic() + 0.6,
                          max_memory=per_sample_bytes(1, 1))  # fmt: skip
    out = levenberg_marquardt(res, normal_starts(1)(b), settings, normal_starts(1, seed=4))
    assert out.timed_out
    assert (out.iterations.numpy() > 0).all(), out.iterations  # (none handed back untouched)
    assert np.isfinite(out.residual.numpy()).all()


# ------------------------------------------------------------------------------------ memory


def test_memory_slices_give_the_unsliced_result_with_each_samples_own_target():
    rng = np.random.default_rng(3)
    m, n, b = 3, 5, 7
    A = rng.normal(size=(m, n))
    targets = rng.normal(size=(b, m))  # per sample: a wrong offset solves another's target
    x0 = torch.from_numpy(rng.normal(size=(b, n)))
    finished = {"whole": [], "sliced": []}
    outs = {}
    for key, memory in (("whole", None), ("sliced", 2 * per_sample_bytes(m, n) + 1)):
        res = linear(A, targets)
        settings = LMSettings(tol=1e-12, max_iter=30, restarts=0, max_memory=memory)
        outs[key] = levenberg_marquardt(
            res, x0.clone(), settings, normal_starts(n), None, None, finished[key].append
        )
        assert sorted(set(res.indices)) == list(range(b))
    whole, sliced = outs["whole"], outs["sliced"]
    assert sum(finished["whole"]) == sum(finished["sliced"]) == b
    assert len(finished["sliced"]) >= 4  # 7 samples in slices of 2
    np.testing.assert_allclose(sliced.x.numpy(), whole.x.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(sliced.iterations.numpy(), whole.iterations.numpy())
    assert sliced.converged.all() and whole.converged.all()
    np.testing.assert_allclose(sliced.x.numpy() @ A.T, targets, atol=1e-11)


def test_slice_size():
    need = per_sample_bytes(4, 10)
    assert slice_size(4, 10, None) is None
    assert slice_size(4, 10, need) == 1
    assert slice_size(4, 10, 10 * need + need // 2) == 10
    with pytest.raises(MemoryBudgetError, match="4 outputs x 10 inputs"):
        slice_size(4, 10, need - 1)
    # More outputs or inputs never need less memory.
    assert per_sample_bytes(5, 10) > need and per_sample_bytes(4, 11) > need


def test_forward_solver_names_the_problem_when_one_sample_does_not_fit():
    res = linear(np.eye(3), np.ones((2, 3)))
    problem = Problem(
        Settings(samples=2),
        3,
        1e-8,
        lambda r: r.abs().amax(1),
        make_residual=lambda: res,
        max_memory=per_sample_bytes(3, 3) - 1,
        name="the block 'a' -> 'b'",
    )
    with pytest.raises(MemoryBudgetError, match="for LM on the block 'a' -> 'b'"):
        ForwardSolver(problem).solve(2, np.random.default_rng(0))


# ------------------------------------------------------------------------------ damped_step


def random_system(m, n, b=3, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(b, m, n))), torch.from_numpy(rng.normal(size=(b, m)))


@pytest.mark.parametrize("m,n", [(2, 5), (4, 4), (6, 3)])
def test_damped_step_tends_to_the_gauss_newton_step(m, n):
    jac, r = random_system(m, n)
    step = damped_step(jac, r, torch.full((3,), 1e-12)).numpy()
    # m <= n: the minimum-norm solution of J dx = -r; m > n: the least-squares one. Both are
    # -pinv(J) r.
    expected = -np.einsum("bnm,bm->bn", np.linalg.pinv(jac.numpy()), r.numpy())
    np.testing.assert_allclose(step, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("m,n", [(2, 5), (6, 3)])
def test_heavy_damping_steps_down_the_gradient(m, n):
    jac, r = random_system(m, n, seed=1)
    lam = torch.tensor([1e-3, 1.0, 1e8], dtype=torch.float64)
    step = damped_step(jac, r, lam)
    grad = torch.einsum("bmn,bm->bn", jac, r)
    # Every damped step is a descent direction of ‖r‖²...
    assert ((step * grad).sum(1) < 0).all()
    # ...and heavy damping turns it into steepest descent.
    cos = -(step[2] @ grad[2]) / (step[2].norm() * grad[2].norm())
    assert cos > 1 - 1e-6
    assert step[2].norm() < 1e-6 * step[0].norm()


@pytest.mark.parametrize("m,n", [(2, 5), (6, 4)])
def test_frozen_coordinates_do_not_move(m, n):
    jac, r = random_system(m, n, b=2, seed=2)
    free = torch.ones(2, n, dtype=torch.bool)
    free[0, [0, 2]] = False
    free[1, -1] = False
    lam = torch.full((2,), 1e-2, dtype=torch.float64)
    step = damped_step(jac, r, lam, free)
    assert (step[~free] == 0).all()
    # The moving coordinates take the step of the system without the frozen columns.
    for i in range(2):
        cols = free[i].nonzero().squeeze(1)
        # μ = λ · mean of the Gram diagonal; in the n×n form the frozen columns' zeros count
        # in that mean, so the reduced system gets the λ that gives the same μ.
        same_mu = lam[i : i + 1] * (len(cols) / n if m > n else 1.0)
        sub = damped_step(jac[i : i + 1, :, cols], r[i : i + 1], same_mu)
        torch.testing.assert_close(step[i, cols], sub[0], rtol=1e-10, atol=1e-12)


def test_blocked_gram_product_is_the_same_and_honours_the_deadline(monkeypatch):
    jac, r = random_system(3, 40, b=2, seed=4)
    lam = torch.full((2,), 1e-3, dtype=torch.float64)
    whole = damped_step(jac, r, lam)
    monkeypatch.setattr(operators, "GRAM_BLOCK", 16)  # 2 x 3 x 40 entries: blocks of 2 columns
    torch.testing.assert_close(damped_step(jac, r, lam), whole, rtol=1e-12, atol=1e-14)
    with pytest.raises(DeadlineReached):
        damped_step(jac, r, lam, deadline=time.monotonic() - 1)


# ------------------------------------------------------------------------------ ForwardSolver


def block(settings, residual, bounds=None):
    return Problem(
        settings,
        residual.n,
        1e-10,
        lambda r: r.abs().amax(1),
        make_residual=lambda: residual,
        bounds=bounds,
        name="a test block",
    )


def test_forward_chunks_give_the_same_samples_as_one_chunk():
    rng = np.random.default_rng(5)
    A = rng.normal(size=(2, 4))
    b = np.tile(rng.normal(size=2), (7, 1))
    outs = [
        ForwardSolver(block(Settings(chunk_size=c, restarts=0), linear(A, b))).solve(
            7, np.random.default_rng(0)
        )
        for c in (3, 256)
    ]
    np.testing.assert_allclose(outs[0].x, outs[1].x, rtol=1e-12, atol=1e-14)
    assert outs[0].paths == ["forward"] * 7
    assert (outs[0].error <= 1e-10).all()


def test_forward_polish_from_given_starts_keeps_a_solved_start_and_does_not_restart():
    A = np.array([[1.0, 2.0, 0.0]])
    res = linear(A, np.ones((3, 1)))
    x0 = np.array([[1.0, 0.0, 5.0], [0.0, 0.5, -3.0], [3.0, 0.0, 0.0]])  # two solved already
    out = ForwardSolver(block(Settings(restarts=3), res)).solve(3, np.random.default_rng(0), x0)
    np.testing.assert_array_equal(out.x[:2], x0[:2])
    np.testing.assert_array_equal(out.iterations[:2], 0)
    assert out.error[2] <= 1e-10 and 1 <= out.iterations[2] <= Settings().max_iter
    # A polish moves only along A's row space from its start.
    np.testing.assert_allclose(out.x[2, 2], 0.0, atol=1e-12)


def test_expired_block_returns_random_starts_flagged():
    res = linear(np.eye(2), np.ones((3, 2)))
    p = block(Settings(), res, bounds=(-1.0, 1.0))
    p.deadline = time.monotonic() - 1
    out = ForwardSolver(p).run(3, np.random.default_rng(0))
    assert out.timed_out and np.isnan(out.error).all()
    assert (np.abs(out.x) <= 1).all()
    assert res.jacobians == 0


# --------------------------------------------------------------------------- the shared suites


class TestBlockSolvers(AllSuites):
    """The suites on a plain :class:`Problem` over a hand-written residual, per block solver."""

    methods = tuple(n for n in SOLVERS.names() if not SOLVERS.get(n).whole_model)
    expected_failures = GD_FAILURES

    def problem(self, c, method):
        return c.block_problem()


def test_whole_model_solvers_refuse_a_block():
    from onnxinv.errors import OptionError

    p = case("plain").block_problem()
    whole = [n for n in SOLVERS.names() if SOLVERS.get(n).whole_model]
    assert whole  # auto and backward at least
    for name in whole:
        with pytest.raises(OptionError, match="needs a whole model"):
            SOLVERS.get(name)(p)
