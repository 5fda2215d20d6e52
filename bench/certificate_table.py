"""Which targets the certificate proves out of reach, and what the backward pass does with the rest.

For every bundled model, every class ``k`` at ``--confidence`` (the rest shared equally), and
every class's real output (the model's probabilities on the first validation image of digit
``k``, reachable by construction), inside each box: the run's verdict, `proven` (the
certificate, before any solving), `solved v/N` (verified samples) or `not reached` (best
error), and its wall time. A reachable-by-construction target called `proven` would be a
soundness bug: the script counts those and exits non-zero if there is one.

    python bench/certificate_table.py                       # boxes [0, 1] and [0, 0.25]
    python bench/certificate_table.py --boxes 0,1 --samples 64 --timeout 20
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import onnxinv  # noqa: E402
from bench.common import MODEL_NAMES, MODELS_DIR, PIECEWISE_MODELS, reachable_target  # noqa: E402
from onnxinv.errors import UnreachableTargetError  # noqa: E402


def verdict(model: Path, spec: dict, box, samples: int, timeout: float, method: str = "auto"):
    """One run: ('proven' | 'solved v/N' | 'not reached (e)' | 'unknown (e)', seconds); unknown
    when the exact solver's program ran out of time (not reached, not proven)."""
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = onnxinv.invert(str(model), spec, samples=samples, bounds=box, seed=0,
                               timeout=timeout, method=method)  # fmt: skip
        out = f"solved {r.n_verified}/{samples}"
    except UnreachableTargetError as exc:
        out = "proven" if exc.proven else f"not reached ({exc.best_error:.1g})"
        if not exc.proven and "is unknown" in str(exc):
            out = f"unknown ({exc.best_error:.1g})"
    return out, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=[*MODEL_NAMES, *PIECEWISE_MODELS])
    ap.add_argument("--boxes", nargs="+", default=["0,1", "0,0.25"])
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--method", default="auto")
    args = ap.parse_args(argv)
    wrong = 0
    print(f"{args.samples} samples per target, seed 0, method {args.method}, per-target timeout "
          f"{args.timeout:g} s; class k = {args.confidence:g} for k, the rest equal; "
          "real k = the model's output on a real digit k")  # fmt: skip
    print(f"{'model':<14}  {'box':<7}  {'target':<8}  {'verdict':<22}  {'seconds':>7}")
    for name in args.models:
        path = MODELS_DIR / f"{name}.onnx"
        for box_text in args.boxes:
            box = tuple(float(v) for v in box_text.split(","))
            counts = {"proven": 0, "solved": 0, "not": 0, "unknown": 0}
            for k in range(10):
                p = np.full(10, (1 - args.confidence) / 9)
                p[k] = args.confidence
                for label, spec in (
                    (f"class {k}", {"distribution": p.tolist()}),
                    (f"real {k}", reachable_target(path, k)),
                ):
                    if label.startswith("real") and box != (0.0, 1.0):
                        continue  # real digits lie in [0, 1], not necessarily in a smaller box
                    out, seconds = verdict(path, spec, box, args.samples, args.timeout,
                                           args.method)  # fmt: skip
                    counts[out.split()[0]] += 1
                    if label.startswith("real") and out == "proven":
                        wrong += 1
                    print(f"{name:<14}  {box_text:<7}  {label:<8}  {out:<22}  {seconds:>7.2f}",
                          flush=True)  # fmt: skip
            print(f"{name:<14}  {box_text:<7}  summary: {counts['proven']} proven unreachable, "
                  f"{counts['solved']} solved, {counts['unknown']} unknown (program "
                  f"time limit), {counts['not']} not reached")  # fmt: skip
    print(f"reachable targets called unreachable: {wrong}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
