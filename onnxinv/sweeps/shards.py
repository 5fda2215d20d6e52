"""A sweep's folder on disk: its marker, one shard per pair, the summary and the figure.

```
OUT/sweep.json                  the marker: what was asked (written before the first shard)
OUT/<model>/class_<k>/          one shard per pair, a result folder (onnxinv.write.folder.save)
OUT/summary.json, summary.md    one row per pair
OUT/figure.png                  each pair's first verified sample
```

Every file and shard is written atomically (:mod:`onnxinv.write.atomic`): a shard that exists
is complete, so an interrupted sweep keeps its finished pairs and a rerun reads them back with
:func:`read_shard`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputExistsError
from ..result import InversionResult
from ..write.atomic import write_file, write_text
from ..write.figure import Cell, figure
from ..write.folder import check_destination, save
from .summary import SweepRow, SweepSummary
from .task import Pair

MARKER = "sweep.json"  # what makes a folder a sweep's: written before the first shard


def check_sweep_folder(out: str | os.PathLike, overwrite: bool) -> Path:
    """``out`` as a Path, when a sweep may write there: absent, empty, a sweep's, or
    ``overwrite``; a file in the way is an error either way."""
    out = check_destination(out, overwrite=True)
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise OutputExistsError(
            f"output folder {out} is not empty and holds no sweep; pass --overwrite to write "
            "into it anyway"
        )
    return out


def write_marker(out: Path, marker: dict[str, Any]) -> None:
    """Create ``out`` and write what was asked into its ``sweep.json``."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MARKER, marker)


def read_shard(out: Path, pair: Pair) -> dict | None:
    """The report of ``pair``'s shard if an earlier run wrote it for the same request.

    A shard is renamed into place whole, so one that exists is complete. One written for
    another request (other settings, confidence or model file) is an error rather than a
    silent mix.
    """
    path = out / pair.shard / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        written = report["sweep"]["request"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputExistsError(
            f"{path.parent} is not a sweep shard; pass --overwrite to replace it"
        ) from None
    wanted = pair.request()
    if written != wanted:
        what = _difference(written, wanted)
        raise OutputExistsError(
            f"{path.parent} was written for another request ({what}); pass --overwrite to redo "
            "it, or use another --out"
        )
    return report


def _difference(old: dict, new: dict, prefix: str = "") -> str:
    """The first key whose value differs, as ``key old, not new``."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _difference(a, b, f"{prefix}{key}.")
            return f"{prefix}{key} {a!r}, not {b!r}"
    return "same"


def write_shard(out: Path, pair: Pair, result: InversionResult) -> None:
    """Write ``pair``'s shard, replacing an earlier one."""
    save(result, out / pair.shard, overwrite=True)


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_summary(out: Path, summary: SweepSummary) -> None:
    """summary.json and summary.md."""
    _write_json(out / "summary.json", summary.to_dict())
    write_text(out / "summary.md", summary.markdown())


def write_figure(out: Path, pairs: list[Pair], summary: SweepSummary) -> Path | None:
    """figure.png: rows models, columns classes, each cell the pair's first verified sample."""
    models = list(dict.fromkeys(p.model for p in pairs))
    classes = sorted({p.cls for p in pairs})
    cells = {m: {k: Cell(note="–") for k in classes} for m in models}
    for pair, row in zip(pairs, summary.rows, strict=True):
        cells[pair.model][pair.cls] = figure_cell(out, row)
    image = figure(models, [f"class {k}" for k in classes],
                   [[cells[m][k] for k in classes] for m in models])  # fmt: skip
    path = out / "figure.png"
    write_file(path, lambda p: image.save(p, format="PNG"))
    return path


def figure_cell(out: Path, row: SweepRow) -> Cell:
    """A pair's cell: its shard's first verified sample, or why there is none."""
    if row.shard is None or not row.verified:
        return Cell(
            note={"unreachable": "unreachable", "failed": "failed"}.get(row.status, "not reached")
        )
    report = json.loads((out / row.shard / "report.json").read_text())
    first = next(s["index"] for s in report["samples"] if s["verified"])
    inputs = np.load(out / row.shard / "inputs.npy", mmap_mode="r")
    bounds = report["settings"]["bounds"]
    return Cell(np.array(inputs[first]), tuple(report["model"]["input_shape"]),
                None if bounds is None else tuple(bounds))  # fmt: skip
