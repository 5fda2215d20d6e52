"""A small smooth CNN (Conv, SELU, Flatten, Gemm, Softmax) goes through the chain pass.

Exported by torch's TorchScript exporter; the target is the model's output on a real digit, so
it is reachable in [0, 1]. The core assertion is onnxruntime's on the returned inputs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from helpers import assert_solved, quiet
from torch import nn

from onnxinv import invert

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits_val.npz"


def _cnn() -> bytes:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.SELU(), nn.Flatten(), nn.Linear(256, 10),
        nn.Softmax(-1),
    ).eval()  # fmt: skip
    buf = io.BytesIO()
    with quiet():
        torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), buf, dynamo=False, input_names=["x"],
                          output_names=["p"], dynamic_axes={"x": {0: "N"}, "p": {0: "N"}})  # fmt: skip
    return buf.getvalue()


def test_a_small_cnn_is_inverted_by_the_backward_pass_alone():
    from helpers import ort_outputs

    model = _cnn()
    x = np.load(DIGITS)["x"][5].reshape(1, 1, 8, 8)
    p = ort_outputs(model, x)[0].astype(np.float64)
    p /= p.sum()
    result = invert(model, {"distribution": p.tolist()}, method="backward", samples=32,
                    bounds=(0, 1), seed=0)  # fmt: skip
    assert set(result.methods) == {"backward"}
    assert result.model["jacobians"] == "none"
    assert "Conv" in "\n".join(result.model["plan"])
    assert_solved(model, result, p, "probabilities", bounds=(0, 1), n=32)
