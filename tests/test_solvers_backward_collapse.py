"""The backward pass's choices (``onnxinv.solvers.backward.collapse``) and the suites on every method.

* :func:`collapse` returns points of the family inside [lo, hi] whenever some exist (also when
  the random proposal misses), flags and clips when none does, and draws from ``rng`` only.
* :func:`joint_collapse` chooses a nonlinearity's point so that the input below it fits in the
  box: a sample flagged ok really has a preimage inside the box.
* the backward pass reaches a Selu with a negative gamma (decreasing: solved numerically).
  (The interval bounds it keeps values inside are tested in ``test_partition_bounds.py``.)
* The shared suites (:mod:`solver_suites`) run on every registered method, whole-model methods
  (auto, backward) included, each given the whole model.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import const, make_model, ort_outputs, value_info
from onnx import helper
from scipy.optimize import lsq_linear
from solver_suites import GD_FAILURES, AllSuites, case

from onnxinv import objective as objective_mod
from onnxinv.load import model as model_mod
from onnxinv.rules.base import Family
from onnxinv.settings import Settings
from onnxinv.solvers.backward.collapse import MARGIN, collapse, joint_collapse
from onnxinv.solvers.base import ModelProblem
from onnxinv.solvers.registry import default_solvers
from onnxinv.target import Target


def orthonormal(rng, d, k):
    return np.linalg.qr(rng.normal(size=(d, k)))[0]


def off_family(y, fam):
    """How far points ``y`` are from their family (the part outside span V)."""
    e = y - fam.v0
    return np.abs(e - (e @ fam.V) @ fam.V.T).max()


# ------------------------------------------------------------------------------------ collapse


@pytest.mark.parametrize("seed", range(3))
def test_collapse_finds_points_inside_the_box_when_some_exist(seed):
    rng = np.random.default_rng(seed)
    b, d, k = 6, 5, 3
    V = orthonormal(rng, d, k)
    inside = rng.uniform(-0.9, 0.9, (b, d))  # a point of each family lies in the box...
    v0 = inside + 4.0 * rng.normal(size=(b, k)) @ V.T  # ...far from the particular one
    fam = Family(v0, V)
    lo, hi = np.full(d, -1.0), np.full(d, 1.0)
    y, ok = collapse(fam, lo, hi, rng, std=0.1)
    assert ok.all()
    assert (y >= lo).all() and (y <= hi).all()
    assert off_family(y, fam) < 1e-9


def test_collapse_respects_one_sided_domains():
    """SELU's output domain (−γα, ∞): only lower bounds, the proposal is the paper's point."""
    rng = np.random.default_rng(0)
    b, d, k = 5, 4, 2
    V = orthonormal(rng, d, k)
    lo, hi = np.full(d, -1.7), np.full(d, np.inf)
    feasible = lo + rng.exponential(1.0, (b, d))
    fam = Family(feasible + 3.0 * rng.normal(size=(b, k)) @ V.T, V)
    y, ok = collapse(fam, lo, hi, rng, std=0.1)
    assert ok.all() and (y >= lo).all()
    assert off_family(y, fam) < 1e-9


def test_unbounded_collapse_is_the_papers_point():
    rng = np.random.default_rng(1)
    V = orthonormal(rng, 6, 2)
    fam = Family(rng.normal(size=(4, 6)), V)
    inf = np.full(6, np.inf)
    y, ok = collapse(fam, -inf, inf, rng, std=0.3)
    assert ok.all()
    np.testing.assert_allclose(
        np.linalg.norm(y - fam.v0, axis=1), 0.3 * np.linalg.norm(fam.v0, axis=1), rtol=1e-12
    )
    assert off_family(y, fam) < 1e-12


def test_infeasible_family_is_flagged_and_clipped_into_the_box():
    # Free along the first coordinate only; the second is pinned at 5, outside [-1, 1].
    fam = Family(np.array([[0.0, 5.0], [3.0, 0.5], [0.0, -4.0]]), np.array([[1.0], [0.0]]))
    lo, hi = np.full(2, -1.0), np.full(2, 1.0)
    y, ok = collapse(fam, lo, hi, np.random.default_rng(0), std=0.1)
    np.testing.assert_array_equal(ok, [False, True, False])
    assert (y >= lo).all() and (y <= hi).all()
    np.testing.assert_allclose(y[[0, 2], 1], [1.0, -1.0])  # clipped, least violating
    assert -1 <= y[1, 0] <= 1 and y[1, 1] == 0.5


@pytest.mark.parametrize("inside", [True, False])
def test_a_point_family_is_kept_or_flagged(inside):
    v = np.array([[0.2, -0.3]]) if inside else np.array([[0.2, -3.0]])
    y, ok = collapse(Family.point(v), np.full(2, -1.0), np.full(2, 1.0), None, std=0.1)
    assert ok[0] == inside
    np.testing.assert_array_equal(y, np.clip(v, -1, 1))


def test_collapse_randomness_comes_from_rng_only():
    rng = np.random.default_rng(3)
    V = orthonormal(rng, 5, 2)
    inside = rng.uniform(-0.5, 0.5, (4, 5))
    fam = Family(inside + 3.0 * rng.normal(size=(4, 2)) @ V.T, V)  # some need the LP
    lo, hi = np.full(5, -1.0), np.full(5, 1.0)

    def draw(seed):
        return collapse(fam, lo, hi, np.random.default_rng(seed), std=0.1)

    (a, ok_a), (b, ok_b), (c, ok_c) = draw(0), draw(0), draw(1)
    assert ok_a.all() and ok_c.all()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ok_a, ok_b)
    assert np.abs(a - c).max() > 1e-3


def test_collapse_after_the_deadline_flags_what_needed_an_lp():
    rng = np.random.default_rng(4)
    V = orthonormal(rng, 4, 2)
    fam = Family(4.0 + rng.normal(size=(3, 4)), V)  # every proposal outside [-1, 1]
    lo, hi = np.full(4, -1.0), np.full(4, 1.0)
    y, ok = collapse(fam, lo, hi, rng, std=0.1, deadline=time.monotonic() - 1)
    assert not ok.any()
    assert (y >= lo).all() and (y <= hi).all()


# ------------------------------------------------------------------------------ joint_collapse


def tanh_problem(seed, b=6, d=3, n=4, k=1):
    """A Tanh layer's output family (k free directions) over ``M x + c``, x in [0, 1]^n.

    Each family contains ``tanh(M x* + c)`` for some x* in the box, so it is feasible.
    """
    rng = np.random.default_rng(seed)
    M, c = rng.normal(size=(d, n)), 0.3 * rng.normal(size=d)
    y_true = np.tanh(rng.uniform(0, 1, (b, n)) @ M.T + c)
    V = orthonormal(rng, d, k)
    fam = Family(y_true + 0.3 * rng.normal(size=(b, k)) @ V.T, V)
    lo, hi = np.full(d, -1 + MARGIN), np.full(d, 1 - MARGIN)
    return rng, M, c, fam, lo, hi


def below_in_box(y, M, c):
    """Per sample: whether some x in [0, 1]^n has ``M x + c = artanh(y)`` (to 1e-9)."""
    return np.array(
        [lsq_linear(M, np.arctanh(yi) - c, bounds=(0, 1)).cost <= 1e-9 * (1 + c @ c) for yi in y]
    )


@pytest.mark.parametrize("seed", range(4))
def test_joint_collapse_chooses_points_whose_preimage_fits_the_box(seed):
    rng, M, c, fam, lo, hi = tanh_problem(seed)
    greedy, _ = collapse(fam, lo, hi, rng, std=0.1)
    y, ok = joint_collapse(fam, np.arctanh, M, c, np.zeros(4), np.ones(4), lo, hi, greedy, rng)
    assert off_family(y, fam) < 1e-9
    assert (y >= lo).all() and (y <= hi).all()
    fits = below_in_box(y, M, c)
    assert fits[ok].all()  # ok is never optimistic
    assert ok.sum() >= 4  # and usually achieved...
    assert fits.sum() >= below_in_box(greedy, M, c).sum()  # ...never worse than greedy


def test_joint_collapse_flags_a_point_whose_preimage_is_outside_the_box():
    rng, M, c, _, lo, hi = tanh_problem(0)
    y0 = np.array([[0.99, -0.99, 0.99], [0.0, 0.0, 0.0]])
    y0[1] = np.tanh(M @ np.full(4, 3.0) + c)  # only x = 3 maps there (M is 3 x 4: a line)
    reach = below_in_box(y0, M, c)
    assert not reach[1]
    fam = Family.point(y0)
    y, ok = joint_collapse(fam, np.arctanh, M, c, np.zeros(4), np.ones(4), lo, hi, y0, rng)
    assert not ok[~reach].any()
    np.testing.assert_allclose(y, np.clip(y0, lo, hi))  # nothing to choose in a point family


def test_joint_collapse_after_the_deadline_keeps_the_greedy_points():
    rng, M, c, fam, lo, hi = tanh_problem(1)
    greedy, _ = collapse(fam, lo, hi, rng, std=0.1)
    y, ok = joint_collapse(
        fam,
        np.arctanh,
        M,
        c,
        np.zeros(4),
        np.ones(4),
        lo,
        hi,
        greedy,
        rng,
        deadline=time.monotonic() - 1,
    )
    assert not ok.any()
    np.testing.assert_array_equal(y, greedy)


def test_backward_reaches_a_selu_with_negative_gamma():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["z"]),
        helper.make_node("Selu", ["z"], ["y"], gamma=-1.0),
    ]
    model = make_model(
        nodes,
        [value_info("x", ["N", 4])],
        [value_info("y", ["N", 4])],
        [const("W", 0.7 * rng.normal(size=(4, 4))), const("b", np.zeros(4))],
    )
    target = ort_outputs(model, rng.uniform(0, 1, (1, 4)))[0].astype(float).tolist()
    loaded = model_mod.load(model)
    objective = objective_mod.build(loaded, Target.from_dict({"values": target}))
    problem = ModelProblem(Settings(samples=3), loaded, objective, deadline=None, max_memory=None)
    solver = default_solvers().get("backward")(problem)
    solver.prepare()
    out = solver.run(3, np.random.default_rng(0))
    assert problem.verify(out.x).verified.all()


@pytest.mark.parametrize("method", ["backward", "auto"])
def test_whole_model_solver_after_the_deadline_returns_random_starts_flagged(method):
    c = case("bounded")
    problem = ModelProblem(
        c.settings, c.loaded, c.objective, deadline=time.monotonic() - 1, max_memory=None
    )
    out = default_solvers().get(method)(problem).run(3, np.random.default_rng(0))
    assert out.timed_out and np.isnan(out.error).all()
    assert out.x.shape == (3, c.n_in) and out.x.min() >= 0 and out.x.max() <= 1
    assert "residual" not in problem.__dict__  # nothing was converted or solved


# --------------------------------------------------------------------------- the shared suites


class TestEveryMethod(AllSuites):
    """Every registered method on the whole model (backward's own suites among them)."""

    # (exact writes piecewise-linear chains only, and these suites' nets are smooth: it refuses
    # them in one line; tests/test_solvers_exact_analysis.py runs it on ReLU and max-pool nets.)
    methods = tuple(m for m in default_solvers().names() if m != "exact")
    expected_failures = GD_FAILURES
