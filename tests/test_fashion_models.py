"""The bundled 28x28 Fashion-MNIST classifiers written by ``models/fashion.py``.

Every committed model loads in onnxruntime with the documented input and output, and classifies
``fashion_val.npz`` as well as ``models/README.md`` says it does (the figure the script measured
on the same images). The 2-layer SELU network is inverted to a class-at-0.9 target inside the
pixel box [0, 1], and the returned inputs are rechecked with a fresh onnxruntime session
(``helpers.assert_solved``), not only through onnxinv's flags.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import MODELS, assert_solved, ort_outputs, session

from onnxinv import invert

#: model name -> input sample shape
SHAPES = {
    "fashion_1layer": (784,),
    "fashion_2layer": (784,),
    "fashion_6layer": (784,),
    "fashion_vit": (1, 28, 28),
}
VAL = MODELS / "fashion_val.npz"
FILES = [VAL, *(MODELS / f"{name}.onnx" for name in SHAPES)]
MISSING = [f.name for f in FILES if not f.exists()]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} absent: run python models/fashion.py"
)
ACCURACY_COLUMN = "`fashion_val.npz` accuracy"


def readme_accuracy(name: str) -> float:
    """The ``fashion_val.npz`` accuracy models/README.md gives for ``name``."""
    lines = (MODELS / "README.md").read_text().splitlines()
    header = next(line for line in lines if ACCURACY_COLUMN in line)
    column = [cell.strip() for cell in header.split("|")].index(ACCURACY_COLUMN)
    row = next(line for line in lines if line.startswith(f"| `{name}.onnx` |"))
    return float(row.split("|")[column].strip().rstrip("%")) / 100


@pytest.fixture(scope="module")
def validation() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(VAL)
    return data["x"], data["y"]


def test_the_validation_images_are_the_documented_arrays(validation):
    x, y = validation
    assert x.shape == (1000, 784) and x.dtype == np.float32
    assert y.shape == (1000,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(10))


@pytest.mark.parametrize("name", SHAPES)
def test_fashion_model_has_the_documented_input_and_output(name):
    path = MODELS / f"{name}.onnx"
    assert path.stat().st_size < 5_000_000
    sess = session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, out.name, out.type) == (
        "pixels",
        "tensor(float)",
        "probs",
        "tensor(float)",
    )
    assert inp.shape == ["batch", *SHAPES[name]]
    assert out.shape == ["batch", 10]
    assert onnx.load(str(path)).graph.node[-1].op_type == "Softmax"


@pytest.mark.parametrize("name", SHAPES)
def test_fashion_model_classifies_the_validation_images_as_documented(name, validation):
    x, y = validation
    probs = ort_outputs(MODELS / f"{name}.onnx", x)  # reshaped to the model's input layout
    assert probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    accuracy = (probs.argmax(1) == y).mean()
    assert abs(accuracy - readme_accuracy(name)) <= 0.01


@pytest.mark.parametrize("k", [3, 8])
def test_the_2layer_network_is_inverted_to_a_class_at_0_9_inside_the_pixel_box(k):
    path = MODELS / "fashion_2layer.onnx"
    result = invert(path, {"class": k, "confidence": 0.9}, bounds=(0, 1), samples=8, seed=0)
    target = np.full(10, 0.1 / 9)
    target[k] = 0.9
    tol = result.target.tolerance
    assert_solved(path, result, target, "probabilities", tol=tol, bounds=(0, 1), n=8)
    assert len(np.unique(result.inputs, axis=0)) == 8
