"""Surrogate ReLU derivatives: exact values, a slope on the inactive side in every derivative,
and LM that no longer stalls where all units feeding an output are off."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_solved, const, make_model, ort_outputs, value_info
from onnx import helper
from torch import nn

import onnxinv
import onnxinv.solvers.residual as residual_mod
from onnxinv.errors import UnreachableTargetError
from onnxinv.solvers.surrogate import RELU_SLOPE, SurrogateReLU, surrogate_relus


@pytest.mark.parametrize("slope", [0.1, 0.5])
def test_values_are_exact_and_every_derivative_has_the_slope(slope):
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 3.0]], dtype=torch.float64, requires_grad=True)
    f = SurrogateReLU(slope)
    y = f(x)
    torch.testing.assert_close(y, torch.relu(x))
    want = torch.tensor([[slope, slope, slope, 1.0, 1.0]], dtype=torch.float64)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, want)
    v = torch.ones_like(x)
    _, tangent = torch.func.jvp(f, (x.detach(),), (v,))  # forward mode
    torch.testing.assert_close(tangent, want)
    batched = torch.func.vmap(f)(x.detach().repeat(3, 1))
    torch.testing.assert_close(batched, torch.relu(x.detach()).repeat(3, 1))
    # double-vjp (J·v where an operator lacks forward mode): the same slope
    u0 = torch.zeros_like(y, requires_grad=True)
    (gx,) = torch.autograd.grad(f(x), x, grad_outputs=u0, create_graph=True)
    (jv,) = torch.autograd.grad(gx, u0, grad_outputs=v)
    torch.testing.assert_close(jv, want)


def test_every_relu_inside_is_swapped_and_nothing_else():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.ReLU(), nn.LeakyReLU()))
    assert surrogate_relus(m) == 2
    kinds = [type(x).__name__ for x in m.modules()]
    assert kinds.count("SurrogateReLU") == 2 and "ReLU" not in kinds and "LeakyReLU" in kinds
    assert surrogate_relus(m) == 0  # (idempotent)


def _corner_model():
    """Gemm → Relu → Gemm → Sigmoid, whose hidden units are all off over two thirds of the box
    [0, 1]^8 (biases -1.5): from such a start the output sits at sigmoid(bias)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["y"]),
    ]
    init = [
        const("w1", np.abs(rng.normal(size=(8, 6))) / 3),
        const("b1", np.full(6, -1.5)),
        const("w2", rng.normal(size=(6, 2))),
        const("b2", np.zeros(2)),
    ]
    return make_model(nodes, [value_info("x", ["N", 8])], [value_info("y", ["N", 2])], init)


def test_lm_moves_outputs_whose_units_are_all_off(monkeypatch):
    model = _corner_model()
    x = np.full((1, 8), 0.9, dtype=np.float32)  # (near the corner where units are on)
    y = ort_outputs(model, x)[0].astype(np.float64)
    target = {"values": y.tolist()}
    kwargs = dict(samples=4, method="forward", bounds=(0, 1), seed=0, restarts=0, max_iter=30)
    res = onnxinv.invert(model, target, **kwargs)
    assert_solved(model, res, y, "values", bounds=(0, 1), n=4)
    # the same runs with exact ReLU derivatives stall where they start
    monkeypatch.setattr(residual_mod, "surrogate_relus", lambda module: 0)
    try:
        verified = int(onnxinv.invert(model, target, **kwargs).verified.sum())
    except UnreachableTargetError:
        verified = 0
    assert verified < 4 and RELU_SLOPE > 0
