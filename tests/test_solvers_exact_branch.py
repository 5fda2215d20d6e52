"""Branch and bound over activation splits (``onnxinv.solvers.exact.branch``).

Core assertions: its answers agree with the mixed-integer program (an independent complete
method) on every piecewise-linear activation, convex, concave or neither; a witness it returns
is an input whose output onnxruntime puts next to the target; a target it proves unreachable is
not reached by random inputs nor by real digits; a real input's output is never called
unreachable; and ``decide`` hands the proof over to it when the program runs out of time.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import MODELS, ort_outputs, reachable_distribution
from test_solvers_exact_analysis import BOX, either_or, mlp, problem

import onnxinv.solvers.exact.analysis as exact_mod
from onnxinv.solvers.exact.analysis import ExactAnalysis, piecewise_chain
from onnxinv.solvers.exact.branch import Search, applies

DIGITS = np.load(MODELS / "digits_val.npz")


def search(model, target, box=BOX):
    p = problem(model, target)
    ops, region = piecewise_chain(p)
    assert applies(ops)
    return Search(ops, p.n, box, region), p


def one_class(k: int, confidence: float = 0.9, classes: int = 10) -> dict:
    p = np.full(classes, (1 - confidence) / (classes - 1))
    p[k] = confidence
    return {"distribution": p.tolist()}


ACTIVATIONS = [
    ("Relu", {}),
    ("LeakyRelu", {"alpha": 0.1}),
    ("LeakyRelu", {"alpha": 2.0}),  # concave: slopes 2 then 1
    ("Abs", {}),
    ("HardSigmoid", {"alpha": 0.5, "beta": 0.4}),  # neither convex nor concave
]


@pytest.mark.parametrize("act, attrs", ACTIVATIONS)
@pytest.mark.parametrize("seed", range(3))
def test_search_agrees_with_the_program_and_its_witnesses_are_preimages(act, attrs, seed):
    model = mlp([5, 8, 6, 3], act=act, seed=seed, scale=2.5, **attrs)
    rng = np.random.default_rng(seed)
    targets = [
        {"distribution": reachable_distribution(model, "probabilities", seed=seed)},
        {"distribution": (lambda v: (v / v.sum()).tolist())(rng.dirichlet([0.3] * 3))},
        {"distribution": [0.9, 0.05, 0.05]},
    ]
    for target in targets:
        s, p = search(model, target)
        out = s.run(30.0)
        assert out.status in ("infeasible", "feasible"), out.status
        program = ExactAnalysis(p).program
        status, _, _ = program.solve(None, time_limit=30.0)
        assert status == out.status, (target, status, out.status)
        if out.status == "feasible":
            assert np.all((out.x >= BOX[0]) & (out.x <= BOX[1]))
            got = ort_outputs(model, out.x[None].astype(np.float32))[0]
            # The witness meets the necessary conditions: every probability within about
            # twice the tolerance (ratios to the likeliest class within theirs).
            assert np.abs(got - np.array(target["distribution"])).max() < 5 * 1e-4


def test_either_or_is_proven_and_random_inputs_agree():
    s, _ = search(either_or(), {"distribution": [0.1, 0.45, 0.45]})
    out = s.run(10.0)
    assert out.status == "infeasible" and out.x is None
    x = np.random.default_rng(0).uniform(0, 1, (20000, 2))
    err = np.abs(ort_outputs(either_or(), x) - np.array([0.1, 0.45, 0.45])).max(1)
    assert err.min() > 1e-2


@pytest.mark.parametrize("k", [2, 4, 5])
def test_proofs_on_the_bundled_relu_mlp_hold_against_real_digits(k):
    """Classes 2, 4 and 5 at 0.9 on digits_relu: proven here in seconds (the program alone
    took up to a minute); no real digit and no random image comes near the target."""
    from onnx import load

    model = load(MODELS / "digits_relu.onnx")
    target = one_class(k)
    s, _ = search(model, target)
    out = s.run(60.0)
    assert out.status == "infeasible", out.status
    x = np.concatenate([DIGITS["x"].reshape(len(DIGITS["x"]), -1),
                        np.random.default_rng(k).uniform(0, 1, (5000, 64))]).astype(np.float32)  # fmt: skip
    err = np.abs(ort_outputs(model, x) - np.array(target["distribution"])).max(1)
    assert err.min() > 1e-3


@pytest.mark.parametrize("index", [0, 3, 56])
def test_real_outputs_are_never_called_unreachable(index):
    from onnx import load

    model = load(MODELS / "digits_relu.onnx")
    x = DIGITS["x"][index].reshape(1, -1).astype(np.float32)
    p = ort_outputs(model, x)[0].astype(np.float64)
    s, _ = search(model, {"distribution": (p / p.sum()).tolist()})
    out = s.run(10.0)
    assert out.status != "infeasible"


def test_decide_hands_the_proof_to_the_search_when_the_program_runs_out(monkeypatch):
    from onnx import load

    monkeypatch.setattr(exact_mod, "FIRST", 0.0)  # the program alone: no time to decide
    model = load(MODELS / "digits_relu.onnx")
    decision = ExactAnalysis(problem(model, one_class(4))).decide()
    assert decision.status == "unreachable", decision.message
    assert "proven unreachable within the bounds [0, 1]" in decision.message
    assert "branch and bound over activation splits" in decision.message


def test_a_time_limit_gives_unknown_never_unreachable():
    from onnx import load

    model = load(MODELS / "digits_relu.onnx")
    s, _ = search(model, one_class(0))
    out = s.run(0.5)
    assert out.status.startswith("unknown") and out.x is None


def test_chains_with_max_pools_are_left_to_the_program():
    from test_solvers_exact_analysis import cnn

    p = problem(cnn(), {"distribution": reachable_distribution(cnn(), "probabilities")})
    ops, _ = piecewise_chain(p)
    assert not applies(ops)
