"""The paper-scale benchmark's outputs: the Markdown report, the figure and the JSON dump.

Only formatting: every number comes from ``paper_scale.py``'s rows, reference rows and extra
measurements.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import BOUNDS, Record, fmt_ratio, json_number

ONNXINV_METHODS = ("auto", "backward", "forward", "gd")  # they can prove a target unreachable

LEGEND = """\
- Each row: one method on one model, over every class at 0.9 (the rest 0.1/9) and the outputs
  of the first validation images (reachable by construction), bounds [0, 1], seed 0. Every
  returned sample is judged by the bench's own onnxruntime check (`common.check`: max |output −
  target| ≤ the target's tolerance, 1e-4, and inside the box).
- *verified*: verified / returned samples, over the targets no onnxinv method proved
  unreachable on that model; "timeout in k" = k targets hit the per-target timeout (unfinished
  samples count as unverified); n/a = the method does not apply to the model.
- *proven unreachable*: targets onnxinv proved out of reach in the box (– for methods that
  cannot prove). *median/worst error*: over every returned sample.
- *s / verified*: wall seconds (loading, conversion, solving, the method's own checks) over
  verified samples, all targets; *vs auto*: that over `auto`'s on the same model in this run
  (above 1: slower than `auto`). onnxinv loads and converts the model on every call; the other
  methods convert it once per model, untimed.
- *iterations*: mean per sample (LM iterations; gd: Adam steps; scipy: Jacobian evaluations;
  MIFace: gradient steps; 0 for the backward pass, which runs no LM).
- *pairwise*: mean Euclidean distance between verified samples of the same target, averaged
  over targets; *nearest train*: mean distance from each verified sample to its nearest
  training image (exact search). The *validation images* rows give both for real images (same
  class, first 50 per class).
- *MIFace own*: MIFace's own criterion, the target's top class at p ≥ 0.9.
- paper-backward / paper-forward: the paper's BackPassInv and ForwardPassInv as published
  (`bench/paper_backward.py`, `bench/paper_forward.py`); scipy-lsq: `least_squares(method="trf",
  bounds=(0, 1), tr_solver="lsmr")` per sample, residual from onnxruntime, Jacobian from torch
  autograd; miface: ART's MIFace (learning rate 0.1, at most 1,000 steps, told the top class
  only). All start from the same uniform random inputs."""


def verified_cell(recs: Sequence[Record]) -> str:
    """``v/N (p%)``, with the number of timed-out targets; n/a or error where so."""
    if recs and all("not_applicable" in r.extra for r in recs):
        return "n/a"
    recs = [r for r in recs if "not_applicable" not in r.extra]
    errors = sum("error" in r.extra for r in recs)
    v, n = sum(r.verified for r in recs), sum(r.samples for r in recs)
    text = f"{v}/{n} ({100 * v / n:.1f}%)" if n else "–"
    timeouts = sum(bool(r.extra.get("timed_out")) for r in recs)
    if timeouts:
        text += f", timeout in {timeouts}"
    if errors:
        text += f", error in {errors}"
    return text


def _share(s: dict[str, Any]) -> str:
    if not s["targets"]:
        return "–" if not s["samples"] else "n/a"
    text = f"{s['verified']}/{s['samples']} ({100 * s['verified'] / s['samples']:.1f}%)"
    return text + (f", timeout in {s['timeouts']}" if s["timeouts"] else "")


def _num(v: float, fmt: str = ".3g") -> str:
    if v is None or math.isnan(v):
        return "–"
    return "inf" if math.isinf(v) else format(v, fmt)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines: the header, its rule, one line per row of cells."""
    lines = [header, ["---"] * len(header), *rows]
    return ["| " + " | ".join(str(c) for c in cells) + " |" for cells in lines]


def table(rows: Sequence[dict[str, Any]], refs: Sequence[dict[str, Any]]) -> str:
    header = [
        "model", "method", "verified: 0.9 targets", "verified: real outputs",
        "proven unreachable", "median error", "worst error", "s / verified", "vs auto",
        "iterations", "pairwise", "nearest train", "MIFace own",
    ]  # fmt: skip
    lines = []
    for r in rows:
        if r["not_applicable"]:
            lines.append([r["model"], r["method"], "n/a", "n/a", *["–"] * (len(header) - 4)])
            continue
        own = r["own"]
        lines.append(
            [
                r["model"],
                r["method"],
                _share(r["class"]) + (f", error: {r['errors'][0]}" if r["errors"] else ""),
                _share(r["real"]),
                str(r["proven"]) if r["method"] in ONNXINV_METHODS else "–",
                _num(r["median_error"], ".2g"),
                _num(r["worst_error"], ".2g"),
                _num(r["seconds_per_verified"]) if r["verified"] else "–",
                fmt_ratio(r["vs_auto"]),
                _num(r["iterations"], ".1f"),
                _num(r["pairwise"], ".2f"),
                _num(r["nearest_train"], ".2f"),
                f"{own['ok']}/{own['samples']}" if own else "–",
            ]
        )
    for ref in refs:
        cells = [ref["data_set"], f"validation images ({ref['images']})"]
        cells += ["–"] * 8 + [f"{ref['pairwise']:.2f}", f"{ref['nearest_train']:.2f}", "–"]
        lines.append(cells)
    return "\n".join(_markdown(header, lines))


def _rate_table(rate: Sequence[dict[str, Any]]) -> str:
    header = [
        "model", "target", "samples", "verified", "seconds", "verified/s",
        "per verified sample (inf: the other verified none): gd / backward",
        "MIFace / backward", "MIFace (own criterion) / backward",
    ]  # fmt: skip
    rows = [
        [
            r["model"],
            f"{r['target']} at 0.9",
            r["samples"],
            f"{r['verified']}{' (timeout)' if r['timed_out'] else ''}",
            f"{r['seconds']:.2f}",
            f"{r['rate']:.0f}",
            fmt_ratio(r["vs_gd"]),
            fmt_ratio(r["vs_miface"]),
            fmt_ratio(r["vs_miface_own"]),
        ]  # fmt: skip
        for r in rate
    ]
    return "\n".join(_markdown(header, rows))


def _vit_table(vit: Sequence[dict[str, Any]]) -> str:
    header = [
        "model", "verified: 0.9 targets", "verified: real outputs", "s / verified (wall)",
        "s / verified (solve)", "model cost per iteration (batch)", "floor per sample (30 it.)",
        "wall / floor", "solve / floor", "mean iterations", "solve / floor at those",
    ]  # fmt: skip
    rows = []
    for v in vit:
        ok = v["verified"]
        wall = v["seconds"] / ok if ok else math.inf
        solve = v["solve_seconds"] / ok if ok else math.inf
        rows.append([
            v["model"], _share(v["class"]), _share(v["real"]), _num(wall), _num(solve),
            f"{v['cost']:.3g} s ({v['chunk']})", f"{v['floor']:.3g}",
            fmt_ratio(wall / v["floor"]), fmt_ratio(solve / v["floor"]),
            _num(v["iterations"], ".1f"),
            fmt_ratio(solve / v["floor_used"]) if v["floor_used"] else "n/a",
        ])  # fmt: skip
    return "\n".join(_markdown(header, rows))


def _memory_table(mem: dict[str, Any]) -> str:
    rows = mem["rows"]
    cells = [
        [r["n"], r["verified"], f"{r['seconds']:.2f}", f"{r['rate']:.0f}", f"{r['peak_mb']:.0f}",
         f"{r['result_mb']:.0f}", f"{_beyond(r):.0f}"]
        for r in rows
    ]  # fmt: skip
    first, last = rows[0], rows[-1]
    header = ["N", "verified", "seconds", "verified/s", "peak RSS MB", "result MB",
              "peak − result MB"]  # fmt: skip
    lines = [
        f"`auto` on {mem['model']}, {mem['target']} at 0.9, each N in a fresh process "
        "(`bench/scale.py`'s measurement; result: the returned arrays' own size):",
        "",
        *_markdown(header, cells),
        "",
        f"Peak RSS {first['peak_mb']:.0f} MB at N = {first['n']}, {last['peak_mb']:.0f} MB at "
        f"N = {last['n']} ({last['peak_mb'] / first['peak_mb']:.2f}x for {last['n'] / first['n']:.0f}x "
        f"the samples); beyond the result {_beyond(first):.0f} MB and {_beyond(last):.0f} MB "
        f"({_beyond(last) / _beyond(first):.2f}x).",
    ]
    return "\n".join(lines)


def _beyond(row: dict[str, Any]) -> float:
    """Peak RSS less the returned arrays (what should stay flat in N)."""
    return row["peak_mb"] - row.get("result_mb", 0.0)


def targets_check(rows, extras) -> list[str]:
    """The issue's targets, each with what this run measured."""
    out = []
    for r in rows:
        if r["method"] != "auto":
            continue
        live = [r["class"], r["real"]]
        v, n = sum(s["verified"] for s in live), sum(s["samples"] for s in live)
        share = v / n if n else math.nan
        mark = "met" if share >= 0.995 else "MISSED"
        out.append(
            f"- {r['model']}: `auto` verified {100 * share:.1f}% of the samples on targets not "
            f"proven unreachable ({r['proven']} proven) — ≥ 99.5%: {mark}"
        )
    for r in extras["rate"]:
        fast = "met" if r["rate"] >= 10000 else "MISSED"
        out.append(
            f"- {r['model']} {r['target']} at 0.9: backward {r['rate']:.0f} verified/s — "
            "≥ 10,000: "
            f"{fast}; per verified sample vs gd {_twenty(r['vs_gd'])}, vs MIFace "
            f"{_twenty(r['vs_miface'])}, vs MIFace by its own criterion "
            f"{_twenty(r['vs_miface_own'])}"
        )
    for v in extras["vit"]:
        share = v["verified"] / v["samples"] if v["samples"] else math.nan
        ratio = (v["seconds"] / v["verified"]) / v["floor"] if v["verified"] else math.inf
        out.append(
            f"- {v['model']}: {100 * share:.1f}% verified within 30 LM iterations (0.9 targets "
            f"{_share(v['class'])}, real outputs {_share(v['real'])}; ≥ 99%: "
            f"{'met' if share >= 0.99 else 'MISSED'}); wall time per verified sample "
            f"{fmt_ratio(ratio)} the 30-iteration floor (≤ 3x: "
            f"{'met' if ratio <= 3 else 'MISSED'})"
        )
    mem = extras.get("memory")
    if mem:
        first, last = mem["rows"][0], mem["rows"][-1]
        growth = _beyond(last) / _beyond(first)
        out.append(
            f"- memory: peak RSS {last['peak_mb'] / first['peak_mb']:.2f}x from N = "
            f"{first['n']} to N = {last['n']}, {growth:.2f}x beyond the returned arrays "
            f"({last['result_mb']:.0f} MB at N = {last['n']}); flat (≤ 1.2x): "
            f"{'met' if growth <= 1.2 else 'MISSED'}"
        )
    return out


def _twenty(ratio: float) -> str:
    """A ratio against the ≥ 20x target."""
    if math.isnan(ratio):
        return "n/a"
    return f"{fmt_ratio(ratio)} ({'met' if ratio >= 20 else 'MISSED'})"


def render(rows, refs, extras, plan, args, wall: float) -> str:
    """The whole Markdown report."""
    command = "python bench/paper_scale.py" + (" --quick" if plan.quick else "")
    parts = [
        "## Paper scale: every method on the same targets",
        "",
        f"`{command}` ({', '.join(plan.models)}; {plan.cell_samples} samples per target, "
        f"{plan.slow_samples} for scipy-lsq (one at a time); {plan.reals} real outputs per "
        f"model; timeout per method and target {plan.timeout:g} s, {plan.slow_timeout:g} s for "
        "gd, scipy-lsq and MIFace; "
        f"{os.cpu_count()} CPUs; one run, {wall:.0f} s up to this report).",
        "",
        table(rows, refs),
        "",
        LEGEND,
        "",
        "![one verified sample per class and method](paper_scale.png)",
    ]
    if extras["rate"]:
        parts += ["", f"### Backward pass, {plan.samples} samples in one call", "",
                  _rate_table(extras["rate"])]  # fmt: skip
    if extras["vit"]:
        parts += ["", "### ViTs: one attempt of 30 LM iterations (onnxinv forward, "
                  "`max_iter=30, restarts=0`)", "",
                  _vit_table(extras["vit"]), "",
                  "Floor: one forward pass plus one backward pass per output (torch, float64, "
                  "batch = the chunk solved together), × 30 iterations × chunks / samples."]  # fmt: skip
    if extras.get("memory"):
        parts += ["", "### Memory as N grows", "", _memory_table(extras["memory"])]
    parts += ["", "### Against issue 13's targets", "", *targets_check(rows, extras)]
    return "\n".join(parts) + "\n"


def figure(cells, models: Sequence[str], path: Path) -> Path:
    """Rows: each data set's validation images, then model × method; columns: classes 0-9;
    each cell the first verified sample for "class k at 0.9" (crossed: none). Drawn by
    onnxinv's sweep figure (:func:`onnxinv.write.figure.figure`)."""
    from bench.nearest import data_set, validation
    from onnxinv.write.figure import Cell, figure

    labels, grid = [], []
    for name in dict.fromkeys(data_set(m) for m in models):
        x, y = validation(name)
        labels.append(f"{name} validation")
        grid.append([Cell(x[y == k][0], x.shape[1:], (0, 1)) if (y == k).any() else Cell(note="–")
                     for k in range(10)])  # fmt: skip
    for model, method in dict.fromkeys((c.model, c.record.method) for c in cells):
        row = [Cell(note="not reached") for _ in range(10)]
        for c in cells:
            rec = c.record
            if (c.model, rec.method, c.kind) == (model, method, "class") and rec.verified:
                row[c.label] = Cell(rec.verified_inputs()[0], rec.inputs.shape[1:], BOUNDS)
        if any(cell.sample is not None for cell in row):
            labels.append(f"{model} {method}")
            grid.append(row)
    figure(labels, [f"class {k}" for k in range(10)], grid).save(path)
    return path


def to_json(cells, rows, refs, extras) -> dict[str, Any]:
    """Every number of the run, JSON-safe (nan and inf as strings)."""
    return _safe(
        {
            "cells": [
                {
                    "model": c.model,
                    "target": c.target,
                    "kind": c.kind,
                    "label": c.label,
                    "record": c.record.to_dict(),
                }  # fmt: skip
                for c in cells
            ],
            "rows": list(rows),
            "reference": list(refs),
            "extras": extras,
        }
    )


def _safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_safe(x) for x in v]
    if isinstance(v, float | np.floating):
        return json_number(float(v))
    if isinstance(v, np.integer):
        return int(v)
    return v
