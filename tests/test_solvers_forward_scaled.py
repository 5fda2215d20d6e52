"""The forward pass's residual in the check's units, and per-row softmax targets on logits.

* :class:`ScaledResidual` is a one-to-one linear map of centred residuals: its values,
  Jacobians and matrix-free products agree with each other and with finite differences.
* ``Objective.scaling`` is on only where most target probabilities lie below the tolerance.
* A ``values`` target made of per-step distributions is solved on the logits, row by row, and
  verified by onnxruntime; the endgame on the scaled residual runs where scaling is on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_solved, const, make_model, ort_outputs, value_info
from onnx import helper

import onnxinv
from onnxinv.convert import to_torch
from onnxinv.load.model import load
from onnxinv.objective import build, softmax_rows
from onnxinv.solvers.forward.scaled import ScaledResidual
from onnxinv.solvers.forward.solver import ForwardSolver
from onnxinv.solvers.residual import TorchResidual
from onnxinv.target import Target


def _classifier(n_in: int, classes: int, gain: float, seed: int = 0):
    """Gemm → Tanh → Gemm → Softmax with logits spread by ``gain``."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "w2", "b2"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
    ]
    init = [
        const("w1", rng.normal(size=(n_in, 24)) / np.sqrt(n_in)),
        const("b1", np.zeros(24)),
        const("w2", gain * rng.normal(size=(24, classes)) / np.sqrt(24)),
        const("b2", np.zeros(classes)),
    ]
    return make_model(
        nodes, [value_info("x", ["N", n_in])], [value_info("p", ["N", classes])], init
    )


def _sequence(n_in: int = 64, steps: int = 4, chars: int = 40, seed: int = 1):
    """Gemm to steps × chars logits → Reshape → Softmax per step (a recognizer's head)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "w2", "b2"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["zs"]),
        helper.make_node("Softmax", ["zs"], ["p"], axis=-1),
    ]
    init = [
        const("w", rng.normal(size=(n_in, 48)) / np.sqrt(n_in)),
        const("b", np.zeros(48)),
        const("w2", 12 * rng.normal(size=(48, steps * chars)) / np.sqrt(48)),
        const("b2", np.zeros(steps * chars)),
        const("shape", [-1, steps, chars], np.int64),
    ]
    out = value_info("p", ["N", steps, chars])
    return make_model(nodes, [value_info("x", ["N", n_in])], [out], init)


def _own_output(model, n_in: int, seed: int = 5) -> np.ndarray:
    """The model's output (one sample's shape) on a random input in [-1, 1]."""
    x = np.random.default_rng(seed).uniform(-1, 1, (1, n_in)).astype(np.float32)
    shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim[1:]]
    return ort_outputs(model, x)[0].astype(np.float64).reshape(shape)


def _problem_parts(model, target: dict):
    loaded = load(model)
    obj = build(loaded, Target.from_dict(target))
    module = to_torch(loaded.logits_model)
    inner = TorchResidual(module, obj, (-1, loaded.input_size), True)
    return loaded, obj, inner


@pytest.mark.parametrize("rows_model", [False, True])
def test_scaled_residual_is_a_consistent_one_to_one_map(rows_model):
    if rows_model:
        model, n = _sequence(), 64
        y = _own_output(model, n)
        target = {"values": y.tolist()}
    else:
        model, n = _classifier(300, 200, gain=10.0), 300
        y = _own_output(model, n)
        target = {"distribution": (y / y.sum()).tolist()}
    loaded, obj, inner = _problem_parts(model, target)
    assert obj.solve_on == "logits"
    scaled = ScaledResidual(inner, *obj.scaling())
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, n)))
    r = inner.value(x)
    rw = scaled.value(x)
    torch.testing.assert_close(scaled.unscale(rw), r, rtol=1e-9, atol=1e-9)
    # the same zero set, and the check computed from either agrees
    torch.testing.assert_close(obj.error_from_residual(scaled.unscale(rw)),
                               obj.error_from_residual(r))  # fmt: skip
    rw2, jw = scaled.value_and_jacobian(x)
    torch.testing.assert_close(rw2, rw)
    v = torch.from_numpy(np.random.default_rng(1).normal(size=(3, n))) * 1e-6
    fd = (scaled.value(x + v) - scaled.value(x - v)) / 2
    jv = torch.einsum("bmn,bn->bm", jw, v)
    assert ((fd - jv).norm() / jv.norm()).item() < 1e-4
    op = scaled.linearise(x)
    u = torch.from_numpy(np.random.default_rng(2).normal(size=(3, scaled.m)))
    v = torch.from_numpy(np.random.default_rng(3).normal(size=(3, n)))
    # (products run on the model's float32 copy: agreement to float32's digits)
    for got, want in ((op.matvec(v), torch.einsum("bmn,bn->bm", jw, v)),
                      (op.rmatvec(u), torch.einsum("bmn,bm->bn", jw, u))):  # fmt: skip
        assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_scaling_only_where_most_probabilities_are_below_the_tolerance():
    wide = _classifier(300, 200, gain=10.0)
    y = _own_output(wide, 300)
    obj = build(load(wide), Target.from_dict({"distribution": (y / y.sum()).tolist()}))
    s, p = obj.scaling()
    assert (p < obj.tolerance).mean() >= 0.5
    np.testing.assert_allclose(s, np.maximum(p.ravel(), obj.tolerance) / obj.tolerance)
    narrow = _classifier(16, 10, gain=1.0)
    obj = build(load(narrow), Target.from_dict({"class": 3, "confidence": 0.9}))
    assert obj.scaling() is None


def test_values_rows_that_are_distributions_are_solved_on_the_logits():
    model = _sequence()
    y = _own_output(model, 64)
    loaded = load(model)
    assert softmax_rows(loaded, y) == 4
    obj = build(loaded, Target.from_dict({"values": y.tolist()}))
    assert (obj.solve_on, obj.transform, obj.rows) == ("logits", "row-centre", 4)
    bent = y.copy()
    bent[0, 0] += 0.2  # (a row that does not sum to one: matched on the raw output)
    assert softmax_rows(loaded, bent) is None
    assert build(loaded, Target.from_dict({"values": bent.tolist()})).solve_on == "output"


@pytest.mark.parametrize("method", ["forward", "auto"])
def test_a_per_step_distribution_target_verifies(method):
    model = _sequence()
    y = _own_output(model, 64)
    res = onnxinv.invert(model, {"values": y.tolist()}, samples=4, method=method,
                         bounds=(-1, 1), seed=0)  # fmt: skip
    assert_solved(model, res, y.ravel(), "values", bounds=(-1, 1), n=4)


def test_the_endgame_runs_where_scaling_is_on_and_every_sample_verifies(monkeypatch):
    model = _classifier(300, 200, gain=10.0)
    y = _own_output(model, 300)
    p = y / y.sum()
    calls: list[int] = []
    endgame = ForwardSolver._endgame

    def spy(self, out, starts):
        calls.append(int((~out.converged).sum()))
        return endgame(self, out, starts)

    monkeypatch.setattr(ForwardSolver, "_endgame", spy)
    res = onnxinv.invert(model, {"distribution": p.tolist()}, samples=4, method="forward",
                         bounds=(-1, 1), seed=0)  # fmt: skip
    assert calls
    assert_solved(model, res, p, "probabilities", bounds=(-1, 1), n=4)


def _sigmoid_map(n_in: int = 40, outputs: int = 12, gain: float = 8.0, seed: int = 2):
    """Gemm → Tanh → Gemm → Sigmoid: a dense-prediction head whose outputs saturate."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("Gemm", ["t", "w2", "b2"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ]
    init = [
        const("w1", rng.normal(size=(n_in, 20)) / np.sqrt(n_in)),
        const("b1", np.zeros(20)),
        const("w2", gain * rng.normal(size=(20, outputs)) / np.sqrt(20)),
        const("b2", np.zeros(outputs)),
    ]
    out = value_info("y", ["N", outputs])
    return make_model(nodes, [value_info("x", ["N", n_in])], [out], init)


def test_values_below_a_sigmoid_are_solved_on_its_input_and_verify():
    model = _sigmoid_map()
    y = _own_output(model, 40)
    assert y.min() < 1e-3 and y.max() > 0.98  # (saturated entries: flat on the output)
    loaded = load(model)
    obj = build(loaded, Target.from_dict({"values": y.tolist()}))
    assert (loaded.tail, obj.solve_on, obj.transform) == ("Sigmoid", "logits", "logit")
    np.testing.assert_allclose(obj.residual_target, np.log(y / (1 - y)).ravel(), rtol=1e-9)
    r = torch.from_numpy(np.random.default_rng(0).normal(size=(2, obj.size)))
    want = 1 / (1 + np.exp(-(r.numpy() + obj.residual_target))) - y.ravel()
    np.testing.assert_allclose(obj.difference_from_residual(r).numpy(), want, rtol=1e-9)
    res = onnxinv.invert(model, {"values": y.tolist()}, samples=4, method="forward",
                         bounds=(-1, 1), seed=0)  # fmt: skip
    assert_solved(model, res, y.ravel(), "values", bounds=(-1, 1), n=4)


def test_a_diagonal_scaling_round_trips():
    model = _sigmoid_map()
    loaded = load(model)
    obj = build(loaded, Target.from_dict({"values": _own_output(model, 40).tolist()}))
    inner = TorchResidual(to_torch(loaded.logits_model), obj, (-1, 40), True)
    s = np.linspace(1.0, 50.0, obj.size)
    scaled = ScaledResidual(inner, s, None)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, 40)))
    r, rw = inner.value(x), scaled.value(x)
    torch.testing.assert_close(rw, r * torch.from_numpy(s))
    torch.testing.assert_close(scaled.unscale(rw), r)
    _, jw = scaled.value_and_jacobian(x)
    _, j = inner.value_and_jacobian(x)
    torch.testing.assert_close(jw, j * torch.from_numpy(s)[None, :, None])
