"""Relu, Sign, Shrink, MaxPool, Max and Min: operators whose preimage of a point is a set.

Each one-node model is built here with ``onnx.helper``; the target is onnxruntime's output on a
random input, so it is reachable. ``onnxinv.invert`` must return 4 inputs that a fresh
onnxruntime session maps to the target within 1e-4, pairwise different (the rules draw a
random member of the preimage set). The backend test models of the installed onnx wheel that
are a single such operator must verify every sample too. Max and Min are inverted along one
input with the others constant (the backend's two-input models with the second one fixed).
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import backend_case, session
from onnx import TensorProto, helper, numpy_helper
from onnx.version_converter import convert_version

import onnxinv
from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.rules import OutsideDomain, default_registry
from onnxinv.rules import piecewise as pw

OPSET = 22
SAMPLES = 4
TOL = 1e-4

# (id, op, attributes, per-sample input shape (C, *spatial))
CONFIGS = [
    ("relu", "Relu", {}, (3, 4)),
    ("sign", "Sign", {}, (3, 4)),
    ("shrink-default", "Shrink", {}, (3, 4)),
    ("shrink-bias0.3-lambd0.8", "Shrink", {"bias": 0.3, "lambd": 0.8}, (3, 4)),
    ("shrink-bias2-lambd0.5", "Shrink", {"bias": 2.0, "lambd": 0.5}, (3, 4)),
    ("maxpool-1d-k3-overlap", "MaxPool", {"kernel_shape": [3]}, (2, 9)),
    (
        "maxpool-1d-k3-s2-pads-dilation",
        "MaxPool",
        {"kernel_shape": [3], "strides": [2], "pads": [1, 2], "dilations": [2]},
        (2, 11),
    ),
    (
        "maxpool-1d-k2-s2-ceil",
        "MaxPool",
        {"kernel_shape": [2], "strides": [2], "ceil_mode": 1},
        (2, 7),
    ),
    ("maxpool-2d-k2-s2", "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, (3, 6, 6)),
    (
        "maxpool-2d-k3-s2-pads",
        "MaxPool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        (3, 7, 7),
    ),
    (
        "maxpool-2d-dilation-asym-pads-ceil",
        "MaxPool",
        {
            "kernel_shape": [2, 3],
            "strides": [1, 2],
            "dilations": [2, 1],
            "pads": [0, 1, 1, 0],
            "ceil_mode": 1,
        },
        (2, 7, 8),
    ),
    (
        "maxpool-2d-same-upper-s2",
        "MaxPool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
        (2, 6, 5),
    ),
    (
        "maxpool-2d-same-lower",
        "MaxPool",
        {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER"},
        (2, 5, 5),
    ),
    (
        "maxpool-2d-same-upper-dilation",
        "MaxPool",
        {"kernel_shape": [2, 2], "dilations": [2, 2], "auto_pad": "SAME_UPPER"},
        (1, 6, 5),
    ),
    (
        "maxpool-2d-valid-s2",
        "MaxPool",
        {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "VALID"},
        (1, 7, 6),
    ),
    (
        "maxpool-3d-k2-s2",
        "MaxPool",
        {"kernel_shape": [2, 2, 2], "strides": [2, 2, 2]},
        (2, 4, 4, 4),
    ),
    (
        "maxpool-3d-pads-dilation",
        "MaxPool",
        {"kernel_shape": [3, 2, 2], "pads": [1, 0, 1, 1, 1, 0], "dilations": [1, 2, 1]},
        (1, 5, 5, 4),
    ),
    (
        "maxpool-3d-same-lower-s2",
        "MaxPool",
        {"kernel_shape": [2, 3, 2], "strides": [2, 2, 2], "auto_pad": "SAME_LOWER"},
        (1, 5, 4, 3),
    ),
]
BATCHES = ["N", 2]  # symbolic batch, or a fixed batch of 2 (one sample of two rows)


def checked(graph: onnx.GraphProto) -> onnx.ModelProto:
    """``graph`` as a model at ``OPSET``, shape-inferred and passing the full checker."""
    imports = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = helper.find_min_ir_version_for(imports)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def one_node(op: str, attrs: dict, shape: tuple[int, ...], batch) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        f"single_{op}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return checked(graph)


def feed_shape(sess: ort.InferenceSession) -> list[int]:
    """The declared input shape with symbolic dimensions at 1 (one sample)."""
    return [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]


def assert_reproduces(model: onnx.ModelProto, result, target: np.ndarray, n: int = SAMPLES):
    """A fresh onnxruntime session maps every returned input to the target; all differ."""
    sess = session(model)
    shape, name = feed_shape(sess), sess.get_inputs()[0].name
    x = np.asarray(result.inputs)
    assert len(x) == n and x.dtype == np.float32 and np.isfinite(x).all()
    for xi in x:
        got = sess.run(None, {name: xi.reshape(shape)})[0]
        err = np.abs(got.astype(np.float64).ravel() - target.astype(np.float64).ravel()).max()
        assert err <= TOL, f"onnxruntime error {err:g}"
    for i, j in itertools.combinations(range(n), 2):
        assert np.abs(x[i] - x[j]).max() > 1e-6, f"samples {i} and {j} are the same"


@pytest.mark.parametrize("batch", BATCHES, ids=["batchN", "batch2"])
@pytest.mark.parametrize(
    ("op", "attrs", "shape"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS]
)
def test_reachable_target_inverted_exactly(op, attrs, shape, batch):
    model = one_node(op, attrs, shape, batch)
    sess = session(model)
    rng = np.random.default_rng(7)
    x0 = (2 * rng.standard_normal(feed_shape(sess))).astype(np.float32)
    target = sess.run(None, {"x": x0})[0]
    result = onnxinv.invert(model, {"values": target.ravel().tolist()}, samples=SAMPLES, seed=0)
    assert_reproduces(model, result, target)
    assert result.all_verified
    assert set(result.methods) == {"backward"}  # the rules alone, no Levenberg–Marquardt


def _rule(model: onnx.ModelProto):
    part = partition(model_mod.load(model), default_registry())
    ((step,),) = [b.steps for b in part.blocks]
    assert step.rule is not None, step.reason
    return step.rule


def test_maxpool_without_preimage_is_refused():
    """Windows {0,1}, {0,1,2}, {1,2}: the middle one cannot have a larger maximum than both
    others, since each of its entries lies in one of them too."""
    model = one_node("MaxPool", {"kernel_shape": [3], "pads": [1, 1]}, (1, 3), "N")
    rule = _rule(model)
    assert isinstance(rule, pw.MaxPool)
    y = np.array([[1.0, 2.0, 1.0]])
    with pytest.raises(OutsideDomain, match="MaxPool"):
        rule.sample_preimage(y, np.random.default_rng(0), 0.1)
    with pytest.raises(OutsideDomain, match="MaxPool"):
        rule.preimage(y)
    # The fallback the planner takes is the largest reachable output below the request.
    np.testing.assert_array_equal(rule.nearest(y), [[1.0, 1.0, 1.0]])
    ok = np.array([[1.0, 2.0, 2.0]])  # reachable: x2 = 2, x0 and x1 ≤ 1, one of them at 1
    x = rule.sample_preimage(ok, np.random.default_rng(0), 0.1).v0
    np.testing.assert_array_equal(rule.forward(x.reshape(1, 1, 3)).reshape(1, -1), ok)


def test_maxpool_indices_output_is_opaque():
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2])
    graph = helper.make_graph(
        [node],
        "pool_with_indices",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("idx", TensorProto.INT64, None),
        ],
    )
    imports = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = helper.find_min_ir_version_for(imports)
    part = partition(model_mod.load(model), default_registry())
    assert [b.kind for b in part.blocks] == ["opaque"]
    assert "Indices" in part.first_without_rule.reason


# ----------------------------------------------------------------- onnx backend test models

BACKEND_MODELS = [
    "simple/test_single_relu_model",
    "simple/test_sign_model",
    "simple/test_shrink",
    "pytorch-converted/test_ReLU",
    "pytorch-converted/test_MaxPool1d",
    "pytorch-converted/test_MaxPool1d_stride",
    "pytorch-converted/test_MaxPool2d",
    "pytorch-converted/test_MaxPool3d",
    "pytorch-converted/test_MaxPool3d_stride",
    "pytorch-converted/test_MaxPool3d_stride_padding",
    "pytorch-converted/test_MaxPool1d_stride_padding_dilation",
    "pytorch-converted/test_MaxPool2d_stride_padding_dilation",
    "pytorch-operator/test_operator_maxpool",
]

SINGLE_POINT = {"simple/test_single_relu_model"}  # its target has exactly one preimage


@pytest.mark.parametrize("name", BACKEND_MODELS)
def test_backend_model_verifies(name: str):
    """The model's own output on its test input is reached by every sample."""
    model, _, (target,) = backend_case(name)
    # SINGLE_POINT: every output is positive, so x = y is the only preimage and 4 distinct
    # samples do not exist; ask for the one there is.
    n = 1 if name in SINGLE_POINT else SAMPLES
    result = onnxinv.invert(model, {"values": target.ravel().tolist()}, samples=n, seed=0)
    if name in SINGLE_POINT:
        assert (target > 0).all()
        np.testing.assert_array_equal(result.inputs.ravel(), target.ravel())
    assert result.all_verified, result
    assert_reproduces(model, result, target, n)


# ------------------------------------------------------- Max/Min along one input, others constant

EXTREMUM_SHAPE = (3, 4)  # per-sample (C, W)
CONSTANT_SHAPES = {"scalar": (), "per-channel": (3, 1), "full": EXTREMUM_SHAPE}


def extremum_model(op: str, n_const: int, c_shape: tuple[int, ...], batch, rng) -> onnx.ModelProto:
    """``op`` of ``x`` and ``n_const`` random constants of shape ``c_shape`` (data in the middle
    when there are two)."""
    names = [f"c{i}" for i in range(n_const)]
    inits = [
        numpy_helper.from_array(rng.standard_normal(c_shape).astype(np.float32), n) for n in names
    ]
    inputs = [*names[:1], "x", *names[1:]] if n_const == 2 else ["x", *names]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"])],
        f"single_{op}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *EXTREMUM_SHAPE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return checked(graph)


@pytest.mark.parametrize("batch", BATCHES, ids=["batchN", "batch2"])
@pytest.mark.parametrize("c_shape", CONSTANT_SHAPES.values(), ids=list(CONSTANT_SHAPES))
@pytest.mark.parametrize("n_const", [1, 2], ids=["1const", "2const"])
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_with_constants_inverted_exactly(op, n_const, c_shape, batch):
    rng = np.random.default_rng(11)
    model = extremum_model(op, n_const, c_shape, batch, rng)
    rule = _rule(model)
    assert isinstance(rule, pw.Max if op == "Max" else pw.Min)
    sess = session(model)
    x0 = rng.standard_normal(feed_shape(sess)).astype(np.float32)
    target = sess.run(None, {"x": x0})[0]
    clipped = target != x0
    assert clipped.any() and not clipped.all()  # some entries sit at the constant, some not
    result = onnxinv.invert(
        model, {"values": target.ravel().tolist()}, samples=SAMPLES, seed=0, method="backward"
    )
    assert_reproduces(model, result, target)
    assert result.all_verified
    assert set(result.methods) == {"backward"}
    # Entries above (Max) or below (Min) the constant are determined; clipped ones are free.
    x = np.asarray(result.inputs).reshape(SAMPLES, *target.shape)
    assert (x[:, ~clipped] == target[~clipped]).all()
    assert (np.ptp(x[:, clipped], axis=0) > 0).all()


@pytest.mark.parametrize(
    ("inputs", "c_shape", "reason"),
    [
        (["x", "x"], None, "two or more data tensors"),
        (["x", "c"], (3, 4), "broadcast the data to a larger shape"),
    ],
    ids=["two-data", "data-broadcast"],
)
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_not_invertible_is_opaque(op, inputs, c_shape, reason):
    inits = [] if c_shape is None else [numpy_helper.from_array(np.ones(c_shape, np.float32), "c")]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"])],
        f"single_{op}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    imports = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = helper.find_min_ir_version_for(imports)
    part = partition(model_mod.load(model), default_registry())
    assert [b.kind for b in part.blocks] == ["opaque"]
    assert reason in part.first_without_rule.reason


def _upgraded_opset(notes: list[str]) -> int | None:
    """The opset onnxinv upgraded the model to (and verified on), from its note; None if not."""
    for note in notes:
        found = re.search(r"upgraded from opset \d+ to (\d+)", note)
        if found:
            return int(found.group(1))
    return None


@pytest.mark.parametrize("name", ["test_operator_max", "test_operator_min"])
def test_backend_max_min_with_second_input_fixed(name: str):
    """Input "0" inverted with "1" held at its test value, checked on the model onnxinv ran."""
    model, (x0, x1), _ = backend_case(f"pytorch-operator/{name}")
    try:
        target = session(model).run(None, {"0": x0, "1": x1})[0]
    except Exception:  # an opset-6 kernel onnxruntime may not have
        target = session(convert_version(model, 13)).run(None, {"0": x0, "1": x1})[0]
    result = onnxinv.invert(
        model,
        {"values": target.ravel().tolist()},
        input="0",
        fixed={"1": x1},
        samples=SAMPLES,
        seed=0,
        method="backward",
    )
    assert result.all_verified, result
    assert set(result.methods) == {"backward"}
    opset = _upgraded_opset(result.notes)
    sess = session(model if opset is None else convert_version(model, opset))
    x = np.asarray(result.inputs)
    assert len(x) == SAMPLES
    for xi in x:
        got = sess.run(None, {"0": xi.reshape(x0.shape), "1": x1})[0]
        assert np.abs(got.astype(np.float64) - target).max() <= TOL
    for i, j in itertools.combinations(range(SAMPLES), 2):
        assert np.abs(x[i] - x[j]).max() > 1e-6, f"samples {i} and {j} are the same"
