"""Benchmark onnxinv's inversion methods against gradient descent on the input, in one process.

Run ``python bench/tables.py [--samples 256] [--seed 0] [--quick] [--json out.json]`` (also
``--threads N``, ``--repeats N``, ``--skip-backward``). It prints two tables:

- ``methods_table``: every method side by side with ratios against the baseline;
- ``backward_table``: onnxinv's backward pass vs forward vs the paper's BackPassInv.

Shared pieces (cases, the onnxinv runner, the bench's own onnxruntime check, targets, machine
facts) are in ``common.py``. Ratios, not absolute times, are the figures to quote; run on a
quiet machine: the CPU share other processes take just before and during the run is measured
(Linux) and a warning printed when it is noticeable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import backward_table, methods_table
from bench.common import (
    BOUNDS,
    BUSY_SHARE,
    MODEL_NAMES,
    PIECEWISE_MODELS,
    QUICK_MODELS,
    QUICK_SAMPLES,
    OtherLoad,
    machine_facts,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=256, help="samples per model x target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SAMPLES} samples, 2-layer model only"
    )
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"bundled models to run (default {' '.join(MODEL_NAMES)}; also "
        f"{' '.join(PIECEWISE_MODELS)})",
    )
    ap.add_argument(
        "--skip-backward", action="store_true", help="leave out the backward-pass table"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads for every method (default: torch's own choice)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per method and cell; the fastest wall time is kept (default 1)",
    )
    args = ap.parse_args(argv)
    if args.samples <= 0 or args.repeats <= 0 or (args.threads is not None and args.threads <= 0):
        ap.error("--samples, --repeats and --threads must be positive")
    return args


def _warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    samples = QUICK_SAMPLES if args.quick else args.samples
    model_names = QUICK_MODELS if args.quick else (args.models or MODEL_NAMES)
    methods = methods_table.METHODS
    base = methods_table.baseline(methods)
    facts = machine_facts()
    print(
        f"machine: {facts['cpu_count']} CPUs, torch threads {facts['torch_threads']}, "
        f"torch {facts['torch']}, onnxruntime {facts['onnxruntime']}, python {facts['python']}, "
        f"1-min load average {facts['load_average_at_start']}"
    )
    probe = OtherLoad()
    time.sleep(1.0)
    before = probe.share()
    facts["other_cpu_share_before"] = before
    if before is not None and before >= BUSY_SHARE:
        _warn(
            f"other processes used {100 * before:.0f}% of the CPUs just before the run: times "
            "and even ratios will be unreliable (with torch threads > 1 a busy core can slow "
            "every parallel step many-fold). Re-run on a quiet machine, or use --threads 1 "
            "--repeats 3."
        )
    print(
        f"samples {samples}, seed {args.seed}, bounds {BOUNDS}, methods "
        f"{', '.join(m.name for m in methods)} (baseline {base.name}; gd: Adam lr "
        f"{methods_table.GD_LR}, <= {methods_table.GD_STEPS} steps, float64); "
        f"repeats {args.repeats} (fastest kept)"
    )

    t_all = time.perf_counter()
    others = OtherLoad()
    rows = methods_table.run(model_names, samples, args.seed, args.repeats, methods)
    backward_rows: list[dict[str, Any]] = []
    if not args.skip_backward:
        backward_rows = backward_table.run(model_names, samples, args.seed, args.repeats)
    total = time.perf_counter() - t_all

    print()
    print(methods_table.render(rows, methods))
    if backward_rows:
        print()
        print(backward_table.render(backward_rows))
    during = others.share()
    print(
        f"total run time {total:.1f} s; other processes used "
        + ("(unknown)" if during is None else f"{100 * during:.0f}%")
        + " of the CPUs during the run"
    )
    if during is not None and during >= BUSY_SHARE:
        _warn(
            f"other processes used {100 * during:.0f}% of the CPUs during the run: treat the "
            "times and ratios with suspicion and re-run on a quiet machine."
        )

    if args.json is not None:
        payload = {
            "machine": facts,
            "config": {
                "samples": samples,
                "seed": args.seed,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "bounds": list(BOUNDS),
                "models": list(model_names),
                "methods": [m.name for m in methods],
                "baseline": base.name,
                "gd": {"lr": methods_table.GD_LR, "steps": methods_table.GD_STEPS},
            },
            "total_seconds": total,
            "other_cpu_share_during": during,
            "rows": methods_table.to_json(rows),
            "backward_rows": backward_rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
