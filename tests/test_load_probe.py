"""The batch probe: a dynamo export with a fixed batch of 1 that cannot take a batch.

A class token of batch 1 concatenated in front of the patch tokens makes onnxruntime fail on a
batch of several samples. Loading must find that out silently (onnxruntime's own logger writes
to file descriptor 2, past Python's ``sys.stderr``) and then run one sample per onnxruntime run.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import export, session
from torch import nn

from onnxinv import invert
from onnxinv.load import runtime
from onnxinv.load.model import load
from onnxinv.load.surgery import extract


class TinyViT(nn.Module):
    """Patches of a 28×28 image as 16 tokens, a class token in front, mean of tokens -> 10."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(1, 8, 7, stride=7)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 17, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.head(torch.tanh(t).mean(1))


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    return str(export(TinyViT().eval(), path, dynamo=True, shape=(1, 1, 28, 28)))


def _batch_of_three(model: onnx.ModelProto) -> tuple[bytes, dict]:
    name = model.graph.input[0].name
    cut = extract(model, name, model.graph.output[0].name, symbolic_batch=True)
    return cut.SerializeToString(), {name: np.zeros((3, 1, 28, 28), np.float32)}


@pytest.mark.parametrize("quiet", [False, True], ids=["loud", "quiet"])
def test_onnxruntime_error_reaches_fd_2_unless_quiet(vit, capfd, quiet):
    """The export cannot take a batch, and only a quiet session keeps onnxruntime's log off fd 2."""
    cut, feed = _batch_of_three(onnx.load(vit))
    sess = runtime.session(cut, quiet=quiet)
    capfd.readouterr()
    with pytest.raises(Exception, match="Concat"):
        sess.run(None, feed)
    err = capfd.readouterr().err
    assert ("Concat" in err) == (not quiet), err


def test_failed_batch_probe_is_silent_and_runs_one_sample_at_a_time(vit, capfd):
    capfd.readouterr()
    lm = load(vit)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert lm.batch_axis and not lm.batched and not lm.original_batched
    assert lm.input_shape == (1, 1, 28, 28) and lm.unit_shape == (1, 28, 28)
    x = np.random.default_rng(0).random((3, 1, 1, 28, 28)).astype(np.float32)
    sess = session(vit)
    each = np.stack([sess.run(None, {sess.get_inputs()[0].name: xi})[0][0] for xi in x])
    np.testing.assert_allclose(lm.run(x).reshape(3, 10), each, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(lm.run(x, "original").reshape(3, 10), each)


def test_unbatchable_export_inverts_silently(vit, capfd):
    sess = session(vit)
    name = sess.get_inputs()[0].name
    x0 = np.random.default_rng(1).random((1, 1, 28, 28)).astype(np.float32)
    target = sess.run(None, {name: x0})[0]
    capfd.readouterr()
    result = invert(vit, {"values": target.tolist()}, samples=3, seed=0, bounds=(0, 1))
    assert "Concat" not in capfd.readouterr().err
    assert result.verified.all() and result.inputs.shape == (3, 1, 1, 28, 28)
    for xi in result.inputs:  # a fresh session, one sample per run
        assert np.abs(sess.run(None, {name: xi})[0] - target).max() <= 1e-4
    assert len({xi.tobytes() for xi in result.inputs}) == 3
