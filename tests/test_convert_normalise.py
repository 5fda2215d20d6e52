"""Tests of onnxinv.convert.normalise: what exporters write, rewritten so that onnx2torch converts it.

Every case checks the two things that matter: onnxruntime gives the same output on the
normalised graph as on the original, and the converted module gives onnxruntime's output with
no node left to fall back to onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import export_batched
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from onnxinv.convert import fallback_nodes, normalise, to_torch
from onnxinv.convert import fold as fold_module
from onnxinv.load.runtime import session

RNG_SEED = 3


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model.SerializeToString())
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def weights(*shape: int, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) / 2).astype(dtype)


def build(
    nodes: list[onnx.NodeProto],
    x_shape: list,
    initializers: list[onnx.TensorProto] = (),
    opset: int = 13,
    ir_version: int = 8,
    extra_inputs: list[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def sample(model: onnx.ModelProto, batch: int = 3) -> np.ndarray:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
    return np.random.default_rng(RNG_SEED).random(shape).astype(np.float32)


def assert_normalised_and_converted(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT agrees on the normalised graph, and the module matches ORT without fallbacks."""
    x = sample(model)
    expected = ort_run(model, x)
    normalised = normalise(model)
    np.testing.assert_allclose(ort_run(normalised, x), expected, rtol=1e-6, atol=1e-6)
    module = to_torch(model, sample_input=x)
    assert fallback_nodes(module) == []
    with torch.no_grad():
        actual = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    return normalised


def constant(name: str, array: np.ndarray | None = None, **attrs) -> onnx.NodeProto:
    """A Constant node: ``value`` from ``array``, or one of the value_* attributes."""
    if array is not None:
        attrs = {"value": numpy_helper.from_array(np.asarray(array), name)}
    return helper.make_node("Constant", [], [name], name=f"const_{name}", **attrs)


# -------------------------------------------------------------------------- exporter patterns


def paddle_conv() -> onnx.ModelProto:
    """paddle2onnx: every weight a Constant node (onnx2torch: KeyError 'conv1_weights')."""
    return build(
        [
            constant("conv1_weights", weights(4, 2, 3, 3)),
            constant("conv1_bias", weights(4, seed=1)),
            helper.make_node("Conv", ["x", "conv1_weights", "conv1_bias"], ["c"], name="conv1"),
            constant("bn_scale", weights(4, seed=2)),
            constant("bn_bias", weights(4, seed=3)),
            constant("bn_mean", weights(4, seed=4)),
            constant("bn_var", np.abs(weights(4, seed=5)) + 0.5),
            helper.make_node(
                "BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"]
            ),
            constant("shape", np.array([0, -1], np.int64)),
            helper.make_node("Reshape", ["b", "shape"], ["r"]),
            constant("fc_weights", weights(64, 3, seed=6)),
            helper.make_node("MatMul", ["r", "fc_weights"], ["m"]),
            constant("fc_bias", weights(3, seed=7)),
            helper.make_node("Add", ["m", "fc_bias"], ["y"]),
        ],
        ["N", 2, 6, 6],
    )


def constant_attribute_forms() -> onnx.ModelProto:
    """Constant's value_float, value_floats, value_int and value_ints attributes."""
    return build(
        [
            constant("scale", value_floats=[0.5, -1.0, 2.0, 1.5, 0.25, 3.0]),
            helper.make_node("Mul", ["x", "scale"], ["m"]),
            constant("low", value_float=0.2),
            helper.make_node("Clip", ["m", "low"], ["c"], name="clip_0"),
            constant("shape", value_ints=[-1, 3, 2]),
            helper.make_node("Reshape", ["c", "shape"], ["r"]),
            constant("index", value_int=1),
            helper.make_node("Gather", ["r", "index"], ["y"], axis=1),
        ],
        ["N", 6],
    )


def identity_weights() -> onnx.ModelProto:
    """tf2onnx and dynamo: weights read through Identity chains (onnx2torch: KeyError 'W2')."""
    return build(
        [
            helper.make_node("Identity", ["W"], ["W1"]),
            helper.make_node("Identity", ["W1"], ["W2"]),
            helper.make_node("Conv", ["x", "W2"], ["c"]),
            helper.make_node("Identity", ["c"], ["y"]),  # writes the graph output: stays
        ],
        ["N", 2, 5, 5],
        [numpy_helper.from_array(weights(4, 2, 3, 3), "W")],
    )


def float16_weights() -> onnx.ModelProto:
    """Weights stored as float16 and cast in the graph (onnx2torch: KeyError 'Wc')."""
    w = numpy_helper.from_array(weights(4, 2, 3, 3).astype(np.float16), "W")
    nodes = [
        helper.make_node("Cast", ["W"], ["Wc"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "Wc"], ["y"]),
    ]
    return build(nodes, ["N", 2, 5, 5], [w])


def transposed_weights() -> onnx.ModelProto:
    """tf2onnx: a weight transposed by a node, then a Conv reads it."""
    w = numpy_helper.from_array(weights(3, 3, 2, 4), "W_hwio")
    nodes = [
        helper.make_node("Transpose", ["W_hwio"], ["W"], perm=[3, 2, 0, 1]),
        helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1]),
    ]
    return build(nodes, ["N", 2, 5, 5], [w])


def unsorted_nodes() -> onnx.ModelProto:
    """tf2onnx: nodes out of topological order (onnx2torch: KeyError 'MatMul')."""
    nodes = [
        helper.make_node("Relu", ["m"], ["y"]),
        helper.make_node("Add", ["p", "b"], ["m"]),
        helper.make_node("MatMul", ["x", "W"], ["p"]),
    ]
    inits = [numpy_helper.from_array(weights(5, 3), "W"), numpy_helper.from_array(weights(3), "b")]
    return build(nodes, ["N", 5], inits)


def initializers_as_inputs(ir_version: int) -> onnx.ModelProto:
    """Old exporters and keep_initializers_as_inputs: weights also listed as graph inputs."""
    inits = [numpy_helper.from_array(weights(5, 3), "W"), numpy_helper.from_array(weights(3), "b")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"])]
    listed = [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, i.dims) for i in inits]
    return build(nodes, ["N", 5], inits, opset=9, ir_version=ir_version, extra_inputs=listed)


def static_dimension_read() -> onnx.ModelProto:
    """TorchScript at opset 9: ``torch.arange(x.shape[-1])`` as Shape, Gather, NonZero."""
    return build(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            constant("last", np.array(-1, np.int64)),
            helper.make_node("Gather", ["s", "last"], ["n"], axis=0),
            helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]),
            helper.make_node(
                "ConstantOfShape",
                ["n1"],
                ["ones"],
                value=helper.make_tensor("v", TensorProto.INT64, [1], [1]),
            ),
            helper.make_node("NonZero", ["ones"], ["nz"]),
            helper.make_node("Squeeze", ["nz"], ["idx"], axes=[0]),
            helper.make_node("Cast", ["idx"], ["ramp"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "ramp"], ["y"]),
        ],
        ["N", 6],
        opset=9,
    )


#: pattern -> (model builder, operators the normalised graph no longer has)
PATTERNS = {
    "paddle-constant-weights": (paddle_conv, {"Constant"}),
    "constant-attribute-forms": (constant_attribute_forms, {"Constant"}),
    "identity-weights": (identity_weights, set()),
    "float16-weights": (float16_weights, {"Cast"}),
    "transposed-weights": (transposed_weights, {"Transpose"}),
    "unsorted-nodes": (unsorted_nodes, set()),
    "initializers-as-inputs": (lambda: initializers_as_inputs(8), set()),
    "initializers-as-inputs-ir3": (lambda: initializers_as_inputs(3), set()),
    "static-dimension-read": (static_dimension_read, {"Shape", "NonZero", "Constant"}),
}


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_exporter_pattern_converts(pattern: str) -> None:
    build_model, gone = PATTERNS[pattern]
    model = build_model()
    before = model.SerializeToString()
    normalised = assert_normalised_and_converted(model)
    assert model.SerializeToString() == before  # the input model is never changed
    assert not gone & {n.op_type for n in normalised.graph.node}
    assert [i.name for i in normalised.graph.input] == ["x"]
    assert normalised.ir_version >= 4


def test_constant_weights_keep_their_names() -> None:
    normalised = normalise(paddle_conv())
    names = {i.name for i in normalised.graph.initializer}
    assert {"conv1_weights", "conv1_bias", "fc_weights"} <= names
    assert [n.op_type for n in normalised.graph.node] == [
        "Conv",
        "BatchNormalization",
        "Reshape",
        "MatMul",
        "Add",
    ]


def test_identity_writing_the_graph_output_stays() -> None:
    normalised = normalise(identity_weights())
    assert [n.op_type for n in normalised.graph.node] == ["Conv", "Identity"]
    assert normalised.graph.node[0].input[1] == "W"


def test_constants_inside_subgraphs_stay() -> None:
    def branch(name: str, value: float) -> onnx.GraphProto:
        node = helper.make_node("Constant", [], [f"{name}_out"], value_float=value)
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [])
        return helper.make_graph([node], name, [], [out])

    model = build(
        [
            constant("flag", np.array(True)),
            helper.make_node(
                "If",
                ["flag"],
                ["k"],
                then_branch=branch("then", 2.0),
                else_branch=branch("else", 3.0),
            ),
            helper.make_node("Mul", ["x", "k"], ["y"]),
        ],
        ["N", 4],
    )
    normalised = normalise(model)
    if_node = next(n for n in normalised.graph.node if n.op_type == "If")
    for attr in if_node.attribute:
        assert [n.op_type for n in attr.g.node] == ["Constant"]
    assert "flag" in {i.name for i in normalised.graph.initializer}
    x = sample(model)
    np.testing.assert_array_equal(ort_run(normalised, x), ort_run(model, x))


def test_values_that_depend_on_the_input_are_not_folded() -> None:
    # The batch is symbolic: Shape(x)[0] is not a constant, Shape(x)[1] is.
    model = build(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            constant("first", np.array([0], np.int64)),
            constant("second", np.array([1], np.int64)),
            helper.make_node("Gather", ["s", "first"], ["n"], axis=0),
            helper.make_node("Gather", ["s", "second"], ["m"], axis=0),
            helper.make_node("Concat", ["n", "m"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["r"]),
            helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["r", "mf"], ["y"]),
        ],
        ["N", 4],
    )
    normalised = assert_normalised_and_converted(model)
    folded = {i.name for i in normalised.graph.initializer}
    assert "mf" in folded and "n" not in folded and "shape" not in folded
    x = np.random.default_rng(0).random((5, 4)).astype(np.float32)  # another batch size
    np.testing.assert_allclose(ort_run(normalised, x), ort_run(model, x), rtol=1e-6)


@pytest.mark.parametrize(("limit", "folded"), [(1 << 22, True), (100, False)])
def test_folding_is_bounded(monkeypatch: pytest.MonkeyPatch, limit: int, folded: bool) -> None:
    monkeypatch.setattr(fold_module, "MAX_FOLDED_VALUES", limit)
    big = helper.make_tensor("dims", TensorProto.INT64, [2], [64, 8])
    model = build(
        [
            helper.make_node(
                "ConstantOfShape",
                ["dims"],
                ["ones"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]),
            ),
            helper.make_node("MatMul", ["x", "ones"], ["y"]),
        ],
        ["N", 64],
        [big],
    )
    normalised = normalise(model)
    assert ("ones" in {i.name for i in normalised.graph.initializer}) is folded
    x = sample(model)
    np.testing.assert_allclose(ort_run(normalised, x), ort_run(model, x), rtol=1e-6)


# ----------------------------------------------------------------------------- real exports


class ExportPatterns(nn.Module):
    """``clamp(max=)`` (Clip with an omitted min), F.normalize (Clip with an omitted max, after
    TorchScript's Constant bound) and ``arange(x.shape[-1])`` (Shape of a static dimension)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.clamp(self.linear(x), max=0.5) + torch.clamp(x, min=-0.2)
        ramp = torch.arange(x.shape[-1], dtype=x.dtype)
        return nn.functional.normalize(h, dim=-1) * ramp


def export(module: nn.Module, dynamo: bool, opset: int | None) -> onnx.ModelProto:
    return export_batched(module, torch.rand(2, 6), dynamo, opset)


@pytest.mark.parametrize(
    ("dynamo", "opset"), [(False, 9), (False, 17), (True, None)], ids=["ts-9", "ts-17", "dynamo"]
)
def test_torch_exports_convert_without_fallback(dynamo: bool, opset: int | None) -> None:
    model = export(ExportPatterns().eval(), dynamo, opset)
    assert "Clip" in {n.op_type for n in model.graph.node}
    assert_normalised_and_converted(model)
