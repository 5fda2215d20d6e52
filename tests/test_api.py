"""``invert()`` end to end: every result is re-checked by a fresh onnxruntime session on the
original model file (helpers.assert_solved), never by onnxinv's own verification."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import (
    BUNDLED,
    TARGETS,
    assert_solved,
    dense,
    one_line,
    ort_errors,
    ort_outputs,
    reachable_distribution,
    reachable_values,
)

from onnxinv import InversionResult, invert
from onnxinv.convert import node_jacobian
from onnxinv.errors import ConversionError, OptionError, UnreachableTargetError

SPACE = {"softmax": "probabilities", "logsoftmax": "log-probabilities", None: "logits"}
DYNAMO = pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
BOUNDS = pytest.mark.parametrize("bounds", [None, (0.0, 1.0)], ids=["unbounded", "box01"])

# ------------------------------------------------------------------------- exported torch MLPs


@DYNAMO
@BOUNDS
@pytest.mark.parametrize(
    "tail", ["softmax", "logsoftmax", None], ids=["softmax", "logsoftmax", "logits"]
)
def test_distribution_target(exported, dynamo, tail, bounds):
    """A distribution the model produces for some input in [0, 1] is reachable by construction."""
    path = exported(tail, dynamo)
    space = SPACE[tail]
    p = reachable_distribution(path, space, seed=7)
    result = invert(path, {"distribution": p}, samples=6, seed=0, bounds=bounds)
    assert isinstance(result, InversionResult)
    assert result.model["output_space"] == space
    assert result.model["solved_on"] == ("output" if tail is None else "logits")
    assert result.model["jacobians"] in ("autograd", "none")  # none: exact backward pass
    assert result.inputs.shape == (6, 1, 1, 8, 8)  # a sample is the declared [1, 1, 8, 8]
    assert_solved(path, result, np.array(p), space, bounds=bounds, n=6)
    # The reported outputs are the original model's raw outputs for the returned inputs.
    np.testing.assert_allclose(
        result.outputs.reshape(6, -1), ort_outputs(path, result.inputs), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, atol=1e-5)


@DYNAMO
def test_class_target(exported, dynamo):
    path = exported("softmax", dynamo)
    target = {"class": 4, "confidence": 0.5}
    result = invert(path, target, samples=4, seed=2)
    expected = np.full(10, 0.5 / 9)
    expected[4] = 0.5
    assert_solved(path, result, expected, "probabilities", n=4)
    assert (result.probabilities.argmax(1) == 4).all()


@DYNAMO
@BOUNDS
def test_values_target_on_regression_model(exported, dynamo, bounds):
    path = exported("tanh", dynamo)
    v = reachable_values(path, seed=3)
    result = invert(path, {"values": v, "tolerance": 1e-4}, samples=6, seed=0, bounds=bounds)
    assert result.model["output_space"] == "values"
    assert result.probabilities is None
    assert_solved(path, result, np.array(v), "values", bounds=bounds, n=6)


def test_non_unit_box(exported):
    path = exported("softmax", False)
    lo, hi = -0.5, 0.25
    p = reachable_distribution(path, "probabilities", seed=8, lo=lo, hi=hi)
    result = invert(path, {"distribution": p}, samples=5, seed=0, bounds=f"{lo},{hi}")
    assert result.bounds == (lo, hi)
    assert_solved(path, result, np.array(p), "probabilities", bounds=(lo, hi), n=5)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", ["digit3", "mix_1_7", "uniform"])
def test_bundled_models_reach_bundled_targets(layers, name):
    path = BUNDLED[layers]
    result = invert(path, TARGETS / f"{name}.json", samples=4, seed=0, bounds=(0, 1))
    target = result.target.resolve((10,))
    assert_solved(path, result, target, "probabilities", bounds=(0, 1), n=4)


# ------------------------------------------------------------------------- finite differences


def _unconvertible_model() -> tuple[str, object]:
    """A smooth op onnxruntime runs but no converter handles, even after compat.install()."""
    from onnxinv.convert import to_torch

    for op in ("Sinh", "Asinh", "Cosh", "Atanh"):
        model = dense(n_in=16, n_out=5, seed=9, act=op, scale=0.5)
        ort_outputs(model, np.zeros((1, 16)))  # onnxruntime must run it
        try:
            to_torch(model)
        except ConversionError:
            return op, model
    pytest.fail("every candidate operator now converts; add one onnx2torch lacks to the list")


def test_unconvertible_model_uses_finite_differences(monkeypatch):
    monkeypatch.setattr(node_jacobian, "MAX_FD_VALUES", 0)  # no per-node fallback
    op, model = _unconvertible_model()
    p = reachable_distribution(model, "probabilities", seed=12)
    result = invert(model, {"distribution": p}, samples=4, seed=0, bounds=(0, 1))
    assert result.model["jacobians"] == "finite-differences"
    assert any("finite differences" in note and op in note for note in result.notes), result.notes
    assert_solved(model, result, np.array(p), "probabilities", bounds=(0, 1), n=4)


def test_finite_difference_note_says_it_once(monkeypatch):
    monkeypatch.setattr(node_jacobian, "MAX_FD_VALUES", 0)  # no per-node fallback
    _, model = _unconvertible_model()
    p = reachable_distribution(model, "probabilities", seed=12)
    result = invert(model, {"distribution": p}, samples=2, seed=0)
    note = next(n for n in result.notes if "finite differences" in n)
    assert note.count("finite differences") == 1, note


# ---------------------------------------------------------------------------------- seeds, box


def test_same_seed_same_inputs_different_seed_different_inputs():
    path, target = BUNDLED[1], TARGETS / "mix_1_7.json"
    runs = [invert(path, target, samples=4, seed=s, bounds=(0, 1)) for s in (5, 5, 6)]
    for r in runs:
        assert_solved(path, r, r.target.resolve((10,)), "probabilities", bounds=(0, 1), n=4)
    assert np.array_equal(runs[0].inputs, runs[1].inputs)
    assert not np.array_equal(runs[0].inputs, runs[2].inputs)
    # The samples of one run are different inputs, not copies of one solution.
    flat = runs[0].inputs.reshape(4, -1)
    assert min(np.abs(flat[i] - flat[j]).max() for i in range(4) for j in range(i)) > 1e-2


def test_chunks_and_progress(exported):
    path = exported("softmax", False)
    p = reachable_distribution(path, "probabilities", seed=13)
    finished: list[int] = []
    result = invert(
        path,
        {"distribution": p},
        samples=5,
        chunk_size=2,
        bounds=(0, 1),
        on_progress=finished.append,
    )
    assert sum(finished) == 5
    assert_solved(path, result, np.array(p), "probabilities", bounds=(0, 1), n=5)


# -------------------------------------------------------------------------------- unreachable


def test_values_outside_tanh_range_are_unreachable(exported):
    path = exported("tanh", False)
    target = np.array([2.0, 0.0, 0.0])
    with pytest.raises(UnreachableTargetError) as info:
        invert(path, {"values": target.tolist()}, samples=3, max_iter=5, restarts=0)
    err = info.value
    one_line(err)
    assert isinstance(err.result, InversionResult) and len(err.result) == 3
    assert not err.result.verified.any()
    assert err.best_error == pytest.approx(float(err.result.errors.min()))
    assert err.best_error >= 1.0  # |2 - tanh(.)| > 1 whatever the input
    independent = ort_errors(path, err.result.inputs, target, "values")
    np.testing.assert_allclose(err.result.errors, independent, rtol=1e-5)


def test_six_layer_model_cannot_reach_digit3_inside_the_box():
    path = BUNDLED[6]
    with pytest.raises(UnreachableTargetError) as info:
        invert(path, TARGETS / "digit3.json", samples=2, seed=0, bounds=(0, 1), restarts=1)
    err = info.value
    assert "unreachable" in one_line(err)
    assert err.result is not None and not err.result.verified.any()
    target = err.result.target.resolve((10,))
    independent = ort_errors(path, err.result.inputs, target, "probabilities")
    assert (independent > 1e-4).all()
    assert err.best_error == pytest.approx(independent.min(), rel=1e-4)


def test_timeout_returns_unfinished_samples_flagged():
    # A deadline that has passed before the solver starts: nothing is solved.
    with pytest.raises(UnreachableTargetError) as info:
        invert(BUNDLED[6], TARGETS / "uniform.json", samples=3, bounds=(0, 1), timeout=1e-9)
    result = info.value.result
    assert any("timed out" in note for note in result.notes)
    assert (result.iterations == 0).all()
    assert result.inputs.min() >= 0 and result.inputs.max() <= 1


# ----------------------------------------------------------------------------- option validation

BAD_OPTIONS = [
    ("samples", 0),
    ("samples", -1),
    ("samples", "3"),
    ("samples", 2.0),
    ("samples", True),
    ("seed", -1),
    ("seed", "0"),
    ("bounds", "1,0"),
    ("bounds", "0,0"),
    ("bounds", "a,b"),
    ("bounds", "1"),
    ("bounds", "0,1,2"),
    ("bounds", (math.nan, 1)),
    ("bounds", (0, math.inf)),
    ("bounds", (1, 0)),
    ("bounds", 5),
    ("method", "x"),
    ("max_iter", 0),
    ("max_iter", 1.5),
    ("restarts", -1),
    ("device", "tpu"),
    ("timeout", -1),
    ("timeout", 0),
    ("timeout", math.nan),
    ("timeout", "5"),
    ("init_std", 0),
    ("init_std", math.inf),
    ("chunk_size", 0),
]


@pytest.mark.parametrize(
    ("option", "value"), BAD_OPTIONS, ids=[f"{k}={v!r}" for k, v in BAD_OPTIONS]
)
def test_bad_option(option, value):
    with pytest.raises(OptionError) as info:
        invert(BUNDLED[1], TARGETS / "digit3.json", **{"samples": 2, option: value})
    assert option in one_line(info.value)


def test_cuda_without_a_gpu_is_an_option_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(OptionError) as info:
        invert(BUNDLED[1], TARGETS / "digit3.json", samples=2, device="cuda")
    assert "cuda" in one_line(info.value)


@pytest.mark.parametrize("method", ["auto", "forward"])
def test_samples_are_solved_in_batches_and_joined(monkeypatch, method):
    """Past ``STREAM`` samples the run is solved and checked a batch at a time (memory flat in
    N); the joined result is one result: every row re-checked by onnxruntime, per-sample
    facts aligned with it, the samples distinct across batches."""
    import onnxinv.api as api

    monkeypatch.setattr(api, "STREAM", 7)
    path = BUNDLED[2]
    target = np.asarray(invert(path, TARGETS / "mix_1_7.json", samples=1).target_array)
    r = invert(path, TARGETS / "mix_1_7.json", samples=17, bounds=(0.0, 1.0), method=method)
    assert_solved(path, r, target, "probabilities", bounds=(0.0, 1.0), n=17)
    assert len(r.methods) == len(r.iterations) == len(r.outputs) == 17
    assert not api.duplicate_rows(r.inputs).any()


# ------------------------------------------------------------ steps that ignore the deadline


def _stall(seconds: float = 60.0) -> None:
    """A pure-Python step that ignores the deadline and swallows every Exception."""
    import contextlib
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(Exception):  # the point: the stop must get past this
            sum(range(1000))


@pytest.mark.parametrize(
    ("step", "run_seconds", "words", "result"),
    [
        ("prepare", None, ("timed out after 0.5 s before any of 2 samples",), True),
        ("prepare", 10.0, ("timed out after 0.5 s while preparing", "before any sample"), False),
        ("load", None, ("timed out after 0.5 s while loading the model",), False),
        ("prepare-raises", None, ("timed out after 0.5 s before any of 2 samples",), True),
    ],
    ids=["prepare-cheap-check", "prepare-costly-check", "load", "prepare-stops-itself"],
)
def test_a_step_that_ignores_the_deadline_is_stopped(monkeypatch, step, run_seconds, words, result):
    """The run ends within a few seconds of its timeout, with the usual time-out error."""
    import signal
    import time

    from onnxinv.load import model as model_mod
    from onnxinv.solvers.auto import AutoSolver
    from onnxinv.solvers.residual import DeadlineReached

    real_load = model_mod.load

    def load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        if run_seconds is not None:
            loaded.run_seconds = run_seconds  # one onnxruntime run "takes" that long
        if step == "load":
            _stall()
        return loaded

    def stops_itself(self) -> None:  # checks the deadline itself, as solvers do
        _stall(0.6)
        raise DeadlineReached

    monkeypatch.setattr(model_mod, "load", load)
    if step.startswith("prepare"):
        stall = stops_itself if "raises" in step else lambda self: _stall()
        monkeypatch.setattr(AutoSolver, "prepare", stall)
    # Someone else's SIGALRM handler: the alarm is not onnxinv's to use, only the step's own
    # DeadlineReached stops it.
    other = signal.signal(signal.SIGALRM, lambda *a: None) if "raises" in step else None
    t0 = time.monotonic()
    try:
        with pytest.raises(UnreachableTargetError) as info:
            invert(BUNDLED[2], TARGETS / "digit3.json", samples=2, timeout=0.5)
    finally:
        if other is not None:
            signal.signal(signal.SIGALRM, other)
    wall = time.monotonic() - t0
    assert wall < 0.5 + (2.0 if step == "load" else 0.0) + 2.0, wall  # (not the stall's 60 s)
    message = one_line(info.value)
    for word in words:
        assert word in message, message
    assert (info.value.result is not None) == result
    if result:
        assert any("timeout was reached" in note for note in info.value.result.notes)
        assert (info.value.result.iterations == 0).all()
