"""The chain model (``onnxinv.partition.chain``): composed affine maps, activations, selections.

Core assertions: :func:`compose` is the affine rules applied in order (checked on values),
refuses what it cannot hold densely, and returns a single rule's own matrix; :func:`chain_of`
composes each run of affine steps with it (the ops compute what onnxruntime does), keeps
activations and max pools as their own ops and a Softmax as the top, and declines a
piecewise-linear activation that no affine map above mixes.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import const, make_model, ort_outputs, value_info
from onnx import helper
from test_partition_bounds import chain
from test_solvers_exact_analysis import cnn, mlp

from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.partition.chain import (
    Activation,
    Affine,
    Select,
    chain_of,
    compose,
    is_permutation,
    rearranges,
)
from onnxinv.rules import default_registry
from onnxinv.rules.base import AffineRule
from onnxinv.rules.linalg import DENSE_LIMIT


def block_of(model):
    part = partition(model_mod.load(model), default_registry())
    assert [b.kind for b in part.blocks] == ["invertible"]
    return part.blocks[0]


def test_compose_applies_the_rules_in_order():
    steps = block_of(chain("Tanh")).steps
    rules = [s.rule for s in steps[2:4]]  # Mul, then Gemm
    assert [r.op_type for r in rules] == ["Mul", "Gemm"]
    M, c = compose(rules)
    x = np.random.default_rng(0).normal(size=(7, 4))
    want = rules[1].forward(rules[0].forward(x)).reshape(7, -1)
    np.testing.assert_allclose(x @ M.T + c, want, rtol=1e-12, atol=1e-12)


def test_compose_of_one_rule_is_its_own_matrix():
    rule = block_of(chain("Tanh")).steps[0].rule
    M, c = compose([rule])
    dense = rule.dense()
    assert M is dense[0] and c is dense[1]


class _Fake:
    """An affine rule's interface: a context with sizes and an optional dense matrix."""

    def __init__(self, dense=True, size=2):
        self._dense = (np.eye(size), np.zeros(size)) if dense else None
        self.ctx = type("ctx", (), {"input_size": size, "output_size": size})()

    def dense(self):
        return self._dense


def test_compose_declines_what_it_cannot_hold_densely():
    assert compose([]) is None
    assert compose([_Fake(), _Fake(dense=False)]) is None
    big = int(np.sqrt(DENSE_LIMIT)) + 1
    assert compose([_Fake(size=big)]) is None
    assert compose([_Fake(), _Fake()]) is not None


def test_chain_of_composes_each_run_of_affine_steps():
    """Gemm | Tanh | Mul, Gemm | Tanh | Add: three affine ops, each its run composed, and
    together with the activations they compute what onnxruntime does."""
    model = chain("Tanh")
    block = block_of(model)
    ops, top = chain_of(block)
    assert [type(o) for o in ops] == [Affine, Activation, Affine, Activation, Affine]
    assert top == []
    steps = block.steps
    for op, run in ((ops[0], steps[:1]), (ops[2], steps[2:4]), (ops[4], steps[5:])):
        assert all(isinstance(s.rule, AffineRule) for s in run)
        M, c = compose([s.rule for s in run])
        np.testing.assert_array_equal(op.M, M)
        np.testing.assert_array_equal(op.c, c)
        assert op.M.flags.c_contiguous
    x = np.random.default_rng(1).uniform(0, 1, (6, 5))
    v = x
    for op in ops:
        v = v @ op.M.T + op.c if isinstance(op, Affine) else op.rule.forward(v).reshape(6, -1)
    np.testing.assert_allclose(v, ort_outputs(model, x), rtol=1e-4, atol=1e-4)


def test_chain_of_keeps_a_softmax_as_the_top():
    ops, top = chain_of(block_of(mlp([5, 4, 3], act="Tanh")))
    assert [type(o) for o in ops] == [Affine, Activation, Affine]
    assert [s.rule.op_type for s in top] == ["Softmax"]


def test_chain_of_declines_a_piecewise_activation_with_nothing_to_mix_it():
    """A ReLU whose outputs no affine map above mixes (here: only the Softmax) is left to the
    greedy pass: no chain."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Gemm", ["x", "W", "b"], ["z"]),
        helper.make_node("Relu", ["z"], ["h"]),
        helper.make_node("Softmax", ["h"], ["y"], axis=-1),
    ]
    model = make_model(
        nodes,
        [value_info("x", ["N", 4])],
        [value_info("y", ["N", 3])],
        [const("W", rng.normal(size=(4, 3))), const("b", np.zeros(3))],
    )
    assert chain_of(block_of(model)) is None


def test_chain_of_keeps_a_max_pool_as_a_selection():
    ops, _ = chain_of(block_of(cnn()))
    assert [type(o) for o in ops] == [Affine, Activation, Select, Affine]
    assert ops[2].n_in == 32


@pytest.mark.parametrize(
    "M, want",
    [
        (np.eye(3)[[2, 0, 1]], True),
        (np.eye(3), True),
        (np.array([[1.0, 1.0], [0.0, 1.0]]), False),
        (2 * np.eye(2), False),
    ],
)
def test_is_permutation(M, want):
    assert is_permutation(M) is want


def test_a_flatten_only_rearranges_and_a_gemm_mixes():
    steps = {s.rule.op_type: s.rule for s in block_of(cnn()).steps}
    assert rearranges(steps["Flatten"])
    assert not rearranges(steps["Gemm"])
    assert not rearranges(steps["Relu"])  # (not an affine rule at all)
