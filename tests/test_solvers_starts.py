"""--starts: uniform noise or smooth random fields, and auto's choice between them."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import assert_solved, const, dense, make_model, one_line, ort_outputs, value_info
from onnx import helper

import onnxinv
from onnxinv.cli import main
from onnxinv.errors import OptionError, UnreachableTargetError
from onnxinv.solvers.starts import CELL, MIN_SIDE, Starts, field_axes, nearer_family, smooth_fields


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((3, 224, 224), (1, 2)),  # NCHW
        ((224, 224, 3), (0, 1)),  # NHWC (tf2onnx)
        ((3, 32, 128), (1, 2)),
        ((40, 80), (0, 1)),  # a spectrogram
        ((1, 28, 28), None),  # too small: uniform noise works there
        ((784,), None),
        ((3, 8, 300), None),
    ],
)
def test_field_axes(shape, axes):
    assert field_axes(shape) == axes


@pytest.mark.parametrize("shape", [(3, 40, 64), (64, 48, 2), (33, 32)])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-2.0, 3.0)])
def test_smooth_fields_stay_in_the_box_and_vary_slowly_along_the_field_axes(shape, bounds):
    rng = np.random.default_rng(0)
    x = smooth_fields(6, shape, rng, bounds)
    assert x.shape == (6, int(np.prod(shape)))
    assert x.min() >= bounds[0] and x.max() <= bounds[1]
    grid = x.reshape(6, *shape)
    width = bounds[1] - bounds[0]
    for axis in field_axes(shape):
        # linear between knots CELL apart: neighbours differ by at most a CELL-th of the box
        step = np.abs(np.diff(grid, axis=axis + 1)).max()
        assert step <= width / CELL + 1e-12
    # samples differ, and so do the channels (axes other than the field's are independent)
    assert np.abs(grid[0] - grid[1]).mean() > 0.05 * width
    assert Starts(x.shape[1], np.random.default_rng(0), bounds, shape=shape).draw(6) == (
        pytest.approx(x)
    )


def test_smooth_fields_without_bounds_are_normal_at_the_knots():
    x = smooth_fields(200, (32, 32), np.random.default_rng(1), None, std=2.0)
    knots = x.reshape(200, 32, 32)[:, 3, 3]  # (a cell's centre lies between pixels 3 and 4)
    assert 0.5 < knots.std() < 2.5 and abs(knots.mean()) < 0.5


def _tv(x: np.ndarray) -> np.ndarray:
    side = int(np.sqrt(x.shape[1]))
    g = x.reshape(len(x), side, side)
    return np.abs(np.diff(g, axis=1)).sum((1, 2)) + np.abs(np.diff(g, axis=2)).sum((1, 2))


def test_nearer_family_follows_the_residuals():
    rng = np.random.default_rng(0)
    family, note = nearer_family((48, 48), _tv, rng, (0.0, 1.0))
    assert family == "smooth" and "nearer the target" in note
    family, note = nearer_family((48, 48), lambda x: 1.0 / (1.0 + _tv(x)), rng, (0.0, 1.0))
    assert family == "uniform" and "not nearer" in note
    # a non-finite residual (an overflowing model) never wins
    family, _ = nearer_family((48, 48), lambda x: np.full(len(x), np.inf), rng, (0.0, 1.0))
    assert family == "uniform"
    assert nearer_family((28, 28), _tv, rng, (0.0, 1.0)) == ("uniform", None)


def _edge_model(side: int = MIN_SIDE):
    """Conv with a Laplacian-like kernel, squared, averaged: the class logits grow with an
    image's fine detail, so uniform noise sends them far from a smooth image's."""
    rng = np.random.default_rng(3)
    lap = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=np.float64)
    w = 3.0 * rng.normal(size=(4, 3, 1, 1)) * lap[None, None]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["h", "h"], ["e"]),
        helper.make_node("GlobalAveragePool", ["e"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "a", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["p"], axis=1),
    ]
    init = [const("w", w), const("a", rng.normal(size=(4, 5))), const("b", np.zeros(5))]
    return make_model(
        nodes, [value_info("x", ["N", 3, side, side])], [value_info("p", ["N", 5])], init
    )


def test_auto_takes_smooth_starts_where_they_start_nearer_and_every_sample_verifies():
    model = _edge_model()
    x = smooth_fields(1, (3, MIN_SIDE, MIN_SIDE), np.random.default_rng(9), (0.0, 1.0))
    target = ort_outputs(model, x.reshape(1, 3, MIN_SIDE, MIN_SIDE).astype(np.float32))[0]
    p = target.astype(np.float64) / target.sum()
    res = onnxinv.invert(model, {"distribution": p.tolist()}, samples=4, bounds=(0, 1), seed=0)
    assert any(n.startswith("starts: smooth random fields") for n in res.notes), res.notes
    assert_solved(model, res, p, "probabilities", bounds=(0, 1), n=4)
    with pytest.raises(UnreachableTargetError) as info:  # (one iteration from noise: far off)
        onnxinv.invert(model, {"distribution": p.tolist()}, samples=2, bounds=(0, 1),
                       method="forward", starts="uniform", max_iter=1, restarts=0)  # fmt: skip
    assert not any(n.startswith("starts:") for n in info.value.result.notes)


def test_small_inputs_keep_uniform_starts_without_a_probe():
    model = dense(7, 3)
    res = onnxinv.invert(model, {"class": 1, "confidence": 0.6}, method="forward", samples=2)
    assert not any(n.startswith("starts:") for n in res.notes)


def test_smooth_starts_on_an_input_without_field_axes_is_a_one_line_error():
    with pytest.raises(OptionError) as info:
        onnxinv.invert(dense(7, 3), {"class": 1, "confidence": 0.6}, method="forward",
                       samples=2, starts="smooth")  # fmt: skip
    assert "--starts smooth needs an input with two axes of 32" in one_line(info.value)


def test_cli_refuses_an_unknown_start_family(tmp_path):
    path, target = tmp_path / "m.onnx", tmp_path / "t.json"
    path.write_bytes(dense(7, 3).SerializeToString())
    target.write_text('{"class": 1, "confidence": 0.6}')
    args = ["run", str(path), "-t", str(target), "-o", str(tmp_path / "out"), "-q"]
    out = CliRunner().invoke(main, [*args, "--starts", "sobol"])
    assert out.exit_code == 1 and "'--starts': 'sobol' is not one of" in out.output
    assert not (tmp_path / "out").exists()
    out = CliRunner().invoke(main, [*args, "--starts", "uniform", "-n", "2"])
    assert out.exit_code == 0, out.output
