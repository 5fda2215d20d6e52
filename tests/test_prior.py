"""--prior: preimages nearest a reference input, and their distance to it in the report.

The check that matters: with a real digit's output as the target and the mean digit as the
prior, the samples are (verified preimages and) much nearer the prior, and nearer the real
digit, than plain samples; the report's distances are the true ones.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import MODELS, assert_solved, one_line, ort_outputs

import onnxinv
from onnxinv.cli import main
from onnxinv.errors import OptionError

VAL = np.load(MODELS / "digits_val.npz")
BOX = (0.0, 1.0)


def digit_target(path, label: int = 5, index: int = 0):
    """(the real digit, its model output as a distribution, the model's input shape)."""
    x = VAL["x"][VAL["y"] == label][index].astype(np.float64)
    p = ort_outputs(str(path), x[None])[0].astype(np.float64)
    return x, (p / p.sum()).tolist()


@pytest.mark.parametrize("model", ["2layer", "relu", "cnn", "nhwc"])
@pytest.mark.parametrize("method", ["auto", "backward"])
def test_a_prior_pulls_the_preimages_towards_it(model, method):
    path = MODELS / f"digits_{model}.onnx"
    five, p = digit_target(path)
    mean = VAL["x"].mean(0).astype(np.float64)
    runs = {}
    for name, prior in (("plain", None), ("prior", mean)):
        res = onnxinv.invert(path, {"distribution": p}, method=method, bounds=BOX, samples=16,
                             prior=prior)  # fmt: skip
        assert_solved(path, res, np.array(p), "probabilities", bounds=BOX, n=16)
        runs[name] = res.inputs.reshape(16, -1).astype(np.float64)
        if prior is not None:
            true = np.linalg.norm(runs[name] - mean, axis=1)
            np.testing.assert_allclose(res.prior_distance, true, rtol=1e-6)
            report = res.report()
            assert report["totals"]["mean_distance_to_prior"] == pytest.approx(true.mean())
            assert [r["distance_to_prior"] for r in report["samples"]] == pytest.approx(true)
    to_prior = {k: np.linalg.norm(v - mean, axis=1).mean() for k, v in runs.items()}
    to_five = {k: np.linalg.norm(v - five, axis=1).mean() for k, v in runs.items()}
    assert to_prior["prior"] < 0.6 * to_prior["plain"], to_prior
    assert to_five["prior"] < to_five["plain"], to_five


def test_a_prior_of_the_wrong_size_or_file_is_refused_in_one_line(tmp_path):
    path = MODELS / "digits_2layer.onnx"
    _, p = digit_target(path)
    with pytest.raises(OptionError) as info:
        onnxinv.invert(path, {"distribution": p}, bounds=BOX, prior=np.zeros(10))
    assert "prior has 10 values, the input 'pixels' has 64" in one_line(info.value)
    with pytest.raises(OptionError) as info:
        onnxinv.invert(path, {"distribution": p}, prior=tmp_path / "missing.npy")
    assert "cannot read" in one_line(info.value)
    with pytest.raises(OptionError) as info:
        onnxinv.invert(path, {"distribution": p}, prior=[np.nan] * 64)
    assert "finite" in one_line(info.value)


def test_cli_prior_file_reaches_the_report(tmp_path):
    path = MODELS / "digits_2layer.onnx"
    _, p = digit_target(path)
    (tmp_path / "t.json").write_text(json.dumps({"distribution": p}))
    mean = VAL["x"].mean(0)
    np.save(tmp_path / "mean.npy", mean)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(path), "-t", str(tmp_path / "t.json"), "-n", "4",
                                    "--bounds", "0,1", "--prior", str(tmp_path / "mean.npy"),
                                    "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    x = np.load(out / "inputs.npy").reshape(4, -1).astype(np.float64)
    true = np.linalg.norm(x - mean[None], axis=1)
    assert [r["distance_to_prior"] for r in report["samples"]] == pytest.approx(true, rel=1e-5)
    assert report["settings"]["prior"]["size"] == 64
