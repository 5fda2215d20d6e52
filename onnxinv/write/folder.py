"""Write a result folder atomically: inputs.npy, outputs.npy, report.json and grid.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OutputExistsError
from . import images
from .atomic import write_folder

if TYPE_CHECKING:
    from ..result import InversionResult


def check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early when ``path`` is a non-empty folder (or a file) and overwriting is off."""
    p = Path(path)
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"output path {p} lies below {parent}, which is a file")
            break
    if p.exists() and not p.is_dir():
        raise OutputExistsError(f"output path {p} exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {p} is not empty; pass --overwrite to replace it")
    return p


def save(result: InversionResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``result`` into ``path`` via a temporary sibling folder moved into place at the end
    (:func:`onnxinv.write.atomic.write_folder`).

    An interrupted or failed write leaves ``path`` as it was.
    """
    dest = check_destination(path, overwrite).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)

    def fill(folder: Path) -> None:
        np.save(folder / "inputs.npy", result.inputs)
        np.save(folder / "outputs.npy", result.outputs)
        (folder / "report.json").write_text(json.dumps(result.report(), indent=2) + "\n")
        image = images.grid_image(result)
        if image is not None:
            image.save(folder / "grid.png")

    write_folder(dest, fill)
    return dest
