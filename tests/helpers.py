"""Shared model builders and the independent onnxruntime check every inversion test relies on.

Nothing here imports onnxinv's verification code: :func:`ort_outputs` and :func:`assert_solved`
run the ORIGINAL model in a fresh ``onnxruntime.InferenceSession`` and compare with the target
themselves, so a bug in onnxinv's own check cannot make a test pass.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
TARGETS = MODELS / "targets"
BUNDLED = {n: MODELS / f"digits_{n}layer.onnx" for n in (1, 2, 6)}

ModelSource = str | Path | bytes | onnx.ModelProto

#: Environment for subprocesses: tiny models, so one thread (see conftest.py).
SINGLE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

# ------------------------------------------------------------------------------ onnx.helper models


def value_info(name: str, shape: list | None, elem: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def const(name: str, array, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),
    opset: int = 17,
    name: str = "test_graph",
) -> onnx.ModelProto:
    """A checked model at ``opset`` with an IR version every supported onnxruntime reads."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def dense(
    n_in: int = 64,
    n_out: int = 10,
    *,
    seed: int = 0,
    scale: float = 1.0,
    tail: str | None = "Softmax",
    act: str | None = None,
    batch: int | str = "N",
    out_name: str = "probs",
) -> onnx.ModelProto:
    """``x[batch, n_in] -> Gemm (-> act) (-> tail) -> out_name``, random weights of std ``scale``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, scale / np.sqrt(n_in), (n_in, n_out))
    b = rng.normal(0, 0.1, n_out)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z"])]
    last = "z"
    if act is not None:
        nodes.append(helper.make_node(act, [last], ["h"]))
        last = "h"
    if tail is not None:
        nodes.append(helper.make_node(tail, [last], [out_name], axis=-1))
    else:
        nodes.append(helper.make_node("Identity", [last], [out_name]))
    return make_model(
        nodes,
        [value_info("x", [batch, n_in])],
        [value_info(out_name, [batch, n_out])],
        [const("W", w), const("b", b)],
    )


# ------------------------------------------------------------------------------------ torch models


def torch_mlp(seed: int = 0, tail: str | None = "softmax", n_out: int = 10) -> nn.Module:
    """Flatten -> Linear(64, 32) -> SELU -> Linear(32, n_out) -> tail, on [1, 1, 8, 8] images.

    ``tail``: "softmax", "logsoftmax", "tanh" or None (logits).
    """
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, 32), nn.SELU(), nn.Linear(32, n_out)]
    tails = {"softmax": nn.Softmax(-1), "logsoftmax": nn.LogSoftmax(-1), "tanh": nn.Tanh()}
    if tail is not None:
        layers.append(tails[tail])
    return nn.Sequential(*layers).eval()


@contextlib.contextmanager
def quiet():
    """Silence the torch exporters' warnings and progress chatter."""
    sink = io.StringIO()
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        yield


def export(module: nn.Module, path: Path, dynamo: bool, shape=(1, 1, 8, 8)) -> Path:
    """``torch.onnx.export`` at the default opset, silently."""
    example = (torch.rand(*shape),)
    with quiet():
        torch.onnx.export(
            module, example, str(path), dynamo=dynamo, input_names=["x"], output_names=["y"]
        )
    return path


def export_batched(
    module: nn.Module, example: torch.Tensor, dynamo: bool, opset: int | None = 17
) -> onnx.ModelProto:
    """``torch.onnx.export`` with a symbolic batch axis ``N``, silently, as a ModelProto (the
    TorchScript exporter at ``opset``; dynamo at its own)."""
    kwargs = {"input_names": ["x"], "output_names": ["y"]}
    with quiet():
        if dynamo:
            batch = torch.export.Dim("N", min=1, max=64)
            program = torch.onnx.export(
                module, (example,), dynamo=True, dynamic_shapes=({0: batch},), **kwargs
            )
            return program.model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                          dynamic_axes={"x": {0: "N"}}, **kwargs)  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


def checker_failure() -> onnx.ModelProto:
    """Well-formed protobuf, invalid graph: Gemm reads a tensor nothing defines."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["x", "W_missing"], ["y"])],
        "broken",
        [value_info("x", ["N", 4])],
        [value_info("y", ["N", 3])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ------------------------------------------------------------------ the independent onnxruntime judge


def session(model: ModelSource) -> ort.InferenceSession:
    """A fresh onnxruntime session on the model as written (old-opset warnings silenced)."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    if isinstance(model, Path):
        model = str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def ort_outputs(model: ModelSource, x: np.ndarray, output: str | None = None) -> np.ndarray:
    """The original model's output for samples ``x`` (N, ...), run by a fresh ORT session.

    Models whose input has a fixed batch of 1 are run one sample at a time. A ZipMap output (a
    list of {class: probability} dicts) becomes an (N, classes) array in class order.
    """
    sess = session(model)
    inp = sess.get_inputs()[0]
    name = output or sess.get_outputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    rest = [int(d) for d in inp.shape[1:]]
    if isinstance(inp.shape[0], int):
        ys = [sess.run([name], {inp.name: xi.reshape([inp.shape[0], *rest])})[0] for xi in x]
        if isinstance(ys[0], list):
            ys = [y[0] for y in ys]
        else:
            return np.stack([np.asarray(y).reshape(-1) for y in ys])
    else:
        ys = sess.run([name], {inp.name: x.reshape([len(x), *rest])})[0]
    if isinstance(ys, list):  # ZipMap: sequence of maps
        return np.array([[d[k] for k in sorted(d)] for d in ys], dtype=np.float64)
    return np.asarray(ys).reshape(len(x), -1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def as_probabilities(y: np.ndarray, space: str) -> np.ndarray:
    """Outputs in the space a target is compared in: probabilities, or raw values."""
    y = np.asarray(y, dtype=np.float64)
    if space == "logits":
        return softmax(y)
    if space == "log-probabilities":
        return np.exp(y)
    assert space in ("probabilities", "values"), space
    return y


def ort_errors(
    model: ModelSource, x: np.ndarray, target: np.ndarray, space: str, output: str | None = None
) -> np.ndarray:
    """Per-sample max |output - target| measured by onnxruntime on the original model."""
    y = as_probabilities(ort_outputs(model, x, output), space)
    return np.abs(y - np.asarray(target, dtype=np.float64).reshape(1, -1)).max(1)


def assert_solved(
    model: ModelSource,
    result,
    target: np.ndarray,
    space: str,
    *,
    tol: float = 1e-4,
    bounds: tuple[float, float] | None = None,
    n: int | None = None,
    output: str | None = None,
) -> np.ndarray:
    """Every returned input, run through the original model by ORT, hits ``target`` within tol.

    Returns the independently measured errors.
    """
    x = result.inputs
    assert x.dtype == np.float32
    if n is not None:
        assert len(x) == n
    assert np.isfinite(x).all()
    if bounds is not None:
        assert x.min() >= bounds[0] and x.max() <= bounds[1]
    errs = ort_errors(model, x, target, space, output)
    assert (errs <= tol).all(), f"ORT errors {errs} exceed tolerance {tol}"
    assert result.verified.all()
    # (atol: two float32 ulps at 1.0; two onnxruntime graphs may round the last bit apart)
    np.testing.assert_allclose(result.errors, errs, rtol=1e-3, atol=2.4e-7)
    return errs


def reachable_distribution(
    model: ModelSource, space: str, seed: int = 0, lo: float = 0.0, hi: float = 1.0
) -> list[float]:
    """The distribution the model outputs for a random input in [lo, hi]: reachable by construction."""
    sess = session(model)
    shape = [int(d) if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    x = np.random.default_rng(seed).uniform(lo, hi, (1, int(np.prod(shape[1:]))))
    p = as_probabilities(ort_outputs(model, x), space)[0]
    return (p / p.sum()).tolist()


def reachable_values(model: ModelSource, seed: int = 0) -> list[float]:
    sess = session(model)
    shape = [int(d) if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    x = np.random.default_rng(seed).uniform(0, 1, (1, int(np.prod(shape[1:]))))
    return ort_outputs(model, x)[0].astype(np.float64).tolist()


def one_line(exc: BaseException | str) -> str:
    """The message, asserted to be one non-empty line."""
    text = str(exc)
    assert text.strip(), "empty message"
    assert "\n" not in text.strip(), f"message is not one line: {text!r}"
    return text


# ------------------------------------------------------- the onnx wheel's backend test models

#: Models that ship inside the installed onnx wheel, each ``<group>/<name>/model.onnx`` with
#: ``test_data_set_0/input_*.pb`` and ``output_*.pb``: exports nobody on this project wrote.
BACKEND_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def backend_case(name: str) -> tuple[onnx.ModelProto, list[np.ndarray], list[np.ndarray]]:
    """``(model, inputs, expected outputs)`` of a backend test model, e.g. ``simple/test_shrink``.

    Skips the test when this onnx wheel does not ship the model.
    """
    import pytest

    folder = BACKEND_DATA / name
    if not folder.is_dir():
        pytest.skip(f"{name} is not in this onnx wheel")
    data = folder / "test_data_set_0"

    def read(prefix: str) -> list[np.ndarray]:
        files = sorted(data.glob(f"{prefix}_*.pb"), key=lambda f: int(f.stem.split("_")[-1]))
        return [numpy_helper.to_array(onnx.load_tensor(str(f))).copy() for f in files]

    return onnx.load(str(folder / "model.onnx")), read("input"), read("output")
