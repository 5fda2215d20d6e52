"""Targets with probabilities far below the tolerance (a saturated classifier's output).

A real input's output on a confident network has probabilities like 1e-15; a target file
floors them (1e-12, 1e-20). Matching such a probability's logit exactly asks for a logit
difference the input box often cannot produce, yet any logit that keeps the class below a
quarter of the tolerance gives the same check. The backward pass treats those classes as
inequalities; the core assertion is onnxruntime's: every returned input, run through the
original model, gives the target within tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import (
    MODELS,
    TARGETS,
    assert_solved,
    const,
    make_model,
    ort_outputs,
    softmax,
    value_info,
)
from onnx import helper

from onnxinv import invert
from onnxinv.load.model import load
from onnxinv.objective import TopRegion, build
from onnxinv.settings import Settings
from onnxinv.solvers.backward.plan import BackwardPass
from onnxinv.solvers.base import ModelProblem
from onnxinv.target import Target

BOUNDS = (0.0, 1.0)
RELU = MODELS / "digits_relu.onnx"
TINY = 1e-6  # probabilities below this are replaced by the floor in "set" targets


def floored(p: np.ndarray, floor: float, mode: str) -> list[float]:
    """``p`` with its tiny probabilities at ``floor``: raised to it ("max", as the benchmark
    does with zeros) or replaced by it ("set", every probability below :data:`TINY`)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    p = np.maximum(p, floor) if mode == "max" else np.where(p < TINY, floor, p)
    return (p / p.sum()).tolist()


def digit_output(digit: int) -> np.ndarray:
    data = np.load(MODELS / "digits_val.npz")
    x = data["x"][np.flatnonzero(data["y"] == digit)[:1]]
    return ort_outputs(RELU, x)[0]


def mlp(seed: int, tail: str | None, act: str = "Relu", scale: float = 6.0):
    """``x[N, 16] -> Gemm(24) -> act -> Gemm(6) (-> tail)``: random weights large enough that
    a random input's output is saturated (several probabilities below 1e-6)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, scale / 4, (16, 24))
    w2 = rng.normal(0, scale / np.sqrt(24), (24, 6))
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["a"]),
        helper.make_node(act, ["a"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["z" if tail else "y"]),
    ]
    if tail:
        nodes.append(helper.make_node(tail, ["z"], ["y"], axis=-1))
    inits = [const("W1", w1), const("b1", rng.normal(0, 0.1, 24))]
    inits += [const("W2", w2), const("b2", rng.normal(0, 0.1, 6))]
    return make_model(nodes, [value_info("x", ["N", 16])], [value_info("y", ["N", 6])], inits)


def probabilities(model, x: np.ndarray, tail: str | None) -> np.ndarray:
    y = ort_outputs(model, x)[0].astype(np.float64)
    return {"Softmax": y, "LogSoftmax": np.exp(y), None: softmax(y[None])[0]}[tail]


@pytest.mark.parametrize("floor", [1e-12, 1e-20])
@pytest.mark.parametrize(("digit", "mode"), [(3, "max"), (2, "max"), (3, "set"), (9, "set")])
def test_digits_relu_floored(digit, mode, floor):
    """A real digit's output with its tiny probabilities floored, on the ReLU MLP."""
    p = floored(digit_output(digit), floor, mode)
    result = invert(RELU, {"distribution": p}, samples=32, seed=0, bounds=BOUNDS, method="backward")
    assert_solved(RELU, result, np.array(p), "probabilities", bounds=BOUNDS, n=32)
    assert set(result.methods) == {"backward"}


@pytest.mark.parametrize("floor", [1e-12, 1e-20])
@pytest.mark.parametrize(
    ("seed", "tail", "act"),
    [(0, "Softmax", "Relu"), (1, "LogSoftmax", "Relu"), (2, None, "Relu"), (3, "Softmax", "Tanh")],
)
def test_small_mlp_floored(seed, tail, act, floor):
    """A saturated random input's output on a small network built here, tiny classes set to
    the floor: Softmax, LogSoftmax and logit outputs, piecewise-linear and smooth."""
    model = mlp(seed, tail, act)
    x = np.random.default_rng(seed).uniform(*BOUNDS, (1, 16))
    p = floored(probabilities(model, x, tail), floor, "set")
    assert min(p) == pytest.approx(floor, rel=1e-6)  # saturated: the floor is in the target
    space = {"Softmax": "probabilities", "LogSoftmax": "log-probabilities", None: "logits"}[tail]
    result = invert(model, {"distribution": p}, samples=24, seed=seed, bounds=BOUNDS,
                    method="backward")  # fmt: skip
    assert_solved(model, result, np.array(p), space, bounds=BOUNDS, n=24)
    assert set(result.methods) == {"backward"}


@pytest.mark.parametrize("target", ["floored", "digit3"])
def test_loose_rows_are_the_regions(target):
    """The chain solver relaxes exactly TopRegion's loose classes, and nothing for a target
    without any (the file target 0.9/0.011: the equations of before, unchanged)."""
    if target == "floored":
        spec = {"distribution": floored(digit_output(3), 1e-12, "max")}
    else:
        spec = json.loads((TARGETS / "digit3.json").read_text())
    loaded = load(str(RELU))
    objective = build(loaded, Target.from_dict(spec))
    problem = ModelProblem(
        Settings(bounds=BOUNDS), loaded, objective, deadline=None, max_memory=None
    )
    chain = BackwardPass(problem)._chain
    region = TopRegion.for_objective(objective)
    if target == "digit3":
        assert not region.loose.any() and chain._loose is None
        return
    D, slack, loose = chain._loose
    assert loose.any() and not loose.all()
    np.testing.assert_array_equal(loose, region.loose)
    np.testing.assert_array_equal(D, region.D)  # (no reshape above the Softmax)
    assert (slack[loose] > 0).all() and (slack[~loose] == 0).all()
