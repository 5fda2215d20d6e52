"""Tests of onnxinv.convert: ONNX -> PyTorch conversion, the onnx2torch compat layer, diagnosis."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
from torch import nn

from onnxinv._ort import session
from onnxinv.convert import compat, to_torch
from onnxinv.convert.compat_split import chunk_sizes
from onnxinv.errors import ConversionError, ModelError

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


def test_broken_converter_is_diagnosed(monkeypatch: pytest.MonkeyPatch) -> None:
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
    with pytest.raises(ConversionError) as info:
        to_torch(model)
    assert info.value.op_type == "Tanh"
    assert info.value.node == "tanh_0"
    assert "tanh_0" in str(info.value) and "disagrees with onnxruntime" in str(info.value)
    monkeypatch.undo()
    assert _CONVERTER_REGISTRY[key] is good
    to_torch(model)  # fine again once restored


def test_converter_that_raises_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"], name="relu_0"),
            helper.make_node("Tanh", ["a"], ["y"], name="tanh_0"),
        ],
        ["N", 6],
        ["N", 6],
        17,
    )

    def refuses(node, graph):
        raise NotImplementedError("not today")

    key = OperationDescription(domain="", operation_type="Tanh", version=13)
    monkeypatch.setitem(_CONVERTER_REGISTRY, key, refuses)
    with pytest.raises(ConversionError, match="tanh_0.*not today") as info:
        to_torch(model)
    assert info.value.op_type == "Tanh"


def test_module_that_fails_at_run_time_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
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
    with pytest.raises(ConversionError, match="tanh_0.*fails when run: boom") as info:
        to_torch(model)
    assert info.value.op_type == "Tanh"


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
    module = to_torch(model, check=False)
    with pytest.raises(RuntimeError, match="allowzero"):
        torch_run(module, rand(2, 3))


def test_allowzero_with_constant_zero_is_rejected() -> None:
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"], name="r0", allowzero=1)]
    model = make_model(nodes, [2, 3], [2, 0], 19, [ints("shape", [2, 0])])
    with pytest.raises(ConversionError, match="allowzero") as info:
        to_torch(model, check=False)
    assert info.value.node == "r0"


def test_average_pool_dilations_are_rejected() -> None:
    nodes = [
        helper.make_node(
            "AveragePool", ["x"], ["y"], name="pool_0", kernel_shape=[2, 2], dilations=[2, 2]
        )
    ]
    model = make_model(nodes, [1, 1, 6, 6], None, 19)
    with pytest.raises(ConversionError, match="dilations") as info:
        to_torch(model, check=False)
    assert info.value.op_type == "AveragePool"


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
    with pytest.raises(ConversionError, match="antialias") as info:
        to_torch(make_model([antialias], [1, 1, 4, 4], None, 19, inits), check=False)
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
