"""Choosing the sample's shape: ``--input-shape`` as the full shape or as one sample's shape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, one_line, session, value_info
from onnx import helper

from onnxinv import invert
from onnxinv.errors import OptionError
from onnxinv.load.model import load


def image_mean(first: int | str = "N") -> onnx.ModelProto:
    """x [first, 3, H, W] -> the mean of each channel [first, 3] (H, W left open)."""
    return make_model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
        [value_info("x", [first, 3, "H", "W"])],
        [value_info("y", [first, 3])],
        opset=17,
    )


@pytest.mark.parametrize(
    ("first", "given", "sample", "unit"),
    [
        ("N", (3, 4, 5), (3, 4, 5), (3, 4, 5)),  # one sample, without the batch axis
        ("N", (-1, 3, 4, 5), (3, 4, 5), (3, 4, 5)),  # the full shape, batch axis -1
        (1, (3, 4, 5), (1, 3, 4, 5), (3, 4, 5)),  # a fixed batch of one, left out
        (1, (1, 3, 4, 5), (1, 3, 4, 5), (3, 4, 5)),  # ... or given
    ],
    ids=["symbolic-sample", "symbolic-full", "one-sample", "one-full"],
)
def test_input_shape_is_the_full_shape_or_one_samples(first, given, sample, unit):
    model = image_mean(first)
    lm = load(model, input_shape=given)
    assert lm.input_shape == sample and lm.unit_shape == unit and lm.batch_axis
    x = np.random.default_rng(0).random((3, *sample)).astype(np.float32)
    sess = session(model)  # a fresh onnxruntime session, one sample per run
    expected = np.stack([sess.run(None, {"x": xi.reshape((1, 3, 4, 5))})[0][0] for xi in x])
    assert expected.shape == (3, 3)
    np.testing.assert_allclose(lm.run(x, "original").reshape(3, 3), expected, rtol=1e-6)
    np.testing.assert_allclose(lm.run(x).reshape(3, 3), expected, rtol=1e-6, atol=1e-7)


def test_sample_shape_inverts_through_the_api():
    model = image_mean("N")
    target = np.array([0.2, 0.5, 0.7])
    result = invert(model, {"values": [target.tolist()]}, input_shape="3,4,5", samples=2, seed=0)
    assert result.inputs.shape == (2, 3, 4, 5) and result.verified.all()
    y = session(model).run(None, {"x": result.inputs})[0]  # a batch of the two samples
    assert np.abs(y - target).max() <= 1e-4


@pytest.mark.parametrize(
    ("first", "given", "words"),
    [
        ("N", (4, 4, 5), ("dimension 1", "declared 3", "not 4", "[N, 3, H, W]")),
        ("N", (4, 5), ("has 2 dimensions", "give all 4, or the 3 of one sample")),
        ("N", (-1, 4, 5), ("one sample", "must not start with -1")),
        (1, (-1, 3, 4, 5), ("dimension 0", "declared 1", "not -1")),
        (1, (2, 3, 4, 5), ("dimension 0", "declared 1", "not 2")),
        (2, (3, 4, 5), ("has 3 dimensions", "give all 4")),  # a first axis of 2 is no batch axis
    ],
    ids=[
        "static-dim-differs",
        "two-too-few",
        "sample-starts-with-1",
        "batch-1-not-1",
        "batch-1-not-2",
        "fixed-batch-of-2",
    ],  # fmt: skip
)
def test_input_shape_mismatch_is_one_line_naming_both(first, given, words):
    with pytest.raises(OptionError) as info:
        load(image_mean(first), input_shape=given)
    message = one_line(info.value)
    assert "'x'" in message and "--input-shape" in message
    for word in words:
        assert word in message
    if first == 2:
        assert "one sample" not in message
