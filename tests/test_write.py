"""onnxinv/write/: atomic files and folders (whole or not at all), which shapes are images and
how they are drawn, and the result folder.

The CLI's own tests (test_cli.py, test_bad_input.py) interrupt a real run's write; here each
piece is checked on its own.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import BUNDLED, TARGETS
from PIL import Image

import onnxinv
from onnxinv.errors import OutputExistsError
from onnxinv.write import atomic
from onnxinv.write.folder import check_destination, save
from onnxinv.write.images import grid_image, image_shape, picture, pixels


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# ----------------------------------------------------------------------------- atomic.write_file


def test_write_text_replaces_a_file_whole(tmp_path):
    path = tmp_path / "summary.md"
    path.write_text("old")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n" and leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_a_failed_file_write_leaves_the_old_file(tmp_path, error):
    path = tmp_path / "figure.png"
    path.write_text("old")

    def half(p):
        p.write_text("half")
        raise error("disk full")

    with pytest.raises(error):
        atomic.write_file(path, half)
    assert path.read_text() == "old" and leftovers(tmp_path) == []


# --------------------------------------------------------------------------- atomic.write_folder


def fill(folder):
    (folder / "new.txt").write_text("new")


def test_write_folder_creates_or_replaces(tmp_path):
    dest = tmp_path / "out"
    atomic.write_folder(dest, fill)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    (dest / "old.txt").write_text("old")
    atomic.write_folder(dest, fill)
    assert [p.name for p in dest.iterdir()] == ["new.txt"]  # replaced, not merged
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_a_failed_fill_leaves_the_old_folder(tmp_path, error):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")

    def broken(folder):
        fill(folder)
        raise error("disk full")

    with pytest.raises(error):
        atomic.write_folder(dest, broken)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failure_between_the_two_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder is aside, the new one not yet in place
            raise OSError("interrupted here")
        return real(src, dst)

    monkeypatch.setattr("onnxinv.write.atomic.os.replace", replace)
    with pytest.raises(OSError, match="interrupted here"):
        atomic.write_folder(dest, fill)
    assert calls[1] == dest
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    ("shape", "image"),
    [
        ((1, 1, 8, 8), (1, 8, 8)),  # a fixed batch of one is ignored
        ((1, 3, 4, 5), (3, 4, 5)),
        ((1, 64), (1, 8, 8)),  # a flat perfect square
        ((64,), (1, 8, 8)),
        ((8, 8), (1, 8, 8)),
        ((2, 3, 4, 4), None),
        ((10,), None),
        ((4, 4, 3), None),  # channels last: not drawn as an image here
    ],
)
def test_image_shape(shape, image):
    assert image_shape(shape) == image


def test_pixels_scale_from_the_bounds_or_each_samples_range():
    x = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    assert pixels(x, (1, 2, 2), (0, 1)).tolist() == [[[[0, 128], [255, 64]]]]
    assert pixels(x * 4 + 1, (1, 2, 2), None).tolist() == [[[[0, 128], [255, 64]]]]
    assert pixels(x, (1, 2, 2), (0, 0.5)).tolist() == [[[[0, 255], [255, 128]]]]  # clipped


def test_picture_blows_up_each_pixel():
    img = picture(np.array([[[0, 255]]], dtype=np.uint8), 3)
    assert img.size == (6, 3) and img.mode == "RGB"
    assert img.getpixel((2, 1)) == (0, 0, 0) and img.getpixel((3, 1)) == (255, 255, 255)


# ---------------------------------------------------------------------------- the result folder


@pytest.fixture(scope="module")
def result():
    target = json.loads((TARGETS / "digit3.json").read_text())
    return onnxinv.invert(BUNDLED[1], target, samples=2, bounds=(0, 1))


def test_save_writes_the_four_files(tmp_path, result):
    out = save(result, tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png", "inputs.npy", "outputs.npy", "report.json",
    ]  # fmt: skip
    np.testing.assert_array_equal(np.load(out / "inputs.npy"), result.inputs)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(result.report()))
    with Image.open(out / "grid.png") as grid:
        assert grid.size == grid_image(result).size


def test_save_refuses_a_folder_with_something_in_it(tmp_path, result):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save(result, tmp_path / "run")
    save(result, tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "mine.txt").exists()


def test_check_destination(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        check_destination(tmp_path / "file.txt", overwrite=True)
    with pytest.raises(OutputExistsError, match="which is a file"):
        check_destination(tmp_path / "file.txt" / "out", overwrite=True)
    assert check_destination(tmp_path / "new" / "out", overwrite=False) == tmp_path / "new" / "out"
