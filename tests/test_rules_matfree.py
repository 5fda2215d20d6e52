"""Linear layers pulled back without a matrix: LSQR on the operator and its transpose, exact
structured inverses (selections, disjoint means), and the whole backward pass on a model whose
convolution is above the dense limit.

The matrix-free path is forced on small layers by lowering ``linalg.DENSE_LIMIT`` just below
the layer's size, so that the dense SVD of the same layer is there to compare with. Every
inverse is judged by onnxruntime on the original one-node model (``test_rules``' cases and
harness), or on the whole model (``helpers.assert_solved``).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_solved, const, make_model, ort_outputs, value_info
from onnx import helper
from test_rules import BATCH, CASES, assert_same_output, prepare, reachable, run

import onnxinv
from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.rules import default_registry, linalg, matfree
from onnxinv.rules import spatial as cnv
from onnxinv.rules.linear import OnBasis

MAX_CONDITION = 1e6  # high enough that the dense SVD cuts nothing on these layers

OPERATOR_CASES = [
    pytest.param(c, c.opsets()[-1], id=c.name) for c in CASES if issubclass(c.rule, OnBasis)
]


@pytest.fixture
def matrix_free(monkeypatch):
    """``matrix_free(rule)``: from now on the rule is over the dense limit (by one entry)."""

    def force(rule):
        size = rule.ctx.input_size * rule.ctx.output_size
        monkeypatch.setattr(linalg, "DENSE_LIMIT", size - 1)
        assert rule.large and rule.dense() is None

    return force


@pytest.mark.parametrize(("c", "opset"), OPERATOR_CASES)
def test_adjoint_is_the_exact_transpose(c, opset):
    """What LSQR multiplies by is the transpose of the operator's matrix, column for column."""
    rule = prepare(c, opset).rule
    M, _ = rule.dense()
    eye = np.eye(rule.ctx.output_size)
    At = rule.rows(rule.adjoint, rule.ctx.output_shape)(eye)  # rows: Aᵀ e_j
    np.testing.assert_allclose(At, M, rtol=0, atol=1e-12 * max(1.0, np.abs(M).max()))


@pytest.mark.parametrize(("c", "opset"), OPERATOR_CASES)
def test_matrix_free_pullback_agrees_with_the_dense_one(c, opset, matrix_free):
    """Same particular solution, null directions inside the dense null space, same onto; and
    onnxruntime maps members of the matrix-free family back to the request."""
    p = prepare(c, opset)
    rule = p.rule
    _, y = reachable(p, c)
    y64 = y.astype(np.float64)
    M, _ = rule.dense()
    dense = rule.family(y64, MAX_CONDITION)
    dense_onto = rule.onto(MAX_CONDITION)
    N = linalg.null_basis(M)

    matrix_free(rule)
    inverse = rule._inverse(MAX_CONDITION)
    structured = rule.structured(MAX_CONDITION)
    assert (structured is None) == isinstance(inverse, matfree.LsqrInverse)
    fam = rule.family(y64, MAX_CONDITION)
    scale = max(1.0, np.abs(y64).max())
    assert rule.onto(MAX_CONDITION) == dense_onto
    np.testing.assert_allclose(fam.residual, dense.residual, atol=1e-8 * scale)  # float32's
    np.testing.assert_allclose(
        fam.v0, dense.v0, rtol=0, atol=1e-7 * max(1.0, np.abs(dense.v0).max())
    )
    np.testing.assert_allclose(fam.V.T @ fam.V, np.eye(fam.free), atol=1e-10)
    assert min(N.shape[1], matfree.null_budget(rule.ctx.input_size)) <= fam.free <= N.shape[1]
    if fam.free:
        assert np.linalg.norm(fam.V - N @ (N.T @ fam.V)) < 1e-7  # inside the null space
    x = fam.sample(p.rng, 0.5).reshape((BATCH, *c.shape))
    assert_same_output(c, run(p.sess, x), y)
    # The large forward (operator, no matrix) is onnxruntime's too.
    xr = p.rng.standard_normal((BATCH, *c.shape))
    np.testing.assert_allclose(rule.forward(xr), run(p.sess, xr), rtol=1e-5, atol=1e-5)


CHANNEL_EXPANDING = next(c for c in CASES if c.name == "conv2d-2to8-channels-pad1")


@pytest.mark.parametrize("path", ["dense", "matrix-free"])
def test_channel_expanding_conv_recovers_its_input_exactly(path, matrix_free):
    """2 → 8 channels, 3×3, pad 1, stride 1 is injective: the input comes back to round-off."""
    p = prepare(CHANNEL_EXPANDING, 13)
    rule = p.rule
    x0 = p.rng.standard_normal((BATCH, *CHANNEL_EXPANDING.shape))
    y = rule.forward(x0)  # float64, so the comparison is not limited by float32
    if path == "matrix-free":
        matrix_free(rule)
    assert not rule.onto(100.0) and rule.nullity(100.0) == 0
    fam = rule.family(y)
    assert fam.free == 0
    x = fam.v0.reshape(x0.shape)
    assert np.linalg.norm(x - x0) <= 1e-8 * np.linalg.norm(x0)
    assert_same_output(CHANNEL_EXPANDING, run(p.sess, x), run(p.sess, x0))


def _rules(model):
    part = partition(model_mod.load(model), default_registry())
    return [s.rule for b in part.blocks for s in b.steps]


def test_a_layer_whose_outputs_see_only_padding_is_not_onto(matrix_free):
    """A 1×1 conv with padding outputs its bias on the border: LSQR cannot reach a random
    output there, so the layer is not onto and an off-range request keeps a residual."""
    rng = np.random.default_rng(4)
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])
    model = make_model([node], [value_info("x", ["N", 3, 6, 6])], [value_info("y", ["N", 2, 8, 8])],
                       [const("W", rng.normal(size=(2, 3, 1, 1))), const("B", [0.5, -1.0])])  # fmt: skip
    (rule,) = _rules(model)
    matrix_free(rule)
    assert not rule.onto(100.0)
    y = ort_outputs(model, rng.normal(size=(2, 3, 6, 6))).astype(np.float64)
    fam = rule.family(y.reshape(2, 2, 8, 8))
    assert fam.residual.max() < 1e-8
    assert fam.free == matfree.null_budget(3 * 36)  # 3 → 2 channels: a null direction per pixel
    y[:, 0] += 1.0  # a border output the layer cannot produce
    assert rule.family(y.reshape(2, 2, 8, 8)).residual.min() > 0.9


def test_a_one_by_one_conv_is_cut_exactly_like_the_dense_svd(matrix_free):
    """A 1×1 conv whose channel matrix has singular values 1, 0.1 and 0.001: at the cut 100
    the smallest is dropped, by the dense SVD and by the per-pixel channel SVD alike."""
    rng = np.random.default_rng(6)
    U, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    V, _ = np.linalg.qr(rng.normal(size=(5, 3)))
    W = (U * [1.0, 0.1, 0.001]) @ V.T
    node = helper.make_node("Conv", ["x", "W"], ["y"])
    model = make_model([node], [value_info("x", ["N", 5, 4, 4])], [value_info("y", ["N", 3, 4, 4])],
                       [const("W", W.reshape(3, 5, 1, 1))])  # fmt: skip
    (rule,) = _rules(model)
    y = ort_outputs(model, rng.normal(size=(2, 5, 4, 4))).astype(np.float64).reshape(2, 3, 4, 4)
    dense, dense_onto = rule.family(y, 100.0), rule.onto(100.0)
    matrix_free(rule)
    assert isinstance(rule._inverse(100.0), matfree.PerPosition)
    fam = rule.family(y, 100.0)
    assert not dense_onto and not rule.onto(100.0)
    np.testing.assert_allclose(fam.v0, dense.v0, atol=1e-12)
    np.testing.assert_allclose(fam.residual, dense.residual, rtol=1e-9)
    assert dense.residual.min() > 1e-6  # the cut direction is off the range, for both


# ------------------------------------------------------------------------------ whole models


def _large_conv_model(seed: int = 0):
    """x (8×24×24) → Conv 8→4 (3×3, pad 1; a 2304 × 4608 map, over the 4M-entry limit) → SELU
    → Conv 4→2 (stride 2) → Flatten → Gemm → Softmax."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Selu", ["c1"], ["h"]),
        helper.make_node("Conv", ["h", "W2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
    ]
    inits = [
        const("W1", rng.normal(size=(4, 8, 3, 3)) / np.sqrt(72)),
        const("B1", 0.1 * rng.normal(size=4)),
        const("W2", rng.normal(size=(2, 4, 3, 3)) / np.sqrt(36)),
        const("G", rng.normal(size=(288, 10)) / np.sqrt(288)),
    ]
    return make_model(nodes, [value_info("x", ["N", 8, 24, 24])], [value_info("p", ["N", 10])],
                      inits)  # fmt: skip


def test_backward_inverts_a_model_with_a_conv_above_the_dense_limit():
    model = _large_conv_model()
    first = _rules(model)[0]
    assert isinstance(first, cnv.Conv) and first.large and first.dense() is None
    x = np.random.default_rng(1).uniform(0, 1, (1, 8, 24, 24))
    p = ort_outputs(model, x)[0].astype(np.float64)
    p /= p.sum()
    result = onnxinv.invert(model, {"distribution": p.tolist()}, method="backward", samples=6,
                            seed=0)  # fmt: skip
    assert set(result.methods) == {"backward"}
    assert result.model["jacobians"] == "none"  # no LM anywhere
    assert_solved(model, result, p, "probabilities", n=6)
    gaps = np.abs(result.inputs[:, None] - result.inputs[None]).reshape(36, -1).max(1)
    assert np.sort(gaps)[6] > 1e-2  # samples differ (the null space of the 8 → 4 conv)


def _slice_model():
    """x (2×8×8) → Slice [:, 2:6, ::2] (keeps 32 of 128 values) → Flatten → Gemm → Softmax."""
    rng = np.random.default_rng(5)
    i64 = np.int64
    nodes = [
        helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["c"]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=-1),
    ]
    inits = [const("s", [2, 0], i64), const("e", [6, 8], i64), const("a", [2, 3], i64),
             const("t", [1, 2], i64), const("G", rng.normal(size=(32, 5)))]  # fmt: skip
    return make_model(nodes, [value_info("x", ["N", 2, 8, 8])], [value_info("p", ["N", 5])], inits)


@pytest.mark.parametrize("path", ["dense", "matrix-free"])
def test_slice_dropped_values_are_free_and_inside_the_bounds(path, monkeypatch):
    """The 96 values Slice drops are free coordinates: every sample puts them inside [0, 1]
    (with the matrix-free directions, their common mean direction makes that possible)."""
    model = _slice_model()
    if path == "matrix-free":
        monkeypatch.setattr(linalg, "DENSE_LIMIT", 1000)  # Slice (4096 entries) over, Gemm not
        assert _rules(model)[0].large
    x = np.random.default_rng(2).uniform(0, 1, (1, 2, 8, 8))
    p = ort_outputs(model, x)[0].astype(np.float64)
    p /= p.sum()
    result = onnxinv.invert(model, {"distribution": p.tolist()}, method="backward", samples=8,
                            seed=0, bounds=(0, 1))  # fmt: skip
    assert_solved(model, result, p, "probabilities", n=8, bounds=(0, 1))
    dropped = np.ones((2, 8, 8), bool)
    dropped[:, 2:6, ::2] = False
    assert np.ptp(result.inputs[:, dropped], axis=0).max() > 1e-2  # they vary between samples
