"""Sweeps end to end (onnxinv/sweeps/: run, task, shards): every (model, class) pair's shard
reproduces its target in onnxruntime, the summary and figure agree with the shards, reruns skip
finished pairs, failed tasks are retried (in this process and on a local Ray instance), and bad
input is one line with nothing written. The runners on their own: test_sweeps_runners.py; Ray
by address: test_sweeps_cluster.py; the summary: test_sweeps_summary.py.

Ray tests come last: the module's Ray instance stays up until the module ends, and the CLI's
bad-address test must not find this process already connected.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import BUNDLED, ort_errors
from PIL import Image

import onnxinv
from onnxinv.cli import main
from onnxinv.errors import OutputExistsError
from onnxinv.sweeps import run_pair
from onnxinv.write.figure import HEADER, PAD, TILE, layout

M1, M2 = str(BUNDLED[1]), str(BUNDLED[2])
N = 4  # samples per pair
RUN = {"samples": N, "bounds": (0, 1), "seed": 0}


def invoke(*args):
    return CliRunner().invoke(main, ["sweep", *map(str, args)])


def one_line_error(res) -> str:
    assert res.exit_code == 1, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxinv: error: "), res.stderr
    return lines[0]


def shard(out, model: str, k: int) -> tuple[np.ndarray, dict]:
    folder = out / model / f"class_{k}"
    return np.load(folder / "inputs.npy"), json.loads((folder / "report.json").read_text())


def check_shard(out, model_path: str, k: int, confidence: float = 0.9) -> dict:
    """The shard's verified samples give the pair's target in a fresh onnxruntime session."""
    x, report = shard(out, os.path.basename(model_path)[:-5], k)
    assert report["sweep"]["class"] == k and report["target"]["class"] == k
    target = np.full(10, (1 - confidence) / 9)
    target[k] = confidence
    np.testing.assert_allclose(report["target_output"], target)
    flags = np.array([s["verified"] for s in report["samples"]], dtype=bool)
    assert len(x) == len(flags) == report["totals"]["samples"]
    if len(x):
        errors = ort_errors(model_path, x, target, "probabilities")
        assert (errors[flags] <= 1e-4).all()
        np.testing.assert_array_equal(flags, errors <= 1e-4)
        assert x.min() >= 0 and x.max() <= 1
    assert report["totals"]["verified"] == flags.sum()
    return report


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    return onnxinv.sweep([M1, M2], classes=[0, 3], out=out, workers=1, **RUN)


def test_shards_reproduce_their_targets(swept):
    assert [(r.model, r.cls) for r in swept] == [
        ("digits_1layer", 0), ("digits_1layer", 3), ("digits_2layer", 0), ("digits_2layer", 3),
    ]  # fmt: skip
    for row in swept:
        report = check_shard(swept.out, M1 if row.model == "digits_1layer" else M2, row.cls)
        assert report["totals"]["verified"] == row.verified == N
        assert report["sweep"]["status"] == "solved" and not row.proven_unreachable
    assert sorted(p.name for p in (swept.out / "digits_1layer").iterdir()) == ["class_0", "class_3"]
    assert swept.all_verified and not swept.failed and len(swept.computed) == 4


def test_summary_rows_match_the_shards(swept):
    summary = json.loads((swept.out / "summary.json").read_text())
    assert summary["pairs"] == summary["computed"] == 4
    table = (swept.out / "summary.md").read_text().splitlines()
    assert len(table) == 2 + 4
    for row, line in zip(summary["rows"], table[2:], strict=True):
        x, report = shard(swept.out, row["model"], row["class"])
        errors = [s["max_error"] for s in report["samples"]]
        assert row["verified"] == report["totals"]["verified"] and row["requested"] == N
        assert row["median_error"] == pytest.approx(np.median(errors))
        assert row["worst_error"] == pytest.approx(max(errors)) and max(errors) <= 1e-4
        assert row["samples_per_second"] == pytest.approx(row["verified"] / row["seconds"])
        assert row["proven_unreachable"] is False
        assert line.startswith(f"| {row['model']} | {row['class']} | {N}/{N} | no |")


def test_figure_has_one_cell_per_pair(swept):
    grid = layout(["digits_1layer", "digits_2layer"], 2)
    assert grid.size == (grid.left + 2 * (TILE + PAD) + PAD, HEADER + PAD + 2 * (TILE + PAD))
    with Image.open(swept.out / "figure.png") as image:
        assert image.size == grid.size
        gray = np.asarray(image.convert("L"))
    for i in range(2):
        for j in range(2):
            x, y = grid.cell(i, j)
            cell = gray[y : y + TILE, x : x + TILE]
            assert cell.std() > 10  # a digit's pixels, not a blank square
    x, _ = shard(swept.out, "digits_1layer", 0)
    first = (x[0].reshape(8, 8) * 255).round()  # bounds 0,1: the first verified sample as is
    x0, y0 = grid.cell(0, 0)
    np.testing.assert_allclose(gray[y0 : y0 + TILE : 8, x0 : x0 + TILE : 8], first, atol=1)


def test_unreachable_pair_is_a_shard_not_a_crash(tmp_path):
    """Also the one real sweep in a process pool (two spawned workers)."""
    out = tmp_path / "box"
    res = invoke(M1, "--classes", "0,2", "--bounds", "0,0.25", "-n", N, "-o", out, "-j", 2)
    assert res.exit_code == 3, res.stderr  # some pairs verified nothing
    assert "proven" in res.stdout and "2 pairs:" in res.stdout
    unreachable = check_shard(out, M1, 0)
    assert unreachable["sweep"]["proven_unreachable"] is True
    assert unreachable["sweep"]["status"] == "unreachable"
    assert "unreachable" in unreachable["sweep"]["reason"]
    assert "\n" not in unreachable["sweep"]["reason"]
    assert np.load(out / "digits_1layer" / "class_0" / "inputs.npy").shape == (0, 64)
    assert check_shard(out, M1, 2)["totals"]["verified"] == N
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["verified"], r["proven_unreachable"]) for r in rows] == [(0, True), (N, False)]
    with Image.open(out / "figure.png") as image:
        assert image.size == layout(["digits_1layer"], 2).size


CALLS: list[tuple[str, int]] = []


def counting(pair, model=None, on_progress=None):
    CALLS.append((pair.model, pair.cls))
    return run_pair(pair, model, on_progress)


def test_rerun_skips_finished_pairs(tmp_path, capsys):
    out = tmp_path / "again"
    CALLS.clear()
    onnxinv.sweep(M1, classes="0,3,7", out=out, workers=1, task=counting, progress=True, **RUN)
    assert len(CALLS) == 3
    assert "sweep" in capsys.readouterr().err  # the progress bar, when asked for
    kept = (out / "digits_1layer" / "class_0" / "inputs.npy").stat().st_mtime_ns
    shutil.rmtree(out / "digits_1layer" / "class_3")
    CALLS.clear()
    summary = onnxinv.sweep(M1, classes="0,3,7", out=out, workers=1, task=counting, **RUN)
    assert CALLS == [("digits_1layer", 3)]
    assert [r.reused for r in summary] == [True, False, True] and summary.all_verified
    assert (out / "digits_1layer" / "class_0" / "inputs.npy").stat().st_mtime_ns == kept
    check_shard(out, M1, 3)
    assert json.loads((out / "summary.json").read_text())["reused"] == 2
    with pytest.raises(OutputExistsError, match="samples 4, not 5"):  # another request
        onnxinv.sweep(M1, classes="0,3,7", out=out, workers=1, **{**RUN, "samples": 5})
    CALLS.clear()
    onnxinv.sweep(M1, classes="0,3,7", out=out, workers=1, task=counting, overwrite=True, **RUN)
    assert len(CALLS) == 3


def test_all_classes_from_the_model(tmp_path):
    summary = onnxinv.sweep(M2, out=tmp_path / "all", workers=1, samples=2, bounds=(0, 1))
    assert [r.cls for r in summary] == list(range(10)) and summary.all_verified
    assert len(list((tmp_path / "all" / "digits_2layer").iterdir())) == 10


def failing(pair, model=None, on_progress=None):
    if pair.cls == 3:
        raise RuntimeError("boom")
    return run_pair(pair, model, on_progress)  # the real one: imported before the patch


def test_a_pair_failing_twice_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr("onnxinv.sweeps.run.run_pair", failing)  # the CLI's (default) task
    out = tmp_path / "failing"
    res = invoke(M1, "--classes", "0,3", "-n", N, "--bounds", "0,1", "-o", out, "-j", 1)
    line = one_line_error(res)
    assert "1 of 2 pairs failed (digits_1layer class 3: boom)" in line
    assert (out / "digits_1layer" / "class_0" / "report.json").is_file()
    assert not (out / "digits_1layer" / "class_3").exists()
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["solved", "failed"]


BAD = [
    ("missing-model", ["nope.onnx"], "nope.onnx"),
    ("class-out-of-range", [M1, "--classes", "3,12"], "12 is out of range"),
    ("classes-not-numbers", [M1, "--classes", "a,b"], "classes"),
    ("confidence-1", [M1, "--confidence", "1"], "confidence"),
    ("confidence-0", [M1, "--confidence", "0"], "confidence"),
    ("confidence-text", [M1, "--confidence", "high"], "confidence"),
    ("workers-0", [M1, "--workers", "0"], "workers"),
    ("same-name", [M1, str(BUNDLED[1])], "same name"),
    ("bounds", [M1, "--bounds", "1,0"], "bounds"),
    ("ray-unreachable", [M1, "--ray", "127.0.0.1:9"], "Ray"),
    ("ray-bad-address", [M1, "--ray", "nowhere"], "Ray"),
]


@pytest.mark.parametrize(("args", "word"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, word):
    out = tmp_path / "out"
    res = invoke(*args, "-o", out, "-n", 2)
    assert word in one_line_error(res)
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not out.exists()


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    res = invoke(M1, "--ray", "auto", "-o", tmp_path / "out", "-n", 2)
    assert "onnxinv[ray]" in one_line_error(res)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_sweep_is_left_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    res = invoke(M1, "-o", tmp_path, "-n", 2)
    assert "not empty" in one_line_error(res)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


# --------------------------------------------------------------------------------- Ray (last)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_retries_a_failed_task_and_gathers_the_shards(ray_instance, swept, tmp_path):
    marker = tmp_path / "failed-once"

    def flaky(pair, model=None, on_progress=None):  # pickled by value: no import needed
        if pair.cls == 3 and pair.model == "digits_2layer" and not marker.exists():
            marker.touch()
            raise RuntimeError("first attempt fails")
        return run_pair(pair, model, on_progress)

    out = tmp_path / "ray"
    summary = onnxinv.sweep([M1, M2], classes=[0, 3], out=out, ray="auto", task=flaky, **RUN)
    assert marker.exists() and not summary.failed and summary.all_verified
    for row in summary:
        check_shard(out, M1 if row.model == "digits_1layer" else M2, row.cls)
        # the same task in a Ray worker gives the inputs it gives in this process
        mine, _ = shard(out, row.model, row.cls)
        local, _ = shard(swept.out, row.model, row.cls)
        np.testing.assert_allclose(mine, local, atol=1e-6)

    shutil.rmtree(out / "digits_1layer" / "class_3")
    kept = (out / "digits_2layer" / "class_0" / "report.json").stat().st_mtime_ns
    res = invoke(M1, M2, "--classes", "0,3", "-n", N, "--bounds", "0,1", "-o", out, "--ray", "auto")
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "summary.json").read_text())["computed"] == 1
    assert (out / "digits_2layer" / "class_0" / "report.json").stat().st_mtime_ns == kept
    check_shard(out, M1, 3)
