"""The first table: every method in :data:`METHODS` side by side, with ratios to the baseline.

Per model x target, each method inverts the same samples from seeded starts inside
:data:`~common.BOUNDS`; :func:`common.check` judges every sample. Adding a method is one line
in :data:`METHODS`; its ``ver%``/``smp/s`` columns and ratios against the baseline follow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bench.common import (
    Method,
    Record,
    cases,
    fmt_ratio,
    format_table,
    json_number,
    onnxinv_runner,
    progress,
    run_repeated,
    warm_up,
)

GD_LR = 0.01  # the gd baseline's Adam learning rate (onnxinv's default)
GD_STEPS = 1000  # and its Adam steps at most

# The table's column groups, in order. Exactly one baseline; every other method gets ratios
# against it. A new onnxinv method is one line, e.g.:
#     Method("backward", onnxinv_runner("backward")),
METHODS: list[Method] = [
    Method("backward", onnxinv_runner("backward")),
    Method("forward", onnxinv_runner("forward")),
    Method("gd", onnxinv_runner("gd", gd_lr=GD_LR, gd_steps=GD_STEPS), baseline=True),
]

LEGEND = (
    "ver% = share of samples verified by the bench's own onnxruntime check (target's "
    "tolerance, inside the bounds); smp/s = samples / wall seconds (load, convert, solve, "
    "verify).\n"
    "t/ver = {base} seconds per verified sample / method's (>1: method cheaper per verified "
    "sample); ver = method's verified fraction / {base}'s.\n"
    "inf: the baseline verified nothing; n/a: the method verified nothing.\n"
    "Quote the ratios, not absolute times: both sides ran here, in one process, on the machine "
    "above."
)


def baseline(methods: Sequence[Method] = METHODS) -> Method:
    return next(m for m in methods if m.baseline)


def ratios(method: Record, base: Record) -> dict[str, float]:
    """Baseline time per verified / method's, and method's verified fraction / baseline's.

    ``inf`` when only the baseline verified nothing (a genuine "infinitely better"); ``nan``
    (printed "n/a") when the method verified nothing.
    """
    if method.verified == 0:
        time_ratio = math.nan
    elif base.verified == 0:
        time_ratio = math.inf
    else:
        time_ratio = base.seconds_per_verified / method.seconds_per_verified
    if method.verified == 0 and base.verified == 0:
        frac_ratio = math.nan
    elif base.verified == 0:
        frac_ratio = math.inf
    else:
        frac_ratio = method.verified_fraction / base.verified_fraction
    return {"time_per_verified": time_ratio, "verified_fraction": frac_ratio}


def run(
    model_names: Sequence[str],
    samples: int,
    seed: int,
    repeats: int,
    methods: Sequence[Method] = METHODS,
) -> list[dict[str, Any]]:
    """One row per model x target: every method's record and its ratios to the baseline."""
    base = baseline(methods)
    todo = cases(model_names, samples, seed)
    warm_up([m.run for m in methods], todo[0].model_path, seed)
    rows = []
    for case in todo:
        records: dict[str, Record] = {}
        for m in methods:
            r = records[m.name] = run_repeated(m.run, case, repeats)
            progress(
                f"{case.model_name:<14} {case.target_name:<12} {m.name:<10}",
                f"{r.verified:>4}/{r.samples} verified  {r.seconds:8.2f} s",
            )
        rows.append(
            {
                "model": case.model_name,
                "target": case.target_name,
                "target_spec": case.target,
                "records": records,
                "ratios": {
                    m.name: ratios(records[m.name], records[base.name])
                    for m in methods
                    if not m.baseline
                },
            }
        )
    return rows


def render(rows: list[dict[str, Any]], methods: Sequence[Method] = METHODS) -> str:
    """The table (one row per model x target) and its legend."""
    base = baseline(methods)
    others = [m for m in methods if not m.baseline]
    header = ["model", "target"]
    for m in [*others, base]:
        header += [f"{m.name} ver%", f"{m.name} smp/s"]
    for m in others:
        header += [f"t/ver {base.name}/{m.name}", f"ver {m.name}/{base.name}"]
    lines = []
    for row in rows:
        cells = [row["model"], row["target"]]
        for m in [*others, base]:
            r = row["records"][m.name]
            cells += [f"{100 * r.verified_fraction:.1f}", f"{r.samples_per_second:.1f}"]
        for m in others:
            rt = row["ratios"][m.name]
            cells += [fmt_ratio(rt["time_per_verified"]), fmt_ratio(rt["verified_fraction"])]
        lines.append(cells)
    return format_table(header, lines, n_left=2) + "\n\n" + LEGEND.format(base=base.name)


def to_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "model": row["model"],
            "target": row["target"],
            "target_spec": row["target_spec"],
            "records": {k: r.to_dict() for k, r in row["records"].items()},
            "ratios": {
                k: {kk: json_number(vv) for kk, vv in v.items()} for k, v in row["ratios"].items()
            },
        }
        for row in rows
    ]
