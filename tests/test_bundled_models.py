"""The bundled digit classifiers written by ``models/train.py``.

Every bundled model loads in onnxruntime and still classifies the validation split it was scored
on. The ReLU network and the two CNNs (one NCHW with a BatchNormalization node, one NHWC graph in
tf2onnx's style) are inverted by the backward pass inside the pixel box [0, 1]: the target is the
model's own output on a real validation digit, so it is reachable there. Outputs are rechecked
here with a fresh onnxruntime session (``helpers.ort_errors``), not only through onnxinv's flags.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import MODELS, ort_errors, ort_outputs, session

from onnxinv import invert

VALIDATION = np.load(MODELS / "digits_val.npz")
X_VAL, Y_VAL = VALIDATION["x"], VALIDATION["y"]

#: model name -> (input sample shape, operators the graph consists of)
NEW = {
    "digits_relu": ((64,), {"Gemm", "Relu", "Softmax"}),
    "digits_cnn": (
        (1, 8, 8),
        {"Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm", "Softmax"},
    ),
    "digits_nhwc": (
        (8, 8, 1),
        {"Transpose", "Conv", "Relu", "MaxPool", "Reshape", "MatMul", "Add", "Softmax"},
    ),
}
ALL = ("digits_1layer", "digits_2layer", "digits_6layer", *NEW)
#: validation digits used as targets: index 0 (a 7 every model is sure of) and index 56 (a 4
#: the ReLU and NHWC models give only 0.51 and 0.44)
DIGITS = (0, 56)


@pytest.mark.parametrize("name", ALL)
def test_bundled_model_loads_and_classifies_the_validation_digits(name):
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 1 << 20
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["pixels"]
    probs = ort_outputs(path, X_VAL)  # reshapes the flat pixels to the model's input layout
    assert probs.shape == (len(X_VAL), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (probs.argmax(1) == Y_VAL).mean() >= 0.95


@pytest.mark.parametrize("name", NEW)
def test_new_bundled_model_has_the_documented_layout_and_operators(name):
    shape, ops = NEW[name]
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert tuple(d.dim_value for d in dims[1:]) == shape
    assert {node.op_type for node in model.graph.node} == ops
    assert model.opset_import[0].version >= 13


@pytest.mark.parametrize("idx", DIGITS)
@pytest.mark.parametrize("name", NEW)
def test_backward_inverts_a_validation_digit_inside_the_pixel_box(name, idx):
    path = MODELS / f"{name}.onnx"
    p = ort_outputs(path, X_VAL[idx : idx + 1])[0].astype(np.float64)
    p /= p.sum()
    result = invert(
        path, {"distribution": p.tolist()}, method="backward", bounds=(0, 1), samples=100, seed=0
    )
    x = result.inputs
    assert x.shape == (100, *NEW[name][0]) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0

    tol = result.target.tolerance
    errs = ort_errors(path, x, p, "probabilities")
    assert result.n_verified >= 99, f"{result!r}, notes {result.notes}"
    assert (errs <= tol).sum() >= 99, f"ORT errors {np.sort(errs)[-3:]} vs tolerance {tol}"
    np.testing.assert_array_equal(result.verified, errs <= tol)
    assert {m for m, ok in zip(result.methods, result.verified, strict=True) if ok} == {"backward"}
