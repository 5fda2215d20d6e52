"""Bounds on a chain's values over a box (``onnxinv.partition.bounds``).

Core assertions, each against values computed by running the chain on many inputs of the box
(its corners included): interval bounds, of a block's steps or of a chain's ops, contain every
value, and stop where a rule cannot bound; the affine range is exact (a corner reaches it);
activation lines hold on the whole interval; back-substitution bounds every query of the top
values from above, and is exact through affine maps alone. The block's steps compose to what
onnxruntime computes, so the bounds are about the model itself.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import const, make_model, ort_outputs, value_info
from onnx import helper

from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.partition.bounds import (
    back_substitute,
    centre_spread,
    chord_lines,
    interval_bounds,
    intervals,
    sampled_lines,
    widen,
)
from onnxinv.partition.chain import Activation, Affine, compose
from onnxinv.rules import default_registry
from onnxinv.rules.base import AffineRule

ACTIVATIONS = {
    "Tanh": {},
    "Sigmoid": {},
    "Selu": {},
    "Elu": {"alpha": 0.7},
    "LeakyRelu": {"alpha": 0.1},
    "Softplus": {},
    "HardSigmoid": {"alpha": 0.3, "beta": 0.4},
    "Selu-negative-gamma": {"gamma": -1.0},
}
MONOTONE = [a for a in ACTIVATIONS if a != "Selu-negative-gamma"]


def chain(act: str, seed: int = 0):
    """x[N, 5] → Gemm → act → Mul (signs mixed) → Gemm → act → Add → y[N, 3]."""
    rng = np.random.default_rng(seed)
    op, attrs = act.split("-")[0], ACTIVATIONS[act]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["z1"]),
        helper.make_node(op, ["z1"], ["h1"], **attrs),
        helper.make_node("Mul", ["h1", "s"], ["m"]),
        helper.make_node("Gemm", ["m", "W2", "b2"], ["z2"]),
        helper.make_node(op, ["z2"], ["h2"], **attrs),
        helper.make_node("Add", ["h2", "a"], ["y"]),
    ]
    inits = [
        const("W1", rng.normal(size=(5, 4))),
        const("b1", rng.normal(size=4)),
        const("s", [1.5, -2.0, 0.5, -0.7]),
        const("W2", rng.normal(size=(4, 3))),
        const("b2", rng.normal(size=3)),
        const("a", [0.1, -0.2, 0.3]),
    ]
    return make_model(nodes, [value_info("x", ["N", 5])], [value_info("y", ["N", 3])], inits)


def steps_of(act: str):
    return partition(model_mod.load(chain(act)), default_registry()).blocks[0].steps


def ops_of(steps) -> list:
    """The steps as chain ops: each run of affine rules composed, every other rule an
    activation (what ``chain_of`` does, without its conditions on where a chain may end)."""
    ops, run = [], []
    for step in [*steps, None]:
        if step is not None and isinstance(step.rule, AffineRule):
            run.append(step.rule)
            continue
        if run:
            ops.append(Affine(*compose(run)))
            run = []
        if step is not None:
            ops.append(Activation(step.rule))
    return ops


def run_ops(ops, x: np.ndarray) -> list[np.ndarray]:
    """Every op's output for the rows of ``x``."""
    out = []
    for op in ops:
        x = x @ op.M.T + op.c if isinstance(op, Affine) else op.rule.forward(x).reshape(len(x), -1)
        out.append(x)
    return out


def box_points(box, n: int, count: int = 2000, seed: int = 1) -> np.ndarray:
    corners = np.array(list(itertools.product(box, repeat=n)))
    return np.concatenate([corners, np.random.default_rng(seed).uniform(*box, (count, n))])


def inside(v, lo, hi, name="") -> None:
    slack = 1e-9 * (1 + np.abs(v).max())
    assert (v >= lo - slack).all() and (v <= hi + slack).all(), name
    assert (lo <= hi).all(), name


# ------------------------------------------------------------------------------ interval bounds
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("box", [(0.0, 1.0), (-2.0, 1.5)], ids=["unit", "wide"])
def test_interval_bounds_contain_every_value_from_the_box(act, box):
    # Selu with gamma < 0 is decreasing: its rule refuses the node (solved numerically), and
    # the bounds of the invertible part below must still be sound.
    model = chain(act)
    part = partition(model_mod.load(model), default_registry())
    if act != "Selu-negative-gamma":  # refusing that node's rule would be a right answer
        assert [b.kind for b in part.blocks] == ["invertible"]  # else nothing is tested
    assert part.blocks[0].kind == "invertible"
    steps = part.blocks[0].steps
    lo, hi = box
    bounds = interval_bounds(steps, np.full(5, lo), np.full(5, hi))
    assert set(bounds) == {"x"} | {s.output for s in steps}
    last = steps[-1].output
    x = box_points(box, 5)
    values = {"x": x}
    for step in steps:
        values[step.output] = step.rule.forward(values[step.input]).reshape(len(x), -1)
    # The steps compose to the model, so the bounds are about what onnxruntime computes.
    if last == "y":
        np.testing.assert_allclose(values["y"], ort_outputs(model, x), rtol=1e-4, atol=1e-4)
    for name, (blo, bhi) in bounds.items():
        inside(values[name], blo, bhi, name)


def test_interval_bounds_stop_at_a_step_without_them():
    """A Softmax has no interval rule: nothing above it is bounded, nothing below is lost."""
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["z"]),
        helper.make_node("Tanh", ["z"], ["h"]),
        helper.make_node("Softmax", ["h"], ["y"], axis=-1),
    ]
    model = make_model(
        nodes,
        [value_info("x", ["N", 3])],
        [value_info("y", ["N", 3])],
        [const("W", np.eye(3)), const("b", np.zeros(3))],
    )
    steps = partition(model_mod.load(model), default_registry()).blocks[0].steps
    bounds = interval_bounds(steps, np.zeros(3), np.ones(3))
    assert set(bounds) == {"x", "z", "h"}
    np.testing.assert_allclose(bounds["h"][1], np.tanh(1.0))
    assert interval_bounds([], np.zeros(3), np.ones(3)) == {}


@pytest.mark.parametrize("act", MONOTONE)
@pytest.mark.parametrize("slack", [None, 1e-5])
def test_intervals_of_chain_ops_contain_every_value(act, slack):
    """On composed ops (an Affine bounded by its centre and spread) as on the steps they come
    from; ``slack`` only widens, by the relative amount asked."""
    steps = steps_of(act)
    ops = ops_of(steps)
    assert [type(o).__name__ for o in ops] == ["Affine", "Activation", "Affine", "Activation",
                                               "Affine"]  # fmt: skip
    box = (-1.0, 2.0)
    found = intervals(ops, np.full(5, box[0]), np.full(5, box[1]), slack=slack)
    assert len(found) == len(ops)
    plain = intervals(ops, np.full(5, box[0]), np.full(5, box[1]))
    for v, (lo, hi), (plo, phi) in zip(run_ops(ops, box_points(box, 5)), found, plain, strict=True):
        inside(v, lo, hi)
        if slack is None:
            np.testing.assert_array_equal(lo, plo)
        else:
            assert (lo < plo).all() and (hi > phi).all()
    # The steps' own bounds agree with the ops' at the top (both sound, both exact for the
    # affine runs up to round-off, the composed one at least as tight).
    top_lo, top_hi = interval_bounds(steps, np.full(5, box[0]), np.full(5, box[1]))["y"]
    assert (plain[-1][0] >= top_lo - 1e-9).all() and (plain[-1][1] <= top_hi + 1e-9).all()


class _Unbounded:
    """A rule with no interval bounds (or NaN ones)."""

    def __init__(self, value):
        self.value = value

    def forward_interval(self, lo, hi):
        return None if self.value is None else (np.full_like(lo, self.value), hi)


@pytest.mark.parametrize("value, finite, stops", [(None, False, True), (np.nan, False, True),
                                                  (-np.inf, False, False), (-np.inf, True, True)])  # fmt: skip
def test_intervals_stop_at_the_first_op_they_cannot_bound(value, finite, stops):
    """No bounds or NaN ones stop the walk; infinite ones only with ``finite``."""
    ops = [Affine(np.eye(2), np.zeros(2)), Activation(_Unbounded(value)), Activation(_Unbounded(0))]
    found = intervals(ops, np.zeros(2), np.ones(2), finite=finite)
    assert len(found) == (1 if stops else 3)


def test_the_affine_range_is_exact():
    rng = np.random.default_rng(0)
    M, c = rng.normal(size=(6, 4)), rng.normal(size=6)
    lo, hi = rng.uniform(-2, 0, 4), rng.uniform(0, 2, 4)
    centre, spread = centre_spread(M, c, lo, hi)
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    values = corners @ M.T + c
    np.testing.assert_allclose(values.max(0), centre + spread, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(values.min(0), centre - spread, rtol=1e-12, atol=1e-12)


def test_widen_moves_each_end_out_and_keeps_infinities():
    lo, hi = np.array([-2.0, 0.0, -np.inf]), np.array([3.0, 0.0, np.inf])
    wlo, whi = widen(lo, hi, 0.1)
    np.testing.assert_array_equal(wlo, [-2.3, -0.1, -np.inf])
    np.testing.assert_array_equal(whi, [3.0 + 0.1 * 4, 0.1, np.inf])
    clo, chi = widen(lo[:2], hi[:2], 0.1, common=True)  # both ends by 0.1·(1 + 3) and 0.1
    np.testing.assert_allclose(clo, [-2.4, -0.1])
    np.testing.assert_allclose(chi, [3.4, 0.1])


# ---------------------------------------------------------------------------- activation lines
def test_chord_lines_hold_every_point_and_are_flat_on_a_point():
    rng = np.random.default_rng(0)
    z = np.sort(rng.uniform(-3, 3, (50, 9)), axis=1)
    f = np.tanh(z) + 0.1 * z**2
    slope, low, high = chord_lines(z, f, z[:, -1] - z[:, 0])
    np.testing.assert_allclose(slope, (f[:, -1] - f[:, 0]) / (z[:, -1] - z[:, 0]))
    assert (slope[:, None] * z + low[:, None] <= f + 1e-12).all()
    assert (slope[:, None] * z + high[:, None] >= f - 1e-12).all()
    assert (np.isclose(slope[:, None] * z + low[:, None], f).any(1)).all()  # (each line touches)
    flat, low, high = chord_lines(np.ones((2, 3)), np.full((2, 3), 5.0), np.zeros(2))
    np.testing.assert_array_equal(flat, 0.0)
    np.testing.assert_array_equal(low, 5.0)


@pytest.mark.parametrize("act", MONOTONE)
def test_sampled_lines_hold_on_the_whole_interval(act):
    rule = next(s.rule for s in steps_of(act) if not isinstance(s.rule, AffineRule))
    rng = np.random.default_rng(1)
    lo = rng.uniform(-4, 2, 4)
    hi = lo + np.array([0.0, 1e-3, 1.0, 5.0])  # a point, narrow, wide
    a_l, b_l, a_u, b_u = sampled_lines(rule, lo, hi)
    np.testing.assert_array_equal(a_l, a_u)  # (parallel)
    z = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 5001)[None]
    f = rule.forward(z).reshape(z.shape)
    assert (a_l[:, None] * z + b_l[:, None] <= f + 1e-12).all()
    assert (a_u[:, None] * z + b_u[:, None] >= f - 1e-12).all()


# --------------------------------------------------------------------------- back-substitution
@pytest.mark.parametrize("act", MONOTONE)
def test_back_substitution_bounds_every_query_from_above(act):
    ops = ops_of(steps_of(act))
    box = (0.0, 1.0)
    lo, hi = np.full(5, box[0]), np.full(5, box[1])
    ins = [(lo, hi), *intervals(ops, lo, hi)]
    lines = {i: sampled_lines(op.rule, *ins[i]) for i, op in enumerate(ops)
             if isinstance(op, Activation)}  # fmt: skip
    queries = np.random.default_rng(2).normal(size=(8, 3))
    const = np.arange(8.0)
    W, k = back_substitute(ops, lines, queries, const)
    centre, spread = centre_spread(W, k, lo, hi)
    x = box_points(box, 5)
    values = run_ops(ops, x)[-1] @ queries.T + const  # (B, 8)
    assert (values <= centre + spread + 1e-9).all()
    # As tight as the interval bound on the top values, or tighter, for some query at least.
    top_lo, top_hi = ins[-1]
    interval_upper = np.where(queries > 0, queries * top_hi, queries * top_lo).sum(1) + const
    assert (centre + spread <= interval_upper + 1e-6).any()


def test_back_substitution_through_affine_maps_is_exact():
    rng = np.random.default_rng(3)
    ops = [Affine(rng.normal(size=(4, 3)), rng.normal(size=4)),
           Affine(rng.normal(size=(2, 4)), rng.normal(size=2))]  # fmt: skip
    W0, k0 = rng.normal(size=(5, 2)), rng.normal(size=5)
    W, k = back_substitute(ops, {}, W0, k0)
    x = rng.normal(size=(10, 3))
    np.testing.assert_allclose(x @ W.T + k, run_ops(ops, x)[-1] @ W0.T + k0, rtol=1e-12)
