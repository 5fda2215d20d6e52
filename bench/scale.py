"""Throughput and peak memory of one method as the number of samples grows.

Each N runs in a fresh process (so its peak RSS is its own), on one bundled model and target,
with bounds 0,1, after a small warm-up in that process. Prints, per N: verified samples per
second and peak resident memory; memory should stay about flat in N (solvers work in chunks),
and the rate should not fall.

    python bench/scale.py                           # backward, digits_2layer, 1k/10k/100k
    python bench/scale.py --method forward --sizes 1000 10000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
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
print(json.dumps({"n": n, "verified": r.n_verified, "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "digits_2layer.onnx"))
    ap.add_argument("--target", default=str(ROOT / "models" / "targets" / "mix_1_7.json"))
    ap.add_argument("--method", default="backward")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    args = ap.parse_args(argv)
    print(f"{Path(args.model).name}, target {Path(args.target).stem}, bounds 0,1, "
          f"method {args.method}")  # fmt: skip
    print(f"{'N':>8}  {'verified':>8}  {'seconds':>8}  {'verified/s':>10}  {'peak RSS MB':>11}")
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, args.target, args.method, str(n)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rate = row["verified"] / row["seconds"]
        print(f"{n:>8}  {row['verified']:>8}  {row['seconds']:>8.2f}  {rate:>10.0f}  "
              f"{row['peak_mb']:>11.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
