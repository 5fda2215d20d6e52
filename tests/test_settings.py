"""The settings object (``onnxinv.settings``): it generates the CLI's options and the API's
keywords, and validates every value once, in one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import (
    dense,
    one_line,
    reachable_distribution,
)

from onnxinv import invert
from onnxinv.cli import main
from onnxinv.errors import OptionError
from onnxinv.settings import Settings

MODEL = dense(8, 3, act="Tanh", seed=3)


def test_cli_options_are_the_settings_fields():
    run = main.commands["run"]
    params = {p.name for p in run.params}
    for f in dataclasses.fields(Settings):
        assert f.name in params, f"--{f.name} missing from `onnxinv run`"
    defaults = {p.name: p.default for p in run.params}
    for f in dataclasses.fields(Settings):
        if not f.metadata["multiple"]:
            assert defaults[f.name] == f.default, f.name


def test_api_rejects_an_unknown_option_by_name():
    with pytest.raises(OptionError) as info:
        invert(MODEL, {"class": 0, "confidence": 0.5}, samples=2, max_iters=5)
    line = one_line(info.value)
    assert "'max_iters'" in line and "max_iter" in line


@pytest.mark.parametrize(
    "name, value",
    [("samples", 0), ("samples", True), ("seed", -1), ("max_iter", 1.5), ("restarts", -1),
     ("init_std", 0.0), ("max_condition", 1.0), ("null_scale", -0.1), ("gd_lr", float("nan")),
     ("gd_steps", 0), ("chunk_size", "8"), ("timeout", 0), ("bounds", "1,0"),
     ("bounds", (0, float("inf"))), ("input_shape", "a,b"), ("device", "tpu"),
     ("method", ""), ("max_memory", "lots"), ("input", ""), ("fixed", [1, 2]),
     ("disable_plugins", [1])],
)  # fmt: skip
def test_each_setting_is_validated_once_in_one_line(name, value):
    with pytest.raises(OptionError) as info:
        Settings(**{name: value})
    assert name in one_line(info.value)


def test_an_unknown_method_is_refused_in_one_line_before_the_model_is_read(tmp_path):
    """Settings take any method name; a run checks it against the registered solvers first."""
    from onnxinv import invert, sweep

    missing = tmp_path / "no-such-model.onnx"
    for run in (
        lambda: invert(missing, {"class": 1, "confidence": 0.9}, method="sideways"),
        lambda: sweep([str(missing)], out=tmp_path / "sweep", method="sideways"),
    ):
        with pytest.raises(OptionError) as info:
            run()
        line = one_line(info.value)
        assert "'sideways'" in line and "backward" in line and "no-such-model" not in line


def test_an_earlier_option_name_is_still_accepted():
    assert Settings.create(std=0.3).null_scale == 0.3
    with pytest.raises(OptionError, match="earlier name"):
        Settings.create(std=0.3, null_scale=0.2)
    with pytest.raises(OptionError, match="null_scale"):
        Settings.create(std=-1.0)


def test_settings_are_frozen_normalised_and_overridable():
    s = Settings(bounds="0, 1", input_shape="1x3x4", samples=np.int64(3))
    assert s.bounds == (0.0, 1.0) and s.input_shape == (1, 3, 4) and s.samples == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.samples = 4  # type: ignore[misc]
    t = s.replace(samples=5)
    assert t.samples == 5 and t.bounds == (0.0, 1.0) and s.samples == 3
    with pytest.raises(OptionError, match="samples"):
        s.replace(samples=-1)


def test_api_settings_object_and_keywords_combine():
    p = reachable_distribution(MODEL, "probabilities", seed=1, lo=-1, hi=1)
    base = Settings(samples=3, method="forward", seed=4)
    a = invert(MODEL, {"distribution": p}, base)
    b = invert(MODEL, {"distribution": p}, base, samples=5)
    assert len(a) == 3 and len(b) == 5
    assert a.settings["method"] == "forward" and b.settings["seed"] == 4
    np.testing.assert_array_equal(a.inputs, invert(MODEL, {"distribution": p}, base).inputs)


# ------------------------------------------------------------------------------- rule contract
