"""The Jacobian as an operator (``onnxinv.solvers.forward.operators``).

The products of :meth:`TorchResidual.linearise` are checked against the dense Jacobian the same
residual builds by autograd (:meth:`TorchResidual.value_and_jacobian`, one backward pass per
residual), on small tanh MLPs and conv nets, float32 and float64 modules, with more residuals
than inputs and fewer. Conjugate gradients (:func:`cg_damped_step`) run to a tight tolerance must
give the direct solve's step (:func:`damped_step`) whenever both use the same damping scale, which
an operator built from the dense Jacobian with its exact ‖J‖²_F guarantees; and :func:`box_step`
must take the same steps from an operator as from the tensor it stands for.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from onnxinv.objective import Objective
from onnxinv.solvers.forward import lm as lm_mod
from onnxinv.solvers.forward import operators
from onnxinv.solvers.forward.lm import box_step
from onnxinv.solvers.forward.operators import (
    CG_TOLERANCE,
    DenseOperator,
    MatrixFreeOperator,
    cg_damped_step,
    damped_step,
)
from onnxinv.solvers.residual import TorchResidual

F64 = torch.float64
BATCH = 3

# ------------------------------------------------------------------------------------- builders


def values_objective(m: int, seed: int = 0) -> Objective:
    """``r = y − t`` for a random target ``t`` of ``m`` values (every sample the same target)."""
    t = np.random.default_rng(seed).normal(size=m)
    return Objective("values", "values", "output", t, t.copy(), 1e-4)


def net(kind: str, m: int, dtype: torch.dtype, seed: int = 0) -> tuple[nn.Module, tuple]:
    """A small torch net with ``m`` outputs and its batched input shape (25 inputs)."""
    torch.manual_seed(seed)
    if kind == "mlp":
        module = nn.Sequential(nn.Linear(25, 16), nn.Tanh(), nn.Linear(16, m))
        shape = (-1, 25)
    else:  # a conv net on 1×5×5 images
        module = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(75, m)
        )
        shape = (-1, 1, 5, 5)
    return module.to(dtype).eval(), shape


def residual(kind: str, m: int, dtype: torch.dtype, seed: int = 0) -> TorchResidual:
    module, shape = net(kind, m, dtype, seed)
    return TorchResidual(module, values_objective(m, seed), shape, batched=True)


def as_operator(jac: torch.Tensor, norm2: torch.Tensor | None = None) -> MatrixFreeOperator:
    """A matrix-free operator whose products are those of the dense ``jac`` (B, m, n)."""
    b, m, n = jac.shape

    def jvp(v):
        return (jac @ v.unsqueeze(-1)).squeeze(-1)

    def vjp(u):
        return (jac.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1)

    return MatrixFreeOperator(jvp, vjp, m, n, b, torch.Generator().manual_seed(0), norm2=norm2)


def frobenius2(jac: torch.Tensor, free: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) ‖J D‖²_F: the damping scale both step forms use (``D`` the free mask)."""
    if free is not None:
        jac = jac * free[:, None, :].to(jac.dtype)
    return (jac * jac).sum((1, 2))


def mv(jac: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (jac @ v.unsqueeze(-1)).squeeze(-1)


def rmv(jac: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (jac.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """Equal to round-off: float64 products to 1e-10, float32 ones to float32's precision."""
    assert got.dtype == F64 and got.shape == want.shape  # values stay float64 either way
    rel = 1e-10 if dtype == F64 else 2e-5
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


pytestmark = pytest.mark.usefixtures("forward_mode_warm")


NETS = ["mlp", "conv"]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(F64, id="float64")]
ROWS = [pytest.param(4, id="m<n"), pytest.param(40, id="m>n")]

# ----------------------------------------------------------------------------------- the products


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", NETS)
def test_products_equal_the_dense_jacobians(kind, dtype, m):
    res = residual(kind, m, dtype)
    assert (res.fast is not None) == (dtype == torch.float32)  # float32 products on a copy
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, res.n, generator=gen, dtype=F64)
    r, jac = res.value_and_jacobian(x)
    assert jac.shape == (BATCH, m, res.n)
    op = res.linearise(x)
    assert (op.m, op.n, op.batch) == (m, res.n, BATCH)
    for _ in range(2):  # the kept graph serves several products
        v = torch.randn(BATCH, res.n, generator=gen, dtype=F64)
        u = torch.randn(BATCH, m, generator=gen, dtype=F64)
        close(op.matvec(v), mv(jac, v), dtype)
        close(op.rmatvec(u), rmv(jac, u), dtype)
    # The residual values themselves stay float64, from the float64 module.
    torch.testing.assert_close(res.value(x), r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jacobian_vector_products_by_double_vjp_equal_forward_mode(dtype):
    """``forward_mode = False`` (what an operator without a forward-mode rule switches to)
    computes ``J v`` as a backward pass of the backward pass: the same numbers."""
    res = residual("conv", 6, dtype)
    x = torch.randn(BATCH, res.n, generator=torch.Generator().manual_seed(2), dtype=F64)
    _, jac = res.value_and_jacobian(x)
    res.forward_mode = False
    op = res.linearise(x)
    vs = torch.randn(2, BATCH, res.n, generator=torch.Generator().manual_seed(3), dtype=F64)
    for v in vs:  # the second product reuses the backward graph built by the first
        close(op.matvec(v), mv(jac, v), dtype)


class NoForwardRule(torch.autograd.Function):
    """``tanh`` with a backward rule and no forward-mode (jvp) rule."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class CustomTanh(nn.Module):
    def forward(self, x):
        return NoForwardRule.apply(x)


def test_an_operator_without_forward_mode_rule_falls_back_to_double_vjp():
    torch.manual_seed(4)
    module = nn.Sequential(nn.Linear(9, 7), CustomTanh(), nn.Linear(7, 5)).double().eval()
    res = TorchResidual(module, values_objective(5), (-1, 9), batched=True)
    x = torch.randn(BATCH, 9, generator=torch.Generator().manual_seed(5), dtype=F64)
    _, jac = res.value_and_jacobian(x)
    op = res.linearise(x)
    v = torch.randn(BATCH, 9, generator=torch.Generator().manual_seed(6), dtype=F64)
    close(op.matvec(v), mv(jac, v), F64)
    assert res.forward_mode is False  # learnt once, for the residual's later products


# ---------------------------------------------------------------------------------------- rows()


@pytest.mark.parametrize("source", ["linearised", "dense"])
def test_rows_stand_for_the_selected_samples(source):
    res = residual("mlp", 6, F64, seed=7)
    b = 5
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(b, res.n, generator=gen, dtype=F64)
    _, jac = res.value_and_jacobian(x)
    op = res.linearise(x) if source == "linearised" else DenseOperator(jac)
    idx = torch.tensor([3, 0, 4])  # out of order on purpose
    part = op.rows(idx)
    v = torch.randn(len(idx), res.n, generator=gen, dtype=F64)
    u = torch.randn(len(idx), 6, generator=gen, dtype=F64)
    close(part.matvec(v), mv(jac[idx], v), F64)
    close(part.rmatvec(u), rmv(jac[idx], u), F64)
    # Rows of rows: the second pick is relative to the first (sample 0 of the batch here).
    inner = part.rows(torch.tensor([1]))
    close(inner.matvec(v[1:2]), mv(jac[[0]], v[1:2]), F64)
    close(inner.rmatvec(u[1:2]), rmv(jac[[0]], u[1:2]), F64)
    if source == "linearised":
        full = op.norm2()  # estimated once; the rows' estimate is its slice, not a new draw
        assert op.rows(idx).norm2().tolist() == full[idx].tolist()


# ---------------------------------------------------------------------------------------- norm2()


@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", NETS)
def test_the_norm_estimate_is_unbiased_for_the_frobenius_norm(kind, dtype, m):
    """Hutchinson's estimate, averaged over 12 seeds (24 probes), within 35% of ‖J‖²_F for
    every sample; one seed's estimate within a factor 4 (it only sets the damping's scale)."""
    res = residual(kind, m, dtype, seed=9)
    x = torch.randn(BATCH, res.n, generator=torch.Generator().manual_seed(10), dtype=F64)
    _, jac = res.value_and_jacobian(x)
    exact = frobenius2(jac)
    estimates = []
    for seed in range(12):
        res.rng = torch.Generator().manual_seed(seed)
        est = res.linearise(x).norm2()
        assert est.shape == (BATCH,) and est.dtype == F64
        estimates.append(est)
    estimates = torch.stack(estimates)
    ratio = estimates.mean(0) / exact
    assert ((ratio > 0.65) & (ratio < 1.35)).all(), ratio
    each = estimates / exact
    assert ((each > 0.25) & (each < 4.0)).all(), each
    # Seeded: the same generator state gives the same estimate.
    res.rng = torch.Generator().manual_seed(0)
    assert res.linearise(x).norm2().tolist() == estimates[0].tolist()


# ------------------------------------------------------------------------ CG step = direct step


def random_problem(m: int, n: int, seed: int, masked: bool, starved: bool = True):
    """Jacobians of different sizes (B, m, n), residuals, and optionally a free mask (with
    ``starved``, one sample keeps a single free coordinate; without, every sample keeps at
    least ``min(m, n)``)."""
    gen = torch.Generator().manual_seed(seed)
    b = 4
    jac = (
        torch.randn(b, m, n, generator=gen, dtype=F64) * torch.linspace(0.5, 3.0, b)[:, None, None]
    )
    r = torch.randn(b, m, generator=gen, dtype=F64)
    free = None
    if masked:
        free = torch.rand(b, n, generator=gen) < 0.7
        if starved:
            free[:, 0] = True
            free[0, 1:] = False  # one sample with a single free coordinate
        else:
            free[:, : min(m, n)] = True
    return jac, r, free


SHAPES = [
    pytest.param(3, 12, id="m<n"),
    pytest.param(7, 7, id="m=n"),
    pytest.param(12, 3, id="m>n"),
]


@pytest.mark.parametrize("masked", [False, True], ids=["all-free", "masked"])
@pytest.mark.parametrize("lam", [1e-6, 1e-2, 1.0])
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_cg_to_a_tight_tolerance_gives_the_direct_step(m, n, lam, masked):
    jac, r, free = random_problem(m, n, seed=m * 100 + n, masked=masked)
    lam_b = torch.full((len(r),), lam, dtype=F64) * torch.tensor([1.0, 0.5, 2.0, 1.0])
    want = damped_step(jac, r, lam_b, free)
    op = as_operator(jac, norm2=frobenius2(jac, free))
    got = cg_damped_step(op, r, lam_b, free, max_iter=200, tol=1e-11)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7 * float(want.abs().max()))
    if free is not None:  # frozen coordinates do not move
        assert (got[~free] == 0).all()
    # The dense operator's step is the direct one.
    torch.testing.assert_close(DenseOperator(jac).damped_step(r, lam_b, free), want)


@pytest.mark.parametrize("masked", [False, True], ids=["all-free", "masked"])
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_cg_at_its_default_tolerance_meets_its_stopping_rule(m, n, masked):
    """With the defaults, each sample's damped system is solved to ``CG_TOLERANCE`` of its
    right side, and the step lowers the linear model's residual ``‖r + J dx‖``."""
    jac, r, free = random_problem(m, n, seed=7 * m + n, masked=masked, starved=False)
    lam = torch.full((len(r),), 1e-3, dtype=F64)
    norm2 = frobenius2(jac)  # (unmasked: the scale the matrix-free form takes)
    dx = as_operator(jac, norm2).damped_step(r, lam, free)
    d = torch.ones_like(dx) if free is None else free.to(F64)
    jd = jac * d[:, None, :]
    # (D Jᵀ J D + μ I) dx = -D Jᵀ r, whatever the shape (CGLS)
    mu = lam * norm2 / min(m, n)
    system = jd.transpose(1, 2) @ jd + mu[:, None, None] * torch.eye(n, dtype=F64)
    rhs = rmv(jd, r)
    miss = mv(system, dx) + rhs
    ratio = miss.norm(dim=1) / rhs.norm(dim=1)
    assert (ratio <= 1.05 * CG_TOLERANCE).all(), ratio
    assert ((r + mv(jac, dx)).norm(dim=1) < r.norm(dim=1)).all()


# ------------------------------------------------------------------------------------- box_step


@pytest.fixture
def tight_cg(monkeypatch):
    """Matrix-free operators take their steps by CG to round-off from now on."""
    tight = functools.partial(operators.cg_damped_step, max_iter=300, tol=1e-12)
    monkeypatch.setattr(operators, "cg_damped_step", tight)


@pytest.mark.parametrize("source", ["random", "net"])
@pytest.mark.parametrize(
    ("m", "n"), [pytest.param(3, 25, id="m<n"), pytest.param(40, 25, id="m>n")]
)
def test_box_step_takes_the_same_step_from_an_operator(tight_cg, source, m, n):
    """Small damping, so the damping's scale (masked Jacobian for the dense form, unmasked
    for the matrix-free one) does not matter; the steps must stop the same coordinates.
    (Residuals of moderate size: when every coordinate of a sample stops, the dense form's
    step is NaN at small damping, see the frozen-sample test.)"""
    gen = torch.Generator().manual_seed(11)
    b = 4
    x = torch.rand(b, n, generator=gen, dtype=F64)
    x[:, :5] = torch.tensor([0.0, 1.0, 1e-3, 0.999, 0.5], dtype=F64)  # on and near the bounds
    if source == "net":
        res = residual("mlp", m, F64, seed=12)
        r, jac = res.value_and_jacobian(x)
        r = r / 10  # (a residual the size the steps cross part of the box for)
        op = res.linearise(x)
    else:
        jac = torch.randn(b, m, n, generator=gen, dtype=F64)
        r = torch.randn(b, m, generator=gen, dtype=F64)
        op = as_operator(jac)
    lam = torch.full((b,), 1e-7, dtype=F64)
    g = rmv(jac, r)
    free = ~(((x <= 0) & (g > 0)) | ((x >= 1) & (g < 0)))
    want = box_step(jac, r, lam, free, x, 0.0, 1.0)
    got = box_step(op, r, lam, free, x, 0.0, 1.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    # The rounds did happen: some free coordinates stopped exactly on a bound, not all.
    stopped = ((x + want == 0) | (x + want == 1)) & free
    assert 0 < int(stopped.sum()) < int(free.sum())
    # A DenseOperator is the tensor's own form.
    torch.testing.assert_close(box_step(DenseOperator(jac), r, lam, free, x, 0.0, 1.0), want)


@pytest.mark.parametrize(
    "form",
    [
        "dense",
        "matrix-free",
    ],
)
@pytest.mark.parametrize(("m", "n"), [pytest.param(3, 8, id="m<n"), pytest.param(8, 3, id="m>n")])
def test_a_sample_with_every_coordinate_frozen_does_not_move(form, m, n):
    """At the smallest damping LM uses, a sample with nothing free gets a zero step, and the
    others their usual one."""
    jac, r, _ = random_problem(m, n, seed=13, masked=False)
    free = torch.ones(len(r), n, dtype=torch.bool)
    free[1] = False
    lam = torch.full((len(r),), lm_mod.LAMBDA_MIN, dtype=F64)
    if form == "dense":
        dx = damped_step(jac, r, lam, free)
    else:
        dx = cg_damped_step(
            as_operator(jac, frobenius2(jac)), r, lam, free, max_iter=200, tol=1e-11
        )
    assert (dx[1] == 0).all(), dx[1]
    others = torch.tensor([0, 2, 3])
    want = damped_step(jac[others], r[others], lam[others])
    torch.testing.assert_close(dx[others], want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def ill_conditioned(m: int, n: int, decades: float, seed: int = 0):
    """(4, m, n) Jacobians whose singular values spread over ``decades`` (a deep net's are
    spread like this), and residuals."""
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n)
    jacs = []
    for _ in range(4):
        u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=F64))
        v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=F64))
        jacs.append(u @ torch.diag(torch.logspace(0, -decades, k, dtype=F64)) @ v.T)
    return torch.stack(jacs), torch.randn(4, m, generator=gen, dtype=F64)


@pytest.mark.parametrize(
    ("m", "n"),
    [
        pytest.param(96, 128, id="m<n"),
        pytest.param(128, 96, id="m>n"),
    ],
)
def test_a_truncated_cg_step_still_lowers_the_linear_model(m, n):
    """More unknowns than CG_MAX_ITER and singular values over 4 decades: CG stops at its
    iteration cap, and its step must still be a step LM can use, ‖r + J dx‖ < ‖r‖, as the
    dense step's is (about 0.2 for m < n, 0.55 for m > n, where r is not in J's range)."""
    assert min(m, n) > operators.CG_MAX_ITER
    jac, r = ill_conditioned(m, n, decades=4)
    lam = torch.full((4,), 1e-6, dtype=F64)
    dense = (r + mv(jac, damped_step(jac, r, lam))).norm(dim=1) / r.norm(dim=1)
    assert (dense < 0.7).all()
    dx = as_operator(jac, frobenius2(jac)).damped_step(r, lam)
    ratio = (r + mv(jac, dx)).norm(dim=1) / r.norm(dim=1)
    assert (ratio < 1).all(), ratio
