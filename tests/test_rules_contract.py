"""The rule contract (``onnxinv.rules.base``): rules of kinds the planner has never seen (defined
here) are used through what they declare: ``top_only``, ``free_directions``, ``smooth_inverse``."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    assert_solved,
    const,
    make_model,
    reachable_distribution,
    value_info,
)
from onnx import helper

from onnxinv import invert
from onnxinv.rules import Registry, load_plugins
from onnxinv.rules.base import Family, Interval, PointRule


class SinhRule(PointRule):
    """Sinh, written as a bare PointRule (not an ElementwiseRule): a kind the planner never saw."""

    op_type = "Sinh"
    versions = (9,)
    asked = 0

    def forward(self, x):
        return np.sinh(x)

    def forward_interval(self, lo, hi):
        return np.sinh(lo), np.sinh(hi)

    def preimage(self, y):
        return Family.point(np.arcsinh(np.asarray(y, dtype=np.float64)))

    def smooth_inverse(self):
        type(self).asked += 1
        return np.arcsinh


class GroupSoftmax(PointRule):
    """Softmax written from scratch: declares top_only and its free direction itself."""

    op_type = "Softmax"
    versions = (13,)
    top_only = True

    def forward(self, x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def output_domain(self):
        return Interval(0.0, 1.0, open=False)

    def free_directions(self):
        k = self.ctx.input_size
        return np.full((k, 1), 1 / np.sqrt(k))

    def preimage(self, y):
        self.check_domain(y)
        return Family(np.log(np.maximum(y, 1e-300)), self.free_directions())


@pytest.fixture
def registry():
    reg = load_plugins(Registry())
    reg.register(SinhRule, source="test")
    reg.register(GroupSoftmax, override=True, source="test")
    return reg


def _sinh_model(softmax_inside: bool = False):
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (6, 6)) + np.eye(6)
    w2 = rng.normal(0, 0.5, (6, 3))
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z"]),
             helper.make_node("Sinh", ["z"], ["h"])]  # fmt: skip
    last = "h"
    if softmax_inside:
        nodes.append(helper.make_node("Softmax", [last], ["s"], axis=-1))
        last = "s"
    nodes += [helper.make_node("Gemm", [last, "W2", "b2"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]  # fmt: skip
    inits = [const("W1", w1), const("b1", np.zeros(6)), const("W2", w2), const("b2", np.zeros(3))]
    return make_model(
        nodes, [value_info("x", ["N", 6])], [value_info("probs", ["N", 3])], inits, opset=17
    )


def test_rules_of_new_kinds_are_used_through_what_they_declare(registry):
    model = _sinh_model()
    p = reachable_distribution(model, "probabilities", seed=3, lo=0.2, hi=0.8)
    SinhRule.asked = 0
    result = invert(
        model, {"distribution": p}, method="backward", samples=8, bounds=(0, 1),
        registry=registry,
    )  # fmt: skip
    assert SinhRule.asked > 0  # the joint choice came from smooth_inverse(), not a class check
    assert set(result.methods) == {"backward"}  # no LM: every step was a rule
    assert_solved(model, result, np.array(p), "probabilities", bounds=(0, 1), n=8)
    assert len(np.unique(result.inputs.round(4), axis=0)) == 8
    plan = "\n".join(result.model["plan"])
    assert "Sinh" in plan and "opaque" not in plan


def test_top_only_is_asked_of_the_rule(registry):
    model = _sinh_model(softmax_inside=True)
    p = reachable_distribution(model, "probabilities", seed=3, lo=0.2, hi=0.8)
    result = invert(model, {"distribution": p}, method="auto", samples=4, registry=registry)
    plan = "\n".join(result.model["plan"])
    assert "Softmax inside the graph is solved numerically" in plan
    assert_solved(model, result, np.array(p), "probabilities", n=4)
