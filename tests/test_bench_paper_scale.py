"""The paper-scale benchmark's core on digits_1layer with tiny sample counts (nothing downloaded).

Checks that the table has a row per (model, method) whose numbers agree with an independent
onnxruntime check of the returned inputs, that ``vs auto`` comes from the same run's records,
and that the nearest-training-image distance is the brute-force one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import paper_scale as ps
from bench import paper_scale_report as report
from bench.common import BOUNDS, MODELS_DIR, Case, check
from bench.nearest import data_set, nearest_distances, training_images

MODEL = "digits_1layer"
METHODS = ("auto", "backward", "paper-backward", "paper-forward", "scipy-lsq")


@pytest.fixture(scope="module")
def run():
    plan = ps.Plan((MODEL,), 16, 3, 1, 1, 20.0, 10.0, 2, (), True)
    entries = [e for e in ps.ENTRIES if e.name in METHODS]
    cells = ps.run_table(plan, entries)
    return plan, cells, ps.summarize(cells)


def test_a_row_per_model_and_method(run):
    _, cells, rows = run
    assert [(r["model"], r["method"]) for r in rows] == [(MODEL, m) for m in METHODS]
    assert len(cells) == len(METHODS) * 11  # 10 classes at 0.9 and one real output
    text = report.table(rows, ps.reference_rows([MODEL]))
    assert all(f"| {MODEL} | {m} |" in text for m in METHODS)


def test_numbers_agree_with_an_independent_check(run):
    _, cells, rows = run
    for row in rows:
        verified, worst = 0, 0.0
        for c in cells:
            if c.record.method != row["method"]:
                continue
            case = Case(MODEL, MODELS_DIR / f"{MODEL}.onnx", c.target, _spec(c), 1, 0, BOUNDS)
            err, ok = check(case, c.record.inputs)
            assert int(ok.sum()) == c.record.verified
            assert np.array_equal(err, c.errors)
            verified += int(ok.sum())
            worst = max(worst, float(err.max()))
        assert verified == row["verified"] == row["class"]["verified"] + row["real"]["verified"]
        assert row["worst_error"] == pytest.approx(worst)
    by = {r["method"]: r for r in rows}
    assert by["auto"]["class"]["verified"] == by["auto"]["class"]["samples"] == 30
    assert by["paper-backward"]["verified"] == 0  # the paper's version leaves the box


def test_ratio_to_auto_is_from_the_same_run(run):
    _, cells, rows = run
    auto = [c.record for c in cells if c.record.method == "auto"]
    auto_spv = sum(r.seconds for r in auto) / sum(r.verified for r in auto)
    for row in rows:
        recs = [c.record for c in cells if c.record.method == row["method"]]
        n = sum(r.verified for r in recs)
        if not n:
            assert math.isnan(row["vs_auto"])
            continue
        spv = sum(r.seconds for r in recs) / n
        assert row["seconds_per_verified"] == pytest.approx(spv)
        assert row["vs_auto"] == pytest.approx(spv / auto_spv)


def test_nearest_training_image_is_the_brute_force_one(run):
    _, cells, rows = run
    train = training_images(data_set(MODEL))
    auto = [c.record.verified_inputs() for c in cells if c.record.method == "auto"]
    x = np.concatenate(auto).reshape(-1, train.shape[1]).astype(np.float64)
    brute = np.sqrt(((x[:, None, :] - train[None, :, :].astype(np.float64)) ** 2).sum(2)).min(1)
    row = next(r for r in rows if r["method"] == "auto")
    assert row["nearest_train"] == pytest.approx(brute.mean(), rel=1e-9)
    rng = np.random.default_rng(0)
    a, b = rng.random((7, 5)), rng.random((23, 5))
    np.testing.assert_allclose(
        nearest_distances(a, b, chunk=4),
        np.sqrt(((a[:, None] - b[None]) ** 2).sum(2)).min(1),
        rtol=1e-12,
    )


def test_figure_is_written(run, tmp_path):
    _, cells, _ = run
    path = report.figure(cells, [MODEL], tmp_path / "paper_scale.png")
    from PIL import Image

    with Image.open(path) as img:
        assert img.width > 10 * 64 and img.height > 2 * 64


def _spec(c: ps.Cell) -> dict:
    """The target dict a cell ran with, rebuilt the way the benchmark builds it."""
    return next(spec for name, _, _, spec in ps.targets(MODEL, 1) if name == c.target)
