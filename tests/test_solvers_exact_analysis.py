"""The exact solver: piecewise-linear chains written as mixed-integer programs.

Core assertions: samples it returns are preimages by onnxruntime on the original model; a
target it calls unreachable is not reached by random inputs nor by the forward pass (LM); a
target that is a real input's output is never called unreachable; a time limit gives
"unknown", never "unreachable".
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    assert_solved,
    const,
    make_model,
    one_line,
    ort_outputs,
    reachable_distribution,
    value_info,
)
from onnx import helper

import onnxinv
from onnxinv import objective as objective_mod
from onnxinv.errors import OptionError, UnreachableTargetError
from onnxinv.load import model as model_mod
from onnxinv.objective import TopRegion
from onnxinv.partition.chain import Activation, Affine
from onnxinv.rules import default_registry
from onnxinv.settings import Settings
from onnxinv.solvers.base import ModelProblem
from onnxinv.solvers.exact.analysis import ExactAnalysis, analysis_for
from onnxinv.solvers.exact.program import Program, pieces
from onnxinv.target import Target

BOX = (0.0, 1.0)


def mlp(widths, act="Relu", seed=0, scale=1.5, weights=None, tail="Softmax", **attrs):
    """Gemm/act layers of ``widths`` (random weights, or ``weights`` [(W, b)...]) -> tail."""
    rng = np.random.default_rng(seed)
    nodes, inits, last = [], [], "x"
    pairs = list(zip(widths[:-1], widths[1:], strict=True))
    for i, (a, b) in enumerate(pairs):
        W, c = weights[i] if weights else (rng.normal(0, scale / np.sqrt(a), (a, b)),
                                           rng.normal(0, 0.3, b))  # fmt: skip
        inits += [const(f"W{i}", W), const(f"b{i}", c)]
        nodes.append(helper.make_node("Gemm", [last, f"W{i}", f"b{i}"], [f"z{i}"]))
        last = f"z{i}"
        if i < len(pairs) - 1:
            nodes.append(helper.make_node(act, [last], [f"h{i}"], **attrs))
            last = f"h{i}"
    nodes.append(helper.make_node(tail, [last], ["p"], axis=-1))
    return make_model(nodes, [value_info("x", ["N", widths[0]])],
                      [value_info("p", ["N", widths[-1]])], inits)  # fmt: skip


def cnn(seed=0):
    """x[N,1,4,4] -> Conv(2, 3x3, pad 1) -> Relu -> MaxPool 2x2 -> Flatten -> Gemm(8->3) -> Softmax."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "K", "kb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["m"], ["f"]),
        helper.make_node("Gemm", ["f", "W", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
    ]
    inits = [const("K", rng.normal(0, 0.6, (2, 1, 3, 3))), const("kb", rng.normal(0, 0.1, 2)),
             const("W", rng.normal(0, 1.0, (8, 3))), const("b", rng.normal(0, 0.1, 3))]  # fmt: skip
    return make_model(nodes, [value_info("x", ["N", 1, 4, 4])], [value_info("p", ["N", 3])], inits)


def either_or():
    """Two ReLUs of which only one can be positive: logit 1 = 4 relu(x0 − x1), logit 2 =
    4 relu(x1 − x0), logit 0 = 0. Each of p1, p2 alone can reach 0.45, never both at once;
    interval, linear-relaxation and last-layer bounds all allow it (each is a box or a sum)."""
    V = np.array([[1.0, -1.0], [-1.0, 1.0]])
    W = np.array([[0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    return mlp([2, 2, 3], weights=[(V, np.zeros(2)), (W, np.zeros(3))])


def problem(model, target, **options):
    s = Settings(bounds=BOX, **options)
    loaded = model_mod.load(model.SerializeToString(), input=None, output=None, device="cpu",
                            seed=0, fixed=None, input_shape=None)  # fmt: skip
    obj = objective_mod.build(loaded, Target.coerce(target), seed=0)
    return ModelProblem(s, loaded, obj, deadline=None, max_memory=None)


# ------------------------------------------------------------------------ the encoding itself

PL_NODES = {
    "Relu": ({}, ()),
    "LeakyRelu": ({"alpha": 0.1}, ()),
    "Abs": ({}, ()),
    "HardSigmoid": ({"alpha": 0.5, "beta": 0.4}, ()),
    "Clip": ({}, (-0.5, 0.7)),
    "Max": ({}, (0.2,)),
    "Min": ({}, (-0.3,)),
}


@pytest.mark.parametrize("op", sorted(PL_NODES))
def test_every_piecewise_rule_is_written_exactly(op):
    """With the input fixed, the program's only solution is the rule's own forward value."""
    attrs, consts = PL_NODES[op]
    n = 5
    inputs = ["z"] + [f"k{i}" for i in range(len(consts))]
    node = helper.make_node(op, inputs, ["h"], **attrs)
    model = make_model([node], [value_info("z", ["N", n])], [value_info("h", ["N", n])],
                       [const(f"k{i}", c) for i, c in enumerate(consts)])  # fmt: skip
    loaded = model_mod.load(model.SerializeToString(), input=None, output=None, device="cpu",
                            seed=0, fixed=None, input_shape=None)  # fmt: skip
    from onnxinv.partition.blocks import partition

    step = partition(loaded, default_registry(), 0).blocks[0].steps[0]
    rule = step.rule
    assert rule.breakpoints() is not None
    rng = np.random.default_rng(1)
    z = rng.uniform(-2, 2, n)
    left, right, slope, icpt = pieces(rule, n)
    s = (z[None] >= left).sum(0) - 1
    np.testing.assert_allclose(slope[s, range(n)] * z + icpt[s, range(n)],
                               np.asarray(rule.forward(z[None]), float).ravel(), atol=1e-12)  # fmt: skip
    ops = [Affine(np.eye(n), np.zeros(n)), Activation(rule), Affine(np.eye(n), np.zeros(n))]
    want = np.asarray(rule.forward(z[None]), float).ravel()
    for shift, feasible in ((0.0, True), (1e-3, False)):
        region = TopRegion(np.eye(n), want + shift - 1e-7, want + shift + 1e-7, want)
        prog = Program(ops, n, (-2.0, 2.0), region)
        from scipy.optimize import Bounds, LinearConstraint, milp

        lo, hi = prog.var_lo.copy(), prog.var_hi.copy()
        lo[prog.x], hi[prog.x] = z, z
        res = milp(np.zeros(len(lo)), integrality=prog.integrality, bounds=Bounds(lo, hi),
                   constraints=LinearConstraint(prog.A, prog.lb, prog.ub))  # fmt: skip
        assert (res.status == 0) is feasible, (op, shift, res.message)


# ------------------------------------------------------------------------- sampling preimages


@pytest.mark.parametrize(
    "name, model",
    [
        ("relu-mlp", mlp([6, 8, 6, 3])),
        ("leaky-mlp", mlp([6, 8, 3], act="LeakyRelu", alpha=0.1)),
        ("cnn-maxpool", cnn()),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_samples_are_verified_preimages_inside_the_box(name, model, seed):
    p = reachable_distribution(model, "probabilities", seed=seed)
    res = onnxinv.invert(model, {"distribution": p}, method="exact", bounds=BOX, samples=12,
                         seed=seed)  # fmt: skip
    assert_solved(model, res, np.array(p), "probabilities", bounds=BOX, n=12)
    assert all(m == "exact" for m in res.methods)
    x = res.inputs.reshape(12, -1).astype(np.float64)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    assert d[np.triu_indices(12, 1)].min() > 1e-4, "hit-and-run samples repeat each other"


def test_exact_refuses_smooth_nets_and_unbounded_runs_in_one_line():
    p = reachable_distribution(mlp([4, 5, 3], act="Tanh"), "probabilities")
    with pytest.raises(OptionError) as info:
        onnxinv.invert(mlp([4, 5, 3], act="Tanh"), {"distribution": p}, method="exact", bounds=BOX)
    assert "Tanh is not piecewise linear" in one_line(info.value)
    with pytest.raises(OptionError) as info:
        onnxinv.invert(mlp([4, 5, 3]), {"distribution": p}, method="exact")
    assert "needs --bounds" in one_line(info.value)


# ------------------------------------------------------------------------------------ proofs

UNREACHABLE = {"distribution": [0.1, 0.45, 0.45]}


def test_the_either_or_target_escapes_the_cheaper_proofs():
    """The case below is a proof only the program gives (else the test proves nothing new)."""
    from onnxinv.solvers.exact.certificate import certify

    assert certify(problem(either_or(), UNREACHABLE)) is None


def test_proven_unreachable_is_sound_against_random_and_lm_inputs():
    model = either_or()
    decision = ExactAnalysis(problem(model, UNREACHABLE)).decide()
    assert decision.status == "unreachable"
    assert "proven unreachable within the bounds [0, 1]" in decision.message
    assert "infeasible" in decision.message
    # Random inputs in the box never come within the tolerance...
    x = np.random.default_rng(0).uniform(0, 1, (20000, 2))
    err = np.abs(ort_outputs(model, x) - np.array(UNREACHABLE["distribution"])).max(1)
    assert err.min() > 1e-2
    # ...nor does LM from many starts, and the API says "proven" after it gives up.
    with pytest.raises(UnreachableTargetError) as info:
        onnxinv.invert(model, UNREACHABLE, method="forward", bounds=BOX, samples=16, restarts=5)
    assert info.value.proven
    assert "proven unreachable" in one_line(info.value)
    assert info.value.result is not None and info.value.result.errors.min() > 1e-2


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", ["either-or", "relu-mlp", "cnn"])
def test_real_outputs_are_never_called_unreachable(which, seed):
    model = {"either-or": either_or, "relu-mlp": lambda: mlp([6, 8, 6, 3]), "cnn": cnn}[which]()
    p = reachable_distribution(model, "probabilities", seed=10 + seed)
    decision = ExactAnalysis(problem(model, {"distribution": p})).decide()
    assert decision.status == "reachable", decision.message


@pytest.mark.parametrize("limit", [0.01, 0.2])
def test_a_time_limit_gives_unknown_never_unreachable(limit):
    """A reachable target and a budget too short to decide it: "unknown" (or, if HiGHS was
    quick, "reachable"), never a proof."""
    model = mlp([32, 48, 48, 10], seed=3)
    p = reachable_distribution(model, "probabilities", seed=3)
    decision = ExactAnalysis(problem(model, {"distribution": p}, milp_time_limit=limit)).decide()
    assert decision.status in ("unknown", "reachable"), decision.message
    if decision.status == "unknown":
        assert "is unknown" in decision.message and "time limit" in decision.message.lower()


def test_exact_applies_only_to_piecewise_chains_in_a_box():
    p = reachable_distribution(mlp([4, 5, 3]), "probabilities")
    assert analysis_for(problem(mlp([4, 5, 3]), {"distribution": p})) is not None
    assert analysis_for(problem(mlp([4, 5, 3], act="Sigmoid"), {"distribution": p})) is None


# -------------------------------------------------------------------------- auto's fourth stage


def test_auto_hands_what_the_other_stages_left_to_the_exact_solver(monkeypatch):
    """With the backward pass and LM made useless, auto still verifies every sample."""
    from onnxinv.solvers import auto as auto_mod
    from onnxinv.solvers.base import SolverOutcome

    def useless(self, k, rng, x0=None, on_progress=None):
        x = np.full((k, self.problem.n), 0.5)
        return SolverOutcome(x, np.full(k, np.inf), np.zeros(k, dtype=np.int64), ["broken"] * k)

    monkeypatch.setattr(auto_mod.BackwardSolver, "solve", useless)
    monkeypatch.setattr(auto_mod.ForwardSolver, "solve", useless)
    model = mlp([6, 8, 6, 3])
    p = reachable_distribution(model, "probabilities", seed=5)
    res = onnxinv.invert(model, {"distribution": p}, method="auto", bounds=BOX, samples=8)
    assert_solved(model, res, np.array(p), "probabilities", bounds=BOX, n=8)
    assert set(res.methods) == {"exact"}


# ----------------------------------------------------------------------------------- a prior


@pytest.mark.parametrize("seed", [0, 1])
def test_with_a_prior_exact_returns_preimages_next_to_its_projection(seed):
    """x is a preimage at distance |x − prior|; the L1 projection onto the set is no farther,
    and the samples spread a little around it (distinct, all verified)."""
    model = mlp([6, 8, 6, 3])
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 0.8, 6)
    p = ort_outputs(model, x[None])[0].astype(np.float64)
    p = (p / p.sum()).tolist()
    prior = np.clip(x + rng.normal(0, 0.15, 6), 0, 1)
    res = onnxinv.invert(model, {"distribution": p}, method="exact", bounds=BOX, samples=8,
                         prior=prior, seed=seed)  # fmt: skip
    assert_solved(model, res, np.array(p), "probabilities", bounds=BOX, n=8)
    assert res.prior_distance.min() <= np.linalg.norm(x - prior) + 1e-6
    plain = onnxinv.invert(model, {"distribution": p}, method="exact", bounds=BOX, samples=8,
                           seed=seed)  # fmt: skip
    far = np.linalg.norm(plain.inputs.astype(np.float64) - prior, axis=1).mean()
    assert res.prior_distance.mean() < far
