"""Tests of onnxinv.convert: ONNX -> PyTorch conversion, the onnx2torch compat layer, diagnosis."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from helpers import backend_case
from onnx import TensorProto, helper, numpy_helper
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
from torch import nn

from onnxinv import convert
from onnxinv.convert import compat, fallback_nodes, to_torch
from onnxinv.convert.compat_pad import source_index
from onnxinv.convert.compat_split import chunk_sizes
from onnxinv.convert.node_jacobian import MAX_FD_VALUES
from onnxinv.errors import ConversionError, ModelError
from onnxinv.load.runtime import session

# --------------------------------------------------------------------------------------- helpers


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model.SerializeToString())
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def torch_run(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def assert_matches_ort(
    module: torch.nn.Module, model: onnx.ModelProto, x: np.ndarray, rtol: float = 1e-4
) -> None:
    np.testing.assert_allclose(torch_run(module, x), ort_run(model, x), rtol=rtol, atol=1e-5)


def make_model(
    nodes: list[onnx.NodeProto],
    x_shape: list,
    y_shape: list | None,
    opset: int,
    initializers: list[onnx.TensorProto] = (),
    y_type: int = TensorProto.FLOAT,
    extra_opsets: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", y_type, y_shape)],
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def ints(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def rand(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def randn(*shape: int, seed: int = 1) -> np.ndarray:
    """Signed values: max-pooling over a -inf (not 0) padding only shows on negative input."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def floats(name: str, values: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


# ------------------------------------------------------------------------- exported torch models


class Residual(nn.Module):
    """view/reshape, Linear, Tanh, a residual add, LayerNorm and a mean over a dim."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(x.shape[0], 8, 8)
        h = self.norm(torch.tanh(self.lin(h)) + h)
        return self.out(h.mean(dim=1).reshape(-1, 8))


def build_torch_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.SELU(), nn.Linear(16, 10), nn.Softmax(dim=1)
        )
    if kind == "cnn_avg":
        pool = nn.AvgPool2d(2)
    elif kind == "cnn_max":
        pool = nn.MaxPool2d(2)
    else:
        return Residual()
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), pool, nn.Flatten(), nn.Linear(36, 5), nn.LogSoftmax(dim=1)
    )


_EXPORTS: dict[tuple[str, bool, bool], onnx.ModelProto] = {}


def export(kind: str, dynamo: bool, dynamic_batch: bool = False) -> onnx.ModelProto:
    """Export with the installed torch at its default opset (cached per session)."""
    cache_key = (kind, dynamo, dynamic_batch)
    if cache_key in _EXPORTS:
        return _EXPORTS[cache_key]
    module = build_torch_model(kind).eval()
    example = (torch.rand(2 if dynamic_batch else 1, 1, 8, 8),)
    kwargs: dict = {"dynamo": dynamo}
    if dynamic_batch and dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic_batch:
        kwargs.update(input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    buffer = io.BytesIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, example, None if dynamo else buffer, **kwargs)
    model = program.model_proto if dynamo else onnx.load_from_string(buffer.getvalue())
    _EXPORTS[cache_key] = model
    return model


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("kind", ["mlp", "cnn_avg", "cnn_max", "residual"])
def test_exported_model_converts_and_matches(kind: str, dynamo: bool) -> None:
    model = export(kind, dynamo)
    module = to_torch(model)  # its own check against onnxruntime passes
    assert not module.training
    assert all(p.dtype == torch.float32 for p in module.parameters())
    for seed in (11, 12):
        assert_matches_ort(module, model, rand(1, 1, 8, 8, seed=seed))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_symbolic_batch(dynamo: bool) -> None:
    model = export("residual", dynamo, dynamic_batch=True)
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    module = to_torch(model)  # checked at batch 3
    assert_matches_ort(module, model, rand(5, 1, 8, 8, seed=3))


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_double(dynamo: bool) -> None:
    model = export("residual", dynamo)
    module = to_torch(model).double()
    x = rand(1, 1, 8, 8, seed=4)
    with torch.no_grad():
        out = module(torch.from_numpy(x).double())
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), ort_run(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["residual", "cnn_avg"])
def test_autograd_jacobian_in_double(kind: str) -> None:
    module = to_torch(export(kind, True)).double()
    x = torch.from_numpy(rand(1, 1, 8, 8, seed=5)).double().requires_grad_()
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------- scikit-learn


@pytest.fixture(scope="module")
def sklearn_mlp() -> tuple[onnx.ModelProto, object, np.ndarray]:
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    features, labels = load_digits(return_X_y=True)
    features = (features / 16).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after a few iterations
        clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
        clf.fit(features, labels)
    full = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
    )
    prob = next(o.name for o in full.graph.output if "prob" in o.name)
    model = onnx.utils.Extractor(full).extract_model(["input"], [prob])
    return model, clf, features


def test_sklearn_mlp_classifier_converts(sklearn_mlp) -> None:
    # The probabilities branch is plain ai.onnx (Cast, MatMul, Add, Relu, Softmax, Identity at
    # opset 21); the ai.onnx.ml ops (ArrayFeatureExtractor) only feed the pruned label output.
    model, clf, features = sklearn_mlp
    assert all(node.domain == "" for node in model.graph.node)
    module = to_torch(model)
    x = features[:20]
    assert_matches_ort(module, model, x)
    np.testing.assert_allclose(torch_run(module, x), clf.predict_proba(x), atol=1e-5)
    # skl2onnx casts the input to float: that Cast must follow .double().
    with torch.no_grad():
        out = module.double()(torch.from_numpy(x).double())
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), clf.predict_proba(x), atol=1e-6)


# ------------------------------------------------------------------------------ failure reports


def test_custom_domain_operator_is_named() -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="relu_0"),
            helper.make_node("Mish", ["h"], ["y"], name="mish_0", domain="com.example"),
        ],
        ["N", 4],
        ["N", 4],
        17,
        extra_opsets=(("com.example", 1),),
    )
    with pytest.raises(ConversionError) as info:
        to_torch(model, check=False)
    assert info.value.op_type == "Mish"
    assert info.value.node == "mish_0"
    message = str(info.value)
    assert "Mish" in message and "com.example" in message and "mish_0" in message
    assert "finite differences" in message and "\n" not in message


@pytest.mark.parametrize("fallbacks_allowed", [True, False])
def test_broken_converter_is_diagnosed(
    monkeypatch: pytest.MonkeyPatch, fallbacks_allowed: bool
) -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu_0"),
            helper.make_node("Tanh", ["a"], ["b"], name="tanh_0"),
            helper.make_node("Neg", ["b"], ["y"], name="neg_0"),
        ],
        ["N", 6],
        ["N", 6],
        17,
    )
    key = OperationDescription(domain="", operation_type="Tanh", version=13)
    good = _CONVERTER_REGISTRY[key]

    def broken(node, graph):
        result = good(node, graph)
        return result._replace(torch_module=nn.Sigmoid())

    monkeypatch.setitem(_CONVERTER_REGISTRY, key, broken)
    if fallbacks_allowed:  # the node that disagrees runs in onnxruntime instead
        module = to_torch(model)
        assert fallback_nodes(module) == ["tanh_0 (Tanh)"]
        assert_matches_ort(module, model, randn(4, 6))
    else:
        monkeypatch.setattr(convert, "MAX_DISAGREEING_NODES", 0)
        with pytest.raises(ConversionError) as info:
            to_torch(model)
        assert info.value.op_type == "Tanh"
        assert info.value.node == "tanh_0"
        assert "tanh_0" in str(info.value) and "disagrees with onnxruntime" in str(info.value)
    monkeypatch.undo()
    assert _CONVERTER_REGISTRY[key] is good
    assert fallback_nodes(to_torch(model)) == []  # fine again once restored


@pytest.mark.parametrize("width", [6, 4100])
def test_converter_that_raises_is_named(monkeypatch: pytest.MonkeyPatch, width: int) -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu_0"),
            helper.make_node("Tanh", ["a"], ["y"], name="tanh_0"),
        ],
        ["N", width],
        ["N", width],
        17,
    )

    def refuses(node, graph):
        raise NotImplementedError("not today")

    key = OperationDescription(domain="", operation_type="Tanh", version=13)
    monkeypatch.setitem(_CONVERTER_REGISTRY, key, refuses)
    if width <= MAX_FD_VALUES:  # the node runs in onnxruntime instead
        module = to_torch(model)
        assert fallback_nodes(module) == ["tanh_0 (Tanh)"]
        assert_matches_ort(module, model, randn(3, width))
        return
    with pytest.raises(ConversionError, match="tanh_0.*not today.*8200 node runs") as info:
        to_torch(model)
    assert info.value.op_type == "Tanh"


def test_module_that_fails_at_run_time_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without fallbacks for disagreeing nodes (MAX_DISAGREEING_NODES = 0), the error names the
    # node; with them, the node runs in onnxruntime (see test_broken_converter_is_diagnosed).
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu_0"),
            helper.make_node("Tanh", ["a"], ["y"], name="tanh_0"),
        ],
        ["N", 6],
        ["N", 6],
        17,
    )

    class Raises(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    key = OperationDescription(domain="", operation_type="Tanh", version=13)
    good = _CONVERTER_REGISTRY[key]
    monkeypatch.setitem(
        _CONVERTER_REGISTRY,
        key,
        lambda node, graph: good(node, graph)._replace(torch_module=Raises()),
    )
    monkeypatch.setattr(convert, "MAX_DISAGREEING_NODES", 0)
    with pytest.raises(ConversionError, match="tanh_0.*fails when run: boom") as info:
        to_torch(model)
    assert info.value.op_type == "Tanh"
    monkeypatch.setattr(convert, "MAX_DISAGREEING_NODES", 4)
    assert fallback_nodes(to_torch(model)) == ["tanh_0 (Tanh)"]


def test_model_onnxruntime_cannot_run_is_a_model_error() -> None:
    # Reshape with allowzero=1 and a run-time target containing a 0 that does not fit.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape_0"),
        helper.make_node("Mul", ["s", "zero"], ["target"], name="mul_0"),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape_0", allowzero=1),
    ]
    model = make_model(nodes, [2, 3], None, 20, [ints("zero", [0, 1])])
    with pytest.raises(ModelError, match="onnxruntime"):
        to_torch(model)
    module = to_torch(model, check=False)  # the Reshape runs in onnxruntime, and fails there
    assert fallback_nodes(module) == ["reshape_0 (Reshape)"]
    with pytest.raises(Exception, match="cannot be reshaped"):
        torch_run(module, rand(2, 3))


def test_allowzero_with_constant_zero_is_rejected() -> None:
    # Rejected by the converter, and too large (4200 values) to run in onnxruntime instead.
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="r0", allowzero=1)]
    model = make_model(nodes, [2, 2100], [2, 0], 19, [ints("shape", [2, 0])])
    with pytest.raises(ConversionError, match="allowzero.*8400 node runs") as info:
        to_torch(model, check=False)
    assert info.value.node == "r0"


@pytest.mark.parametrize("side", [6, 65])
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool", "LpPool"])
def test_pool_same_with_dilations_is_rejected(op_type: str, side: int) -> None:
    # onnxruntime sizes the SAME padding from the undilated kernel, onnx's reference from the
    # dilated one: no single meaning, so no converter. A small node runs in onnxruntime
    # instead, meaning what it means there; a large one (65 x 65 = 4225 values) is refused.
    attrs = {"kernel_shape": [3, 3], "dilations": [2, 2], "auto_pad": "SAME_UPPER"}
    node = helper.make_node(op_type, ["x"], ["y"], name="pool_0", **attrs)
    model = make_model([node], [1, 1, side, side], None, 19)
    if side * side <= MAX_FD_VALUES:
        module = to_torch(model)
        assert fallback_nodes(module) == [f"pool_0 ({op_type})"]
        assert_matches_ort(module, model, randn(1, 1, side, side))
        return
    with pytest.raises(ConversionError, match="dilations") as info:
        to_torch(model, check=False)
    assert info.value.op_type == op_type
    assert info.value.node == "pool_0"


def test_symbolic_non_batch_dimension_needs_sample_input() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], ["N", "M"], ["N", "M"], 17)
    with pytest.raises(ModelError):
        to_torch(model)
    module = to_torch(model, sample_input=rand(2, 7))
    assert_matches_ort(module, model, rand(3, 5))


# ---------------------------------------------------------------------------------- compat layer


def test_install_is_idempotent() -> None:
    compat.install()
    before = dict(_CONVERTER_REGISTRY)
    compat.install()
    compat.install()
    assert dict(_CONVERTER_REGISTRY) == before
    for op_type, version in [("Identity", 19), ("Reshape", 19), ("ReduceMean", 18), ("Split", 18)]:
        assert OperationDescription("", op_type, version) in _CONVERTER_REGISTRY


def test_aliases_stop_at_reviewed_versions() -> None:
    compat.install()
    for op_type, (up_to, _) in compat.ALIASES.items():
        for key in _CONVERTER_REGISTRY:
            if key.operation_type == op_type and key.domain == "":
                assert key.version <= up_to, key


def pipeline(opset: int) -> onnx.ModelProto:
    """Identity, Unsqueeze, Transpose, Reshape (allowzero), Split, ReduceMean/Max, Shape,
    ConstantOfShape, Cast, Pad, Constant: each in the form its opset requires."""
    new = opset >= 18
    inits = [ints("ax1", [1]), ints("shape_a", [0, 12]), ints("pads", [0, 1, 0, 1])]
    nodes = [
        helper.make_node("Identity", ["x"], ["i"], name="identity"),  # [N, 2, 6]
        helper.make_node("Unsqueeze", ["i", "ax1"], ["u"], name="unsqueeze"),  # [N, 1, 2, 6]
        helper.make_node("Transpose", ["u"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Constant", [], ["shape_b"], name="constant", value=ints("v", [-1, 3, 4])),
        helper.make_node("Reshape", ["t", "shape_a"], ["r"], name="reshape_a"),  # [N, 12]
        helper.make_node(
            "Reshape",
            ["r", "shape_b"],
            ["r3"],
            name="reshape_b",
            **({"allowzero": 1} if opset >= 14 else {}),
        ),  # [N, 3, 4]
        helper.make_node(
            "Split",
            ["r3"],
            ["s0", "s1"],
            name="split",
            axis=2,
            **({"num_outputs": 2} if new else {}),
        ),  # 2 x [N, 3, 2]
    ]
    for op_type, src in (("ReduceMean", "s0"), ("ReduceMax", "s1")):
        if new:
            nodes.append(
                helper.make_node(op_type, [src, "ax1"], [f"{src}_r"], name=op_type, keepdims=0)
            )
        else:
            nodes.append(
                helper.make_node(op_type, [src], [f"{src}_r"], name=op_type, axes=[1], keepdims=0)
            )
    nodes += [
        helper.make_node("Add", ["s0_r", "s1_r"], ["sum"], name="add"),  # [N, 2]
        helper.make_node("Shape", ["sum"], ["sh"], name="shape"),
        helper.make_node(
            "ConstantOfShape",
            ["sh"],
            ["ones"],
            name="ones",
            value=helper.make_tensor("one", TensorProto.DOUBLE, [1], [2.0]),
        ),
        helper.make_node("Cast", ["ones"], ["ones_f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sum", "ones_f"], ["m"], name="mul"),
        helper.make_node("Pad", ["m", "pads"], ["y"], name="pad", mode="constant"),  # [N, 4]
    ]
    return make_model(nodes, ["N", 2, 6], ["N", 4], opset, inits)


@pytest.mark.parametrize("opset", [13, 17, 18, 19, 20, 21, 23, 25])
def test_hand_built_pipeline_over_opsets(opset: int) -> None:
    model = pipeline(opset)
    onnx.checker.check_model(model)
    module = to_torch(model)
    assert_matches_ort(module, model, rand(4, 2, 6))
    with torch.no_grad():
        out = module.double()(torch.from_numpy(rand(4, 2, 6)).double())
    assert out.dtype == torch.float64


def reduce_model(op_type: str, opset: int, axes: list[int] | None, **attrs) -> onnx.ModelProto:
    inputs, inits = ["x"], []
    if axes is not None:
        inputs.append("axes")
        inits.append(ints("axes", axes))
    node = helper.make_node(op_type, inputs, ["y"], name="reduce_0", **attrs)
    return make_model([node], ["N", 3, 4, 5], None, opset, inits)


REDUCE_OPS = [
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
]


@pytest.mark.parametrize("op_type", REDUCE_OPS)
@pytest.mark.parametrize(
    ("axes", "attrs"),
    [
        ([-1, 1], {"keepdims": 0}),
        ([2], {}),
        (None, {"keepdims": 0}),
        ([], {"noop_with_empty_axes": 1}),
    ],
    ids=["neg-axes-drop", "keep", "all", "noop"],
)
def test_reduce_opset18(op_type: str, axes: list[int] | None, attrs: dict) -> None:
    model = reduce_model(op_type, 18, axes, **attrs)
    module = to_torch(model)
    x = rand(2, 3, 4, 5)
    x = x + 0.5 if op_type == "ReduceLogSum" else x - 0.5  # signs matter for noop L1/L2
    assert_matches_ort(module, model, x)


@pytest.mark.parametrize("op_type", ["ReduceMax", "ReduceMin"])
def test_reduce_opset20(op_type: str) -> None:
    model = reduce_model(op_type, 20, [0, 2], keepdims=0)
    assert_matches_ort(to_torch(model), model, rand(2, 3, 4, 5))


def test_reduce_with_run_time_axes() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape_0", start=0, end=1),
        helper.make_node("Sub", ["s", "s"], ["zero"], name="sub_0"),  # [0], computed at run time
        helper.make_node("ReduceMean", ["x", "zero"], ["y"], name="mean_0", keepdims=0),
    ]
    model = make_model(nodes, ["N", 3], [3], 18)
    assert_matches_ort(to_torch(model), model, rand(4, 3))


@pytest.mark.parametrize(("length", "parts"), [(6, 2), (5, 2), (7, 3), (4, 4)])
def test_split18_uneven(length: int, parts: int) -> None:
    outputs = [f"o{i}" for i in range(parts)]
    node = helper.make_node("Split", ["x"], outputs, name="split_0", axis=1, num_outputs=parts)
    for index in range(parts):
        graph_output = outputs[index]
        model = make_model(
            [node, helper.make_node("Identity", [graph_output], ["y"])],
            ["N", length],
            None,
            18,
        )
        module = to_torch(model)
        expected = chunk_sizes(length, parts)[index]
        out = torch_run(module, rand(2, length))
        assert out.shape == (2, expected)
        assert_matches_ort(module, model, rand(2, length))


def test_split_output_is_graph_output() -> None:
    # The graph output is the second output of a multi-output node.
    node = helper.make_node("Split", ["x"], ["a", "y"], name="split_0", axis=1, num_outputs=2)
    model = make_model([node], ["N", 5], None, 18)
    module = to_torch(model)
    assert torch_run(module, rand(2, 5)).shape == (2, 2)


@pytest.mark.parametrize(
    ("opset", "mode", "axes", "value"),
    [
        (18, "constant", [1], 0.5),
        (18, "reflect", None, None),
        (18, "edge", [-1], None),
        (19, "wrap", [2], None),
        (21, "constant", None, None),
    ],
)
def test_pad18(opset: int, mode: str, axes: list[int] | None, value: float | None) -> None:
    n_axes = 3 if axes is None else len(axes)
    pads = [0] * n_axes * 2
    pads[-1], pads[n_axes - 1] = 2, 1  # pad the last listed axis by 1 before, 2 after
    if mode != "constant" and axes is None:
        pads = [0, 0, 1, 0, 0, 2]
    inputs, inits = ["x", "pads"], [ints("pads", pads)]
    inputs.append("value" if value is not None else "")
    if value is not None:
        inits.append(helper.make_tensor("value", TensorProto.FLOAT, [], [value]))
    if axes is not None:
        inputs.append("axes")
        inits.append(ints("axes", axes))
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("Pad", inputs, ["y"], name="pad_0", mode=mode)
    model = make_model([node], ["N", 3, 4], None, opset, inits)
    assert_matches_ort(to_torch(model), model, rand(2, 3, 4))


def test_castlike_follows_double() -> None:
    nodes = [
        helper.make_node("Cast", ["x"], ["d"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["d", "d"], ["sq"], name="square"),
        helper.make_node("CastLike", ["sq", "x"], ["y"], name="like_x"),
    ]
    model = make_model(nodes, ["N", 3], ["N", 3], 21)
    module = to_torch(model)
    assert_matches_ort(module, model, rand(2, 3))
    with torch.no_grad():
        assert module.double()(torch.ones(2, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("op_type", "opset", "attrs"),
    [
        ("Gelu", 20, {}),
        ("Gelu", 20, {"approximate": "tanh"}),
        ("Mish", 18, {}),
        ("Mish", 22, {}),
    ],
)
def test_new_activations(op_type: str, opset: int, attrs: dict) -> None:
    model = make_model(
        [helper.make_node(op_type, ["x"], ["y"], name="act_0", **attrs)], ["N", 5], ["N", 5], opset
    )
    assert_matches_ort(to_torch(model), model, rand(3, 5) * 6 - 3)


def test_resize_new_attributes_are_guarded() -> None:
    inputs, inits = (
        ["x", "", "scales"],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    plain = helper.make_node(
        "Resize",
        inputs,
        ["y"],
        name="resize_0",
        mode="nearest",
        nearest_mode="floor",
        coordinate_transformation_mode="asymmetric",
    )
    model = make_model([plain], [1, 1, 4, 4], None, 19, inits)
    assert_matches_ort(to_torch(model), model, rand(1, 1, 4, 4))
    antialias = helper.make_node(
        "Resize", inputs, ["y"], name="resize_0", mode="linear", antialias=1
    )
    small = make_model([antialias], [1, 1, 4, 4], None, 19, inits)  # runs in onnxruntime
    module = to_torch(small)
    assert fallback_nodes(module) == ["resize_0 (Resize)"]
    assert_matches_ort(module, small, rand(1, 1, 4, 4))
    with pytest.raises(ConversionError, match="antialias") as info:
        to_torch(make_model([antialias], [1, 1, 65, 65], None, 19, inits), check=False)
    assert info.value.node == "resize_0"


def test_gemm_at_newest_opset_converts() -> None:
    # Gemm has no since_version past onnx2torch's 13, so any newer opset resolves to Gemm-13.
    latest = onnx.defs.onnx_opset_version()
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm_0", transB=1)
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], rand(2, 3).ravel().tolist())
    model = make_model([node], ["N", 3], ["N", 2], latest, [w])
    module = to_torch(model, check=False)
    np.testing.assert_allclose(
        torch_run(module, rand(4, 3)), rand(4, 3) @ rand(2, 3).T, rtol=1e-5, atol=1e-6
    )


def test_two_graph_outputs_are_rejected() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], ["N", 2], ["N", 2], 17)
    model.graph.output.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, None))
    with pytest.raises(ModelError, match="one graph output"):
        to_torch(model)


# ---------------------------------------------------- auto_pad, asymmetric pads, pooling, conv

SPATIAL = {1: [7], 2: [6, 7], 3: [5, 4, 6]}

#: (op_type, extra attributes): every pooling flavour whose padding behaves differently.
POOLS = {
    "max": ("MaxPool", {}),
    "avg": ("AveragePool", {}),
    "avg-include-pad": ("AveragePool", {"count_include_pad": 1}),
    "lp3": ("LpPool", {"p": 3}),
}


def spatial_model(
    op_type: str, opset: int, rank: int, inits: list[onnx.TensorProto] = (), **attrs
) -> onnx.ModelProto:
    inputs = ["x", *(init.name for init in inits)]
    node = helper.make_node(op_type, inputs, ["y"], name=f"{op_type.lower()}_0", **attrs)
    return make_model([node], ["N", 2, *SPATIAL[rank]], None, opset, inits)


def conv_weights(op_type: str, kernel: list[int], group: int = 1) -> list[onnx.TensorProto]:
    """Weights for 2 input and 4 output channels, and a bias."""
    shape = [4, 2 // group, *kernel] if op_type == "Conv" else [2, 4 // group, *kernel]
    return [floats("w", randn(*shape, seed=7)), floats("b", randn(4, seed=8))]


def converts_and_matches(model: onnx.ModelProto, rank: int) -> None:
    assert_matches_ort(to_torch(model, check=False), model, randn(2, 2, *SPATIAL[rank]))


#: (kernel, stride, spatial rank): even and odd kernels, strided or not, at every rank.
WINDOWS = [(2, 2, 2), (3, 1, 2), (3, 2, 2), (3, 2, 1), (2, 1, 1), (3, 2, 3), (2, 2, 3)]
WINDOW_IDS = [f"k{k}s{s}-{r}d" for k, s, r in WINDOWS]


@pytest.mark.parametrize(("kernel", "stride", "rank"), WINDOWS, ids=WINDOW_IDS)
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("pool", POOLS)
def test_pool_auto_pad(pool: str, auto_pad: str, kernel: int, stride: int, rank: int) -> None:
    op_type, extra = POOLS[pool]
    attrs = {"kernel_shape": [kernel] * rank, "strides": [stride] * rank, "auto_pad": auto_pad}
    converts_and_matches(spatial_model(op_type, 19, rank, **attrs, **extra), rank)


@pytest.mark.parametrize(("kernel", "stride", "rank"), WINDOWS, ids=WINDOW_IDS)
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("op_type", ["Conv", "ConvTranspose"])
def test_conv_auto_pad(op_type: str, auto_pad: str, kernel: int, stride: int, rank: int) -> None:
    attrs = {"kernel_shape": [kernel] * rank, "strides": [stride] * rank, "auto_pad": auto_pad}
    model = spatial_model(op_type, 17, rank, conv_weights(op_type, [kernel] * rank), **attrs)
    converts_and_matches(model, rank)


#: (op_type, opset): every since_version of each operator that onnxruntime runs.
OPSETS = [
    ("MaxPool", 7),  # MaxPool-1
    ("MaxPool", 8),
    ("MaxPool", 10),
    ("MaxPool", 11),
    ("MaxPool", 12),
    ("MaxPool", 22),
    ("AveragePool", 7),
    ("AveragePool", 10),
    ("AveragePool", 11),
    ("AveragePool", 19),
    ("AveragePool", 22),
    ("LpPool", 2),
    ("LpPool", 11),
    ("LpPool", 18),
    ("LpPool", 22),
    ("Conv", 7),  # Conv-1
    ("Conv", 11),
    ("Conv", 22),
    ("ConvTranspose", 7),  # ConvTranspose-1
    ("ConvTranspose", 11),
    ("ConvTranspose", 22),
]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("op_type", "opset"), OPSETS, ids=[f"{o}-{v}" for o, v in OPSETS])
def test_auto_pad_at_every_opset(op_type: str, opset: int, auto_pad: str) -> None:
    inits = conv_weights(op_type, [3, 3]) if op_type.startswith("Conv") else []
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": auto_pad}
    converts_and_matches(spatial_model(op_type, opset, 2, inits, **attrs), 2)


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 0, 0, 1]},
        {"pads": [2, 2, 2, 2]},  # more than half the kernel: torch cannot pad it itself
        {"strides": [2, 2], "ceil_mode": 1},
        {"strides": [2, 2], "ceil_mode": 1, "pads": [1, 1, 0, 0]},
        {"strides": [2, 2], "ceil_mode": 1, "pads": [0, 0, 2, 2]},  # a window starts in the pad
        {"dilations": [2, 2], "pads": [0, 1, 2, 1]},
        {"dilations": [2, 1], "strides": [2, 2], "ceil_mode": 1, "pads": [1, 2, 1, 0]},
    ],
    ids=["asym", "wide", "ceil", "ceil-begin", "ceil-end", "dilated", "all"],
)
@pytest.mark.parametrize("pool", POOLS)
def test_pool_explicit_pads(pool: str, attrs: dict) -> None:
    op_type, extra = POOLS[pool]
    converts_and_matches(spatial_model(op_type, 19, 2, kernel_shape=[3, 3], **attrs, **extra), 2)


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 0, 0, 2]},
        {"strides": [2, 2], "pads": [1, 1, 0, 0], "output_padding": [1, 1]},
        {"strides": [2, 2], "output_shape": [12, 13]},
        {"strides": [2, 2], "output_shape": [14, 16], "auto_pad": "SAME_UPPER"},  # zero-filled
        {"strides": [2, 3], "dilations": [2, 1], "group": 2, "auto_pad": "SAME_LOWER"},
    ],
    ids=["asym", "output-padding", "output-shape", "output-shape-larger", "grouped-dilated"],
)
def test_conv_transpose_pads(attrs: dict) -> None:
    inits = conv_weights("ConvTranspose", [3, 3], attrs.get("group", 1))
    converts_and_matches(
        spatial_model("ConvTranspose", 22, 2, inits, kernel_shape=[3, 3], **attrs), 2
    )


@pytest.mark.parametrize("opset", [13, 22])
def test_keras_nhwc_pattern(opset: int) -> None:
    """tf2onnx's Keras CNN: NHWC input, transposed around SAME-padded Conv and MaxPool."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv",
            ["nchw", "w", "b"],
            ["conv"],
            name="conv",
            kernel_shape=[3, 3],
            auto_pad="SAME_UPPER",
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node(
            "MaxPool",
            ["relu"],
            ["pool"],
            name="pool",
            kernel_shape=[2, 2],
            strides=[2, 2],
            auto_pad="SAME_UPPER",
        ),
        helper.make_node("Transpose", ["pool"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["nhwc", "flat"], ["features"], name="flatten"),
        helper.make_node("MatMul", ["features", "dense"], ["logits"], name="dense"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    inits = [
        floats("w", randn(4, 1, 3, 3, seed=3)),
        floats("b", randn(4, seed=4)),
        ints("flat", [1, -1]),
        floats("dense", randn(64, 10, seed=5) * 0.3),
    ]
    model = make_model(nodes, [1, 8, 8, 1], [1, 10], opset, inits)
    onnx.checker.check_model(model, full_check=True)
    module = to_torch(model)
    for seed in (1, 2):
        assert_matches_ort(module, model, randn(1, 8, 8, 1, seed=seed))
    x = torch.from_numpy(randn(1, 8, 8, 1, seed=6)).double().requires_grad_()
    assert torch.autograd.gradcheck(module.double(), (x,), eps=1e-6, atol=1e-5)


def test_new_modules_differentiate_in_double() -> None:
    # Jacobians come from autograd in float64: Pad (reflect, every axis), SAME AveragePool,
    # LpPool with ceil_mode, asymmetric ConvTranspose.
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="reflect"),
        helper.make_node(
            "AveragePool",
            ["p"],
            ["a"],
            name="avg",
            kernel_shape=[3, 3],
            strides=[2, 2],
            auto_pad="SAME_LOWER",
        ),
        helper.make_node(
            "LpPool",
            ["a"],
            ["l"],
            name="lp",
            kernel_shape=[2, 2],
            ceil_mode=1,
            p=3,
            strides=[2, 1],
        ),
        helper.make_node(
            "ConvTranspose",
            ["l", "w", "b"],
            ["y"],
            name="deconv",
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 0, 0, 1],
        ),
    ]
    inits = [ints("pads", [0, 0, 1, 2, 0, 0, 2, 1]), *conv_weights("ConvTranspose", [3, 3])]
    model = make_model(nodes, ["N", 2, 4, 5], None, 19, inits)
    module = to_torch(model).double()
    x = torch.from_numpy(randn(1, 2, 4, 5)).double().requires_grad_()
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


def test_max_pool_indices_output_is_rejected() -> None:
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p", "i"], name="pool_0", kernel_shape=[2]),
        helper.make_node("Cast", ["i"], ["y"], name="cast_0", to=TensorProto.FLOAT),
    ]
    small = make_model(nodes, ["N", 2, 7], None, 12)  # runs in onnxruntime instead
    module = to_torch(small)
    assert fallback_nodes(module) == ["pool_0 (MaxPool)"]
    assert_matches_ort(module, small, randn(3, 2, 7))
    with pytest.raises(ConversionError, match="Indices") as info:
        to_torch(make_model(nodes, ["N", 2, 2049], None, 12), check=False)
    assert info.value.node == "pool_0"


@pytest.mark.parametrize(
    ("op_type", "attrs", "opset"),
    [
        ("GlobalMaxPool", {}, 7),
        ("GlobalMaxPool", {}, 22),
        ("GlobalLpPool", {"p": 3}, 7),
        ("GlobalLpPool", {"p": 3}, 21),  # onnxruntime has no GlobalLpPool-22
    ],
)
def test_global_pools(op_type: str, attrs: dict, opset: int) -> None:
    converts_and_matches(spatial_model(op_type, opset, 3, **attrs), 3)


# ------------------------------------------------------------------------------ Pad, any rank

PAD_SHAPE = [3, 4, 5, 3, 4, 3]


def pad_model(opset: int, mode: str, pads: list[int], rank: int, axes=None, value=None):
    attrs, inputs, inits = {"mode": mode}, ["x"], []
    if opset < 11:
        attrs["pads"] = pads
        if value is not None:
            attrs["value"] = value
    else:
        inputs.append("pads")
        inits.append(ints("pads", pads))
        if value is not None or axes is not None:
            inputs.append("" if value is None else "value")
        if value is not None:
            inits.append(floats("value", np.float32(value)))
        if axes is not None:
            inputs.append("axes")
            inits.append(ints("axes", axes))
    node = helper.make_node("Pad", inputs, ["y"], name="pad_0", **attrs)
    return make_model([node], PAD_SHAPE[:rank], None, opset, inits)


@pytest.mark.parametrize("rank", [1, 2, 4, 6])
@pytest.mark.parametrize(
    ("mode", "opset"),
    [("reflect", 2), ("edge", 2), ("reflect", 11), ("edge", 13), ("reflect", 18), ("wrap", 19)],
)
def test_pad_any_rank(mode: str, opset: int, rank: int) -> None:
    # Every axis, the leading ones included, padded differently: F.pad cannot do these.
    begin = [i % 3 for i in range(rank)]
    end = [(i + 1) % 3 for i in range(rank)]
    model = pad_model(opset, mode, begin + end, rank)
    x = randn(*PAD_SHAPE[:rank])
    assert_matches_ort(to_torch(model, sample_input=x), model, x)


@pytest.mark.parametrize(
    ("mode", "opset", "pads", "axes", "value"),
    [
        ("constant", 2, [0, 1, 2, 0, 2, 1], None, 1.5),  # Pad-2's value attribute
        ("constant", 11, [0, -1, 2, 1, 2, -2], None, -0.5),  # negative pads crop
        ("reflect", 13, [0, -1, 2, 1, 2, -2], None, None),
        ("edge", 18, [2, 1, 0, 3], [0, -1], None),
        ("reflect", 19, [2, 2], [-2], None),
    ],
)
def test_pad_values_crops_and_axes(mode, opset, pads, axes, value) -> None:
    model = pad_model(opset, mode, pads, 3, axes=axes, value=value)
    x = randn(*PAD_SHAPE[:3])
    assert_matches_ort(to_torch(model, sample_input=x), model, x)


@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap"])
def test_source_index_matches_numpy(mode: str) -> None:
    numpy_mode = {"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode]
    for size, begin, end in [(4, 3, 3), (3, 0, 2), (5, 1, 0), (1, 2, 2)]:
        if mode == "reflect" and size == 1:
            continue
        expected = np.pad(np.arange(size), (begin, end), mode=numpy_mode)
        np.testing.assert_array_equal(source_index(size, begin, end, mode).numpy(), expected)


# --------------------------------------------------------- old opsets and missing operators


FLATTEN_CASES = [([2, 3, 4], axis, 13) for axis in range(-3, 4)] + [
    ([2, 3, 4], 0, 7),  # Flatten-1
    ([2, 3, 4], 3, 7),
    ([5], 0, 7),
    ([5], 1, 13),
]


@pytest.mark.parametrize(("shape", "axis", "opset"), FLATTEN_CASES)
def test_flatten_every_axis(shape: list[int], axis: int, opset: int) -> None:
    model = make_model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], shape, None, opset)
    x = randn(*shape)
    assert_matches_ort(to_torch(model, sample_input=x), model, x)


def test_slice_1() -> None:
    node = helper.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[1000, -1], axes=[0, 2])
    model = make_model([node], [3, 4, 5], None, 7)
    assert_matches_ort(to_torch(model), model, randn(3, 4, 5))


def test_shrink() -> None:
    node = helper.make_node("Shrink", ["x"], ["y"], bias=0.5, lambd=0.7)
    model = make_model([node], ["N", 5], None, 10)
    assert_matches_ort(to_torch(model), model, randn(4, 5))


@pytest.mark.parametrize(
    ("split", "attrs", "position"),
    [(None, {"keepdims": 0}, 1), (None, {}, -1), (2, {}, 1), ([1, 3], {}, 1)],
    ids=["squeezed", "kept", "scalar-split", "lengths"],
)
def test_split_to_sequence_at(split, attrs: dict, position: int) -> None:
    inputs, inits = ["x"], [ints("pos", [position])]
    if split is not None:
        inputs.append("split")
        shape = [] if isinstance(split, int) else [len(split)]
        values = [split] if isinstance(split, int) else split
        inits.append(helper.make_tensor("split", TensorProto.INT64, shape, values))
    inits[0] = helper.make_tensor("pos", TensorProto.INT64, [], [position])
    nodes = [
        helper.make_node("SplitToSequence", inputs, ["seq"], axis=1, **attrs),
        helper.make_node("SequenceAt", ["seq", "pos"], ["y"]),
    ]
    model = make_model(nodes, ["N", 4, 3], None, 12, inits)
    assert_matches_ort(to_torch(model), model, randn(2, 4, 3))


@pytest.mark.parametrize("new_axis", [0, 1])
def test_concat_from_sequence(new_axis: int) -> None:
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["seq"], axis=2, keepdims=0),
        helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=1, new_axis=new_axis),
    ]
    model = make_model(nodes, ["N", 4, 3], None, 12)
    assert_matches_ort(to_torch(model), model, randn(2, 4, 3))


# --------------------------------------------------------------- Clip with an omitted bound


@pytest.mark.parametrize("opset", [11, 12, 13])
@pytest.mark.parametrize(
    "bounds",
    [("", "hi"), ("lo", ""), ("lo",), ("lo", "hi"), (), ("", ""), ("mean", "hi")],
    ids=["max-only", "min-then-empty", "min-only", "both", "none", "both-empty", "computed-min"],
)
def test_clip_with_omitted_or_computed_bounds(bounds: tuple[str, ...], opset: int) -> None:
    # Both torch exporters write clamp(max=m) as Clip(x, '', m); onnx2torch's converter fails.
    inits = [floats("lo", np.float32(-0.3)), floats("hi", np.float32(0.4))]
    nodes = [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0, 1], keepdims=0)]
    nodes.append(helper.make_node("Clip", ["x", *bounds], ["y"], name="clip_0"))
    model = make_model(nodes, ["N", 5], None, opset, inits)
    x = randn(4, 5)
    module = to_torch(model, sample_input=x)
    assert fallback_nodes(module) == []
    assert_matches_ort(module, model, x)


# ------------------------------------------------------ the onnx wheel's backend test models

#: models (pytorch-converted / pytorch-operator / simple) the converters above make convertible.
BACKEND_MODELS = [
    "pytorch-converted/test_ConstantPad2d",
    "pytorch-converted/test_ReflectionPad2d",
    "pytorch-converted/test_ReplicationPad2d",
    "pytorch-converted/test_MaxPool1d_stride",
    "pytorch-converted/test_MaxPool3d_stride_padding",
    "pytorch-operator/test_operator_pad",
    "pytorch-operator/test_operator_maxpool",
    "pytorch-operator/test_operator_symbolic_override",
    "pytorch-operator/test_operator_view",
    "pytorch-operator/test_operator_flatten",
    "pytorch-operator/test_operator_index",
    "simple/test_shrink",
    "simple/test_sequence_model7",
]


@pytest.mark.parametrize("name", BACKEND_MODELS)
def test_backend_model_converts(name: str) -> None:
    model, (x, *_), (expected, *_) = backend_case(name)
    module = to_torch(model, sample_input=x)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("output", [0, 1])
def test_backend_chunk_converts_per_output(output: int) -> None:
    # Split-2 with a `split` attribute and two graph outputs: to_torch takes one output, which
    # onnxinv.load.model.load selects; each converts.
    model, (x,), _ = backend_case("pytorch-operator/test_operator_chunk")
    with pytest.raises(ModelError, match="one graph output"):
        to_torch(model, sample_input=x)
    chosen = model.graph.output[output]
    del model.graph.output[:]
    model.graph.output.append(chosen)
    assert_matches_ort(to_torch(model, sample_input=x), model, x)
