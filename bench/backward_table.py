"""The backward-pass table: onnxinv's backward vs forward vs the paper's BackPassInv.

Per model x target, without bounds and with :data:`~common.BOUNDS`: verified shares (the
bench's own :func:`common.check`, the paper's domain errors counted as failures), backward
samples/s and its ratio to forward's, and diversity (mean pairwise distance between verified
samples, next to the one between the validation set's real 3s). Every runner is warmed up once
and run ``repeats`` times (fastest kept), as in the first table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.common import (
    BOUNDS,
    MODELS_DIR,
    REACHABLE_DIGIT,
    Case,
    Record,
    fmt_percent,
    format_table,
    judged,
    mean_pairwise_distance,
    onnxinv_runner,
    progress,
    run_repeated,
    targets_for,
    warm_up,
)
from bench.paper_backward import paper_backward
from onnxinv.target import Target

LEGEND = (
    "backward = onnxinv --method backward; paper = the paper's BackPassInv (pseudo-inverse, "
    "random null-space vector, error outside an inverse's domain) with the same rules; speed "
    "back/fwd = backward samples/s over forward's, in this run.\n"
    "ver% = share verified by the bench's own onnxruntime check (target's tolerance, inside the "
    "bounds where there are bounds).\n"
    "div = mean pairwise distance between verified samples; real 3s = between the validation "
    "set's real digit 3s (same pixel scale)."
)


def run_paper(case: Case) -> Record:
    """The paper's BackPassInv on ``case``; its domain errors count as unverified samples.

    A model that is not one invertible block (``ValueError``) gives a record flagged
    ``extra["not_applicable"]``.
    """
    sess = ort.InferenceSession(str(case.model_path), providers=["CPUExecutionProvider"])
    out_shape = tuple(int(d) for d in sess.get_outputs()[0].shape[1:])
    target = Target.from_dict(case.target).resolve(out_shape)
    t0 = time.perf_counter()
    try:
        x, ok = paper_backward(str(case.model_path), target, case.samples, case.seed)
    except ValueError as exc:
        return Record("paper", case.samples, 0, time.perf_counter() - t0, math.nan, math.nan,
                      math.nan, extra={"not_applicable": str(exc)})  # fmt: skip
    seconds = time.perf_counter() - t0
    return judged("paper", case, x, seconds, extra={"domain_ok": int(ok.sum())}, also_ok=ok)


RUNNERS = {
    "backward": onnxinv_runner("backward"),
    "forward": onnxinv_runner("forward"),
    "paper": run_paper,
}


def run(model_names: Sequence[str], samples: int, seed: int, repeats: int) -> list[dict[str, Any]]:
    """One row per model x target x bounds (none, then :data:`BOUNDS`)."""
    real = np.load(MODELS_DIR / "digits_val.npz")
    real_3 = mean_pairwise_distance(real["x"][real["y"] == REACHABLE_DIGIT])
    todo = _cases(model_names, samples, seed)
    warm_up(list(RUNNERS.values()), todo[0].model_path, seed)
    rows = []
    for case in todo:
        rec = {name: run_repeated(r, case, repeats) for name, r in RUNNERS.items()}
        back, fwd, paper = rec["backward"], rec["forward"], rec["paper"]
        paper_ok = math.nan if "not_applicable" in paper.extra else paper.verified / samples
        row = {
            "model": case.model_name,
            "target": case.target_name,
            "bounds": "none" if case.bounds is None else ",".join(f"{b:g}" for b in case.bounds),
            "backward_verified": back.verified / samples,
            "backward_sps": samples / back.seconds,
            "forward_verified": fwd.verified / samples,
            "forward_sps": samples / fwd.seconds,
            "paper_verified": paper_ok,
            "paper_sps": samples / paper.seconds,
            "backward_paths": back.extra["paths"],
            "diversity_backward": mean_pairwise_distance(back.verified_inputs()),
            "diversity_forward": mean_pairwise_distance(fwd.verified_inputs()),
            "diversity_real_3": real_3,
            "records": {k: r.to_dict() for k, r in rec.items()},
        }
        rows.append(row)
        progress(
            f"{case.model_name:<14} {case.target_name:<12} bounds {row['bounds']:<4}",
            f"backward {back.verified:>4}/{samples}  forward {fwd.verified:>4}/{samples}  "
            f"paper {paper_ok:.2f}",
        )
    return rows


def _cases(model_names: Sequence[str], samples: int, seed: int) -> list[Case]:
    """Model by model, target by target, unbounded then bounded (the table's row order)."""
    out = []
    for model_name in model_names:
        path = MODELS_DIR / f"{model_name}.onnx"
        for target_name, target in targets_for(path):
            for bounds in (None, BOUNDS):
                out.append(Case(model_name, path, target_name, target, samples, seed, bounds))
    return out


def render(rows: list[dict[str, Any]]) -> str:
    """The table and its legend."""
    header = [
        "model", "target", "bounds", "backward ver%", "backward smp/s", "speed back/fwd",
        "forward ver%", "paper ver%", "div back", "div fwd", "div real 3s",
    ]  # fmt: skip
    lines = [
        [
            r["model"],
            r["target"],
            r["bounds"],
            fmt_percent(r["backward_verified"]),
            f"{r['backward_sps']:.1f}",
            f"{r['backward_sps'] / r['forward_sps']:.3g}x",
            fmt_percent(r["forward_verified"]),
            fmt_percent(r["paper_verified"]),
            f"{r['diversity_backward']:.2f}",
            f"{r['diversity_forward']:.2f}",
            f"{r['diversity_real_3']:.2f}",
        ]  # fmt: skip
        for r in rows
    ]
    return format_table(header, lines, n_left=3) + "\n\n" + LEGEND
