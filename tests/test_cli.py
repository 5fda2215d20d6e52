"""The command line: files written, exit statuses, one-line errors, atomic output folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import BUNDLED, SINGLE_THREAD, TARGETS, dense, ort_errors, ort_outputs
from PIL import Image

from onnxinv import invert
from onnxinv.cli import main
from onnxinv.errors import OutputExistsError

REPORT_KEYS = {"target", "model", "settings", "totals", "timings", "samples"}
SAMPLE_KEYS = {"verified", "max_error", "iterations", "method"}


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(res, code: int = 1) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("onnxinv: error: ")
    assert "Traceback" not in res.stderr
    return lines[0]


def leftovers(folder) -> list[str]:
    """Temporary folders an interrupted or failed write might leave behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def check_folder(out, model, n: int, tolerance: float = 1e-4) -> dict:
    """Everything in a result folder, checked against a fresh onnxruntime run of ``model``."""
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png",
        "inputs.npy",
        "outputs.npy",
        "report.json",
    ]
    x = np.load(out / "inputs.npy")
    y = np.load(out / "outputs.npy")
    report = json.loads((out / "report.json").read_text())
    assert x.shape == (n, 64) and x.dtype == np.float32
    np.testing.assert_allclose(y.reshape(n, -1), ort_outputs(model, x), rtol=1e-5, atol=1e-7)

    assert set(report) >= REPORT_KEYS
    assert len(report["samples"]) == n
    for row in report["samples"]:
        assert set(row) >= SAMPLE_KEYS
        assert isinstance(row["method"], str) and row["method"]
        assert isinstance(row["iterations"], int) and row["iterations"] >= 0
    target = np.array(report["target_output"])
    errors = ort_errors(model, x, target, "probabilities")
    flags = np.array([row["verified"] for row in report["samples"]])
    np.testing.assert_array_equal(flags, errors <= tolerance)
    np.testing.assert_allclose([row["max_error"] for row in report["samples"]], errors, rtol=1e-4)
    assert report["totals"]["samples"] == n
    assert report["totals"]["verified"] == int(flags.sum())

    with Image.open(out / "grid.png") as image:
        assert image.format == "PNG"
        w, h = image.size
        assert 64 <= w <= 4000 and 64 <= h <= 4000
        darkest, brightest = image.convert("L").getextrema()
        assert darkest < brightest  # the digits, not a blank canvas
    return report


# ---------------------------------------------------------------------------------- success


def test_console_script_subprocess(tmp_path):
    exe = shutil.which("onnxinv")
    assert exe is not None, "the onnxinv console script is not installed"
    out = tmp_path / "out"
    proc = subprocess.run(
        [exe, "run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "4", "--bounds", "0,1"]
        + ["--seed", "3", "-o", out],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **SINGLE_THREAD},
    )
    assert proc.returncode == 0, proc.stderr
    assert "4/4 samples verified" in proc.stdout
    assert "Traceback" not in proc.stderr
    report = check_folder(out, BUNDLED[1], 4)
    assert all(row["verified"] for row in report["samples"])
    assert report["settings"]["seed"] == 3 and report["settings"]["bounds"] == [0.0, 1.0]
    x = np.load(out / "inputs.npy")
    assert x.min() >= 0 and x.max() <= 1
    assert leftovers(tmp_path) == []


def test_run_in_process_writes_a_verified_folder(tmp_path):
    out = tmp_path / "not" / "yet" / "there"  # parents are created
    res = invoke("run", BUNDLED[2], "-t", TARGETS / "mix_1_7.json", "-n", "5", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.count("\n") == 1 and "5/5 samples verified" in res.stdout
    report = check_folder(out, BUNDLED[2], 5)
    assert report["totals"]["verified"] == 5
    assert report["settings"]["bounds"] is None


def test_default_output_folder_is_runs_model_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "uniform.json", "-n", "2", "-q")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""  # --quiet
    check_folder(tmp_path / "runs" / "digits_1layer", BUNDLED[1], 2)


# (max_iter, seed) of the forward pass on the 6-layer model with no restarts: some samples stop
# short of the target (auto's backward pass now reaches every one). The first is the known
# setting; the others keep the test meaningful if the solver changes.
PARTIAL = [("4", "0"), ("4", "2"), ("3", "0"), ("20", "1"), ("16", "1"), ("20", "2"), ("14", "2")]


def test_some_samples_unverified_exit_3(tmp_path):
    for i, (max_iter, seed) in enumerate(PARTIAL):
        out = tmp_path / f"partial{i}"
        res = invoke(
            "run", BUNDLED[6], "-t", TARGETS / "uniform.json", "-n", "8", "--bounds", "0,1",
            "--max-iter", max_iter, "--restarts", "0", "--seed", seed, "-o", out,
            "--method", "forward",
        )  # fmt: skip
        assert res.exit_code in (0, 1, 3), (res.stdout, res.stderr)
        if res.exit_code == 3:
            break
    else:
        pytest.fail(f"no setting in {PARTIAL} leaves some samples unverified; add one")
    report = check_folder(out, BUNDLED[6], 8)  # flags agree with an independent ORT check
    assert 0 < report["totals"]["verified"] < 8
    assert f"{report['totals']['verified']}/8 samples verified" in res.stdout


# ---------------------------------------------------------------------------------- failures


def _bad_target(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"class": 3, "confidence": 1.5}')
    return path


FAILURES = [
    ("bad-target", BUNDLED[1], _bad_target, [], "confidence"),
    ("missing-target", BUNDLED[1], lambda d: d / "nope.json", [], "nope.json"),
    ("missing-model", "nope.onnx", lambda d: TARGETS / "digit3.json", [], "nope.onnx"),
    ("bad-bounds", BUNDLED[1], lambda d: TARGETS / "digit3.json", ["--bounds", "1,0"], "bounds"),
    ("bad-bounds-text", BUNDLED[1], lambda d: TARGETS / "digit3.json", ["--bounds", "a"], "bounds"),
    ("samples-0", BUNDLED[1], lambda d: TARGETS / "digit3.json", ["-n", "0"], "samples"),
    ("max-iter-0", BUNDLED[1], lambda d: TARGETS / "digit3.json", ["--max-iter", "0"], "max_iter"),
    (
        "unreachable",
        BUNDLED[6],
        lambda d: TARGETS / "digit3.json",
        ["-n", "2", "--bounds", "0,1", "--restarts", "0"],
        "unreachable",
    ),
]


@pytest.mark.parametrize(
    ("model", "target", "extra", "word"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES]
)
def test_failure_is_one_line_and_writes_nothing(tmp_path, model, target, extra, word):
    out = tmp_path / "out"
    res = invoke("run", model, "-t", target(tmp_path), "-o", out, *extra)
    assert word in assert_one_line_error(res)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_failure_with_default_output_folder_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "--bounds", "0,1,2")
    assert "bounds" in assert_one_line_error(res)
    assert list(tmp_path.iterdir()) == []


def test_api_save_without_image(tmp_path):
    """Inputs that are not images (10 features) get every file but grid.png."""
    model = dense(n_in=10, n_out=4, seed=2)
    result = invert(model, {"distribution": [0.1, 0.2, 0.3, 0.4]}, samples=3)
    out = result.save(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["inputs.npy", "outputs.npy", "report.json"]
    x = np.load(out / "inputs.npy")
    assert x.shape == (3, 10)
    errors = ort_errors(model, x, np.array([0.1, 0.2, 0.3, 0.4]), "probabilities")
    assert (errors <= 1e-4).all()
    with pytest.raises(OutputExistsError):
        result.save(out)
    assert result.save(out, overwrite=True) == out
    assert leftovers(tmp_path) == []


def test_existing_folder_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    args = ("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out)
    res = invoke(*args)
    assert "--overwrite" in assert_one_line_error(res)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"

    res = invoke(*args, "--overwrite")
    assert res.exit_code == 0, res.stderr
    check_folder(out, BUNDLED[1], 2)  # replaced: keep.txt is gone
    assert leftovers(tmp_path) == []


def test_output_path_that_is_a_file(tmp_path):
    out = tmp_path / "file.txt"
    out.write_text("x")
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out)
    assert "not a folder" in assert_one_line_error(res)
    assert out.read_text() == "x"


@pytest.mark.parametrize(
    ("error", "code", "word"), [(RuntimeError, 1, "internal error"), (KeyboardInterrupt, 130, "")]
)
def test_failed_write_leaves_no_temporary_folder(tmp_path, monkeypatch, error, code, word):
    def broken(*args, **kwargs):
        raise error("disk on fire")

    monkeypatch.setattr("onnxinv.write.images.grid_image", broken)
    out = tmp_path / "out"
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out)
    assert word in assert_one_line_error(res, code)
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("onnxinv.write.images.grid_image", broken)
    res = invoke(
        "run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out, "--overwrite"
    )
    assert_one_line_error(res)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("timeout", ["0.001", "0.05"])
def test_tiny_timeout_exits_cleanly(tmp_path, timeout):
    out = tmp_path / "out"
    res = invoke(
        "run", BUNDLED[2], "-t", TARGETS / "digit3.json", "-n", "8", "--bounds", "0,1",
        "--timeout", timeout, "-o", out,
    )  # fmt: skip
    assert res.exit_code in (0, 1, 3), (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr
    if res.exit_code == 1:
        assert_one_line_error(res)
        assert not out.exists()
    else:
        report = check_folder(out, BUNDLED[2], 8)
        assert (report["totals"]["verified"] == 8) == (res.exit_code == 0)
    assert leftovers(tmp_path) == []


def test_model_that_is_a_directory_is_one_line_exit_1(tmp_path):
    res = invoke("run", tmp_path, "-t", TARGETS / "digit3.json", "-o", tmp_path / "out")
    assert_one_line_error(res)


# ----------------------------------------------------------------------------------- inspect


def test_inspect_bundled_model():
    res = invoke("inspect", BUNDLED[2])
    assert res.exit_code == 0, res.stderr
    text = res.stdout
    assert "pixels: float[batch, 64]" in text
    assert "probs: float[batch, 10]" in text
    assert "Gemm x2" in text and "Selu" in text
    assert "default choice: invert 'pixels' (sample shape [64]) to match 'probs'" in text
    assert "tail: Softmax" in text
    assert "batched runs: yes" in text


@pytest.mark.parametrize(
    "name, acts", [("relu", "Relu, Relu"), ("cnn", "Relu, MaxPool"), ("nhwc", "Relu, MaxPool")]
)
def test_inspect_shows_the_backward_plan_of_piecewise_linear_models(name, acts):
    res = invoke("inspect", BUNDLED[2].parent / f"digits_{name}.onnx")
    assert res.exit_code == 0, res.stderr
    assert "block 0: invertible backward" in res.stdout
    chain = [line for line in res.stdout.splitlines() if line.startswith("chain:")]
    assert len(chain) == 1 and f"affine maps, {acts})" in chain[0]
    assert "--method exact decides and samples it exactly" in chain[0]
    # a smooth chain is a chain too, but not one the exact solver writes
    smooth = invoke("inspect", BUNDLED[2]).stdout
    assert "chain: block 0 is one chain" in smooth and "--method exact" not in smooth


def test_inspect_sklearn_zipmap_model(tmp_path, sklearn_digits):
    import onnx

    path = tmp_path / "clf.onnx"
    onnx.save_model(sklearn_digits[0], str(path))
    res = invoke("inspect", path)
    assert res.exit_code == 0, res.stderr
    assert "output_probability: sequence_type" in res.stdout
    assert "to match 'probabilities'" in res.stdout


def test_inspect_missing_model(tmp_path):
    assert "nope.onnx" in assert_one_line_error(invoke("inspect", tmp_path / "nope.onnx"))


# ---------------------------------------------------------------------------- --input-shape


@pytest.mark.parametrize(
    ("shape", "error"),
    [("3,4,5", None), ("-1,3,4,5", None), ("4,4,5", "declared 3"), ("4,5", "give all 4")],
    ids=["one-sample", "full", "dim-differs", "too-few"],
)
def test_input_shape_as_one_sample_or_in_full(tmp_path, shape, error):
    """x [N, 3, H, W] -> channel means: --input-shape 3,4,5 is read as one sample's shape."""
    import onnx
    from helpers import make_model, session, value_info
    from onnx import helper

    model = make_model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)],
        [value_info("x", ["N", 3, "H", "W"])],
        [value_info("y", ["N", 3])],
    )
    path = tmp_path / "mean.onnx"
    onnx.save(model, str(path))
    target = [[0.2, 0.5, 0.7]]
    (tmp_path / "t.json").write_text(json.dumps({"values": target}))
    out = tmp_path / "out"
    res = invoke("run", path, "-t", tmp_path / "t.json", "-n", "2", "--input-shape", shape,
                 "-o", out, "--quiet")  # fmt: skip
    if error is not None:
        line = assert_one_line_error(res)
        assert error in line and "'x'" in line and "--input-shape" in line
        assert not out.exists()
        return
    assert res.exit_code == 0, res.stderr
    x = np.load(out / "inputs.npy")
    assert x.shape == (2, 3, 4, 5)
    y = session(model).run(None, {"x": x})[0]
    assert np.abs(y - np.array(target)).max() <= 1e-4
