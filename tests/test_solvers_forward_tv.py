"""--tv: total-variation smoothing in the forward pass keeps every sample a preimage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import BUNDLED, TARGETS, assert_solved, dense

import onnxinv
from onnxinv.solvers.forward.tv import grid_shape, total_variation


@pytest.mark.parametrize("target", ["digit3", "mix_1_7"])
def test_tv_smooths_forward_samples_and_keeps_them_verified(target):
    import json

    spec = json.loads((TARGETS / f"{target}.json").read_text())
    tv = {}
    for strength in (0.0, 0.05):
        res = onnxinv.invert(BUNDLED[2], spec, method="forward", bounds=(0, 1), samples=12,
                             tv=strength)  # fmt: skip
        p = np.array(spec["distribution"]) if "distribution" in spec else None
        if p is not None:
            assert_solved(BUNDLED[2], res, p, "probabilities", bounds=(0, 1), n=12)
        else:
            assert res.all_verified
        x = torch.tensor(res.inputs.reshape(12, -1), dtype=torch.float64)
        tv[strength] = total_variation(x, (8, 8)).mean().item()
    assert tv[0.05] < 0.8 * tv[0.0], tv


def test_tv_on_a_non_image_input_is_ignored_with_a_note():
    model = dense(7, 3)
    res = onnxinv.invert(model, {"class": 1, "confidence": 0.6}, method="forward", samples=4,
                         tv=0.05)  # fmt: skip
    assert any("--tv ignored" in n for n in res.notes)
    assert_solved(model, res, res.target_array.ravel(), "probabilities", n=4)


@pytest.mark.parametrize(
    "shape, n, hw",
    [((64,), 64, (8, 8)), ((1, 28, 28), 784, (28, 28)), ((8, 8, 1), 64, (8, 8)), ((7,), 7, None)],
)
def test_image_shape(shape, n, hw):
    # (an NHWC input with one channel, 8x8x1, reads as the square 64 = 8x8)
    assert grid_shape(shape, n) == hw
