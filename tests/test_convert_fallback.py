"""Tests of per-node fallback: a node onnx2torch cannot convert runs alone in onnxruntime.

Outputs are compared with onnxruntime on the whole model, and gradients with central finite
differences of the whole onnxruntime model (float64 models where onnxruntime has float64
kernels, so the comparison is tight).
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import onnx
import pytest
import torch
from helpers import export_batched
from onnx import TensorProto, helper, numpy_helper
from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    get_converter,
)
from torch import nn

from onnxinv.convert import fallback_nodes, to_torch
from onnxinv.convert.node_jacobian import MAX_FD_VALUES
from onnxinv.convert.ort_node import OrtNode
from onnxinv.errors import ConversionError
from onnxinv.load.runtime import session

ELEM = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE}


def mlp(
    op: str, attrs: dict, dtype=np.float32, n_in: int = 6, hidden: int = 8, n_out: int = 4
) -> onnx.ModelProto:
    """``x[N, n_in] -> Gemm -> op -> Gemm -> y[N, n_out]`` with seeded weights."""
    rng = np.random.default_rng(1)

    def tensor(name: str, *shape: int, scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)

    inits = [
        tensor("W1", n_in, hidden, scale=0.5),
        tensor("b1", hidden, scale=0.25),
        tensor("W2", hidden, n_out, scale=0.5),
        tensor("b2", n_out, scale=0.25),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="gemm_0"),
        helper.make_node(op, ["h"], ["a"], name="odd_0", **attrs),
        helper.make_node("Gemm", ["a", "W2", "b2"], ["y"], name="gemm_1"),
    ]
    elem = ELEM[dtype]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, ["N", n_in])],
        [helper.make_tensor_value_info("y", elem, ["N", n_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = session(model.SerializeToString())
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def ort_gradient(model: onnx.ModelProto, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """d/dx of ``sum(weights * model(x))`` by central differences of the whole onnxruntime model."""
    h = 1e-6 if x.dtype == np.float64 else 1e-2
    sess = session(model.SerializeToString())
    name = sess.get_inputs()[0].name

    def f(z: np.ndarray) -> float:
        return float((sess.run(None, {name: z.astype(x.dtype)})[0] * weights).sum())

    grad = np.zeros(x.size)
    for j in range(x.size):
        step = np.zeros(x.size)
        step[j] = h
        step = step.reshape(x.shape)
        grad[j] = (f(x + step) - f(x - step)) / (2 * h)
    return grad.reshape(x.shape)


def autograd_gradient(module: nn.Module, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (module(xt) * torch.from_numpy(weights)).sum().backward()
    return xt.grad.numpy()


def assert_gradient_matches(module, model, x, weights) -> None:
    expected = ort_gradient(model, x, weights)
    actual = autograd_gradient(module.double(), x, weights)
    tolerance = (1e-6 if x.dtype == np.float64 else 3e-3) * np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tolerance)


def ort_nodes(module: nn.Module) -> list[OrtNode]:
    return [m for m in module.modules() if isinstance(m, OrtNode)]


# --------------------------------------------------------------- operators onnx2torch lacks

#: (operator, attributes, dtype, samples independent along the batch axis)
CASES = [
    ("Sinh", {}, np.float32, True),
    ("Asinh", {}, np.float32, True),
    ("LpNormalization", {"axis": -1}, np.float32, True),
    ("LpNormalization", {"axis": -1}, np.float64, True),
    ("MeanVarianceNormalization", {"axes": [1]}, np.float32, True),
    ("MeanVarianceNormalization", {"axes": [0, 1]}, np.float32, False),  # mixes samples
    ("Trilu", {}, np.float64, False),  # on [N, n] the mask depends on the sample's position
]


@pytest.mark.parametrize(("op", "attrs", "dtype", "independent"), CASES)
def test_missing_operator_in_an_mlp_falls_back(op, attrs, dtype, independent) -> None:
    model = mlp(op, attrs, dtype)
    module = to_torch(model)
    assert fallback_nodes(module) == module.onnxinv_fallback_nodes == [f"odd_0 ({op})"]
    rng = np.random.default_rng(7)
    x = rng.random((5, 6)).astype(dtype)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ort_run(model, x), rtol=1e-5, atol=1e-6)
    weights = rng.standard_normal((5, 4))
    assert_gradient_matches(module, model, x, weights)
    (node,) = ort_nodes(module)
    assert node.batch_independent is independent


@pytest.mark.parametrize("batch", [1, 4])
def test_every_jacobian_row_of_a_batch(batch: int) -> None:
    # m backward passes of one forward (as the solvers take Jacobians), all samples at once.
    model = mlp("LpNormalization", {"axis": -1}, np.float64)
    module = to_torch(model).double()
    x = np.random.default_rng(2).random((batch, 6))
    xt = torch.tensor(x, requires_grad=True)
    y = module(xt)
    rows = [torch.autograd.grad(y[:, i].sum(), xt, retain_graph=True)[0] for i in range(4)]
    jacobian = torch.stack(rows, 1).numpy()  # (batch, 4, 6)
    for i in range(4):
        weights = np.zeros((batch, 4))
        weights[:, i] = 1.0
        np.testing.assert_allclose(jacobian[:, i], ort_gradient(model, x, weights), atol=1e-7)


def test_a_failing_converter_falls_back_with_two_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Mul reads two values that both depend on x, one of them twice.
    model = mlp("Tanh", {}, np.float64)
    nodes = list(model.graph.node)
    nodes.insert(2, helper.make_node("Mul", ["a", "h"], ["p"], name="mul_0"))
    nodes.insert(3, helper.make_node("Mul", ["p", "p"], ["q"], name="square_0"))
    nodes[-1].input[0] = "q"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    converter = get_converter("Mul", 14)

    def refuses(node, graph):
        if node.name == "mul_0":
            raise NotImplementedError("not this one")
        return converter(node, graph)

    monkeypatch.setitem(_CONVERTER_REGISTRY, OperationDescription("", "Mul", 14), refuses)
    module = to_torch(model)
    assert fallback_nodes(module) == ["mul_0 (Mul)"]
    x = np.random.default_rng(3).random((3, 6))
    weights = np.random.default_rng(4).standard_normal((3, 4))
    assert_gradient_matches(module, model, x, weights)


def test_only_the_failing_node_falls_back_and_the_registry_is_restored() -> None:
    # Two MaxPools: SAME padding with dilations has no converter meaning, the other converts.
    attrs = {"kernel_shape": [3, 3], "dilations": [2, 2], "auto_pad": "SAME_UPPER"}
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="dilated_0", **attrs),
        helper.make_node("MaxPool", ["p"], ["y"], name="plain_0", kernel_shape=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    before = dict(_CONVERTER_REGISTRY)
    module = to_torch(model)
    assert fallback_nodes(module) == ["dilated_0 (MaxPool)"]
    assert dict(_CONVERTER_REGISTRY) == before
    x = np.random.default_rng(5).standard_normal((2, 1, 6, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), ort_run(model, x))
    with pytest.raises(NotImplementedError):
        get_converter("Sinh", 17)
    to_torch(mlp("Sinh", {}))
    with pytest.raises(NotImplementedError):  # not left registered
        get_converter("Sinh", 17)


def test_no_fallback_when_every_node_converts() -> None:
    assert fallback_nodes(to_torch(mlp("Tanh", {}))) == []


def test_a_node_too_large_to_difference_is_refused() -> None:
    model = mlp("Sinh", {}, hidden=MAX_FD_VALUES + 4)
    with pytest.raises(ConversionError, match="Sinh.*odd_0.*8200 node runs per sample") as info:
        to_torch(model)
    assert info.value.node == "odd_0"
    assert info.value.op_type == "Sinh"
    assert "\n" not in str(info.value)


def test_a_batch_that_mixes_samples_is_refused_when_too_large() -> None:
    # Differenced per sample the node would be small, but it mixes samples: 5 x 1000 values.
    model = mlp("MeanVarianceNormalization", {"axes": [0, 1]}, hidden=1000)
    module = to_torch(model).double()
    x = torch.rand(5, 6, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ConversionError, match="odd_0.*10000 node runs"):
        module(x).sum().backward()


def test_the_module_copies_and_pickles() -> None:
    model = mlp("Sinh", {})
    module = to_torch(model)
    x = np.random.default_rng(6).random((2, 6)).astype(np.float32)
    expected = ort_run(model, x)
    for other in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert fallback_nodes(other) == ["odd_0 (Sinh)"]
        with torch.no_grad():
            np.testing.assert_allclose(other(torch.from_numpy(x)).numpy(), expected, atol=1e-6)


def scikit_learn_pipeline() -> onnx.ModelProto:
    """skl2onnx: Scaler and LinearClassifier (ai.onnx.ml, no converters), probabilities only."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x, y = rng.random((60, 6)).astype(np.float32), rng.integers(0, 3, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
        model = to_onnx(pipeline, x[:1], options={"zipmap": False}, target_opset=15)
    probabilities = model.graph.output[1].name
    return onnx.utils.Extractor(model).extract_model([model.graph.input[0].name], [probabilities])


def test_scikit_learn_operators_fall_back() -> None:
    model = scikit_learn_pipeline()
    module = to_torch(model)
    assert [f.split(" (")[1] for f in fallback_nodes(module)] == [
        "Scaler)",
        "LinearClassifier)",
        "Normalizer)",
    ]
    rng = np.random.default_rng(9)
    x = rng.random((4, 6)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(
            module(torch.from_numpy(x)).numpy(), ort_run(model, x), atol=1e-6
        )
    assert_gradient_matches(module, model, x, rng.standard_normal((4, 3)))


# ----------------------------------------------------------------------------- real exports


class Recurrent(nn.Module):
    """An LSTM (no converter) read at its last step, then ``tril`` (Trilu: no converter)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.lstm(x)[0][:, -1]
        square = self.head(last)[:, :, None] * last[:, None, :]
        return torch.tril(square).flatten(1)


def export(module: nn.Module, dynamo: bool) -> onnx.ModelProto:
    return export_batched(module, torch.rand(2, 5, 3), dynamo)


@pytest.mark.parametrize(
    "dynamo",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # dynamo exports an LSTM in ~10 s
    ids=["torchscript", "dynamo"],
)
def test_exported_lstm_and_tril_fall_back(dynamo: bool) -> None:
    model = export(Recurrent().eval(), dynamo)
    module = to_torch(model)
    assert sorted(f.split(" (")[1] for f in fallback_nodes(module)) == ["LSTM)", "Trilu)"]
    rng = np.random.default_rng(8)
    x = rng.random((3, 5, 3)).astype(np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(x)).numpy()
    expected = ort_run(model, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert_gradient_matches(module, model, x, rng.standard_normal(expected.shape))
