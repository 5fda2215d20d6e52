"""Throughput and peak memory of each method as the number of samples grows.

Each (N, method) runs in a fresh process (so its peak RSS is its own), on one bundled model
and target, with bounds 0,1, after a small warm-up in that process. Prints, per N and method:
verified samples per second, its ratio to `auto`'s and to `forward`'s at the same N (from the
same run), peak resident memory and the returned arrays' own size; memory beyond the result
should stay about flat in N (solvers work in chunks, `invert` in batches of `STREAM`), and the
rate should not fall.

    python bench/scale.py                    # auto, backward, forward; digits_2layer; 1k/10k/100k
    python bench/scale.py --methods backward forward --sizes 1000 10000
    python bench/scale.py --model models/digits_6layer.onnx --target reachable --sizes 2000

``--target reachable`` is the model's own output on the first real 3 of the validation set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import onnxinv
model, target, method, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
onnxinv.invert(model, target, samples=8, method=method, bounds=(0, 1))
t = time.perf_counter()
r = onnxinv.invert(model, target, samples=n, method=method, bounds=(0, 1))
seconds = time.perf_counter() - t
result = sum(a.nbytes for a in (r.inputs, r.outputs, r.errors, r.verified, r.iterations,
                                 r.probabilities))
print(json.dumps({"n": n, "verified": r.n_verified, "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "result_mb": result / 2**20}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_2layer.onnx"))
    ap.add_argument("--target", default=str(ROOT / "models" / "targets" / "mix_1_7.json"))
    ap.add_argument("--methods", nargs="+", default=["auto", "backward", "forward"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = ap.parse_args(argv)
    target = args.target
    if target == "reachable":
        from bench.common import reachable_target

        spec = reachable_target(Path(args.model))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
            json.dump(spec, tmp)
        target = tmp.name
    print(f"{Path(args.model).name}, target {Path(args.target).stem}, bounds 0,1")
    print(f"{'N':>8}  {'method':>8}  {'verified':>8}  {'seconds':>8}  {'verified/s':>10}  "
          f"{'vs auto':>7}  {'vs forward':>10}  {'peak RSS MB':>11}  {'result MB':>9}")  # fmt: skip
    for n in args.sizes:
        rows = {method: measure(args.model, target, method, n) for method in args.methods}
        for method, row in rows.items():
            ratios = [_ratio(row, rows.get(ref)) for ref in ("auto", "forward")]
            print(f"{n:>8}  {method:>8}  {row['verified']:>8}  {row['seconds']:>8.2f}  "
                  f"{row['rate']:>10.0f}  {ratios[0]:>7}  {ratios[1]:>10}  "
                  f"{row['peak_mb']:>11.0f}  {row['result_mb']:>9.0f}")  # fmt: skip
    return 0


def measure(model: str, target: str, method: str, n: int) -> dict:
    """``n`` samples through ``method`` in a fresh process (after a warm-up of 8 there):
    ``{"n", "verified", "seconds", "peak_mb", "result_mb", "rate"}``, ``rate`` in verified
    samples/s, ``result_mb`` the returned arrays' own size (the part of the peak that must grow
    with N)."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(target), method, str(n)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["rate"] = row["verified"] / row["seconds"]
    return row


def _ratio(row: dict, ref: dict | None) -> str:
    """This method's verified samples/s over the reference's ("-" without one)."""
    if ref is None or ref["rate"] == 0:
        return "-"
    return f"{row['rate'] / ref['rate']:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
