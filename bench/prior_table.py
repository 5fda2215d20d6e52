"""--prior on every bundled model: how near a real digit the preimages come with a prior.

The target is the model's output on a real digit 5 (the first in the validation set); the
prior is the mean of all validation digits (not the 5 itself). For plain samples and for
samples with the prior, the table gives the verified count and the mean Euclidean distance
of the verified samples to the real 5 and to the prior (64 pixels in [0, 1]).

    python bench/prior_table.py [--samples 32] [--method auto]
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import onnxruntime as ort  # noqa: E402

import onnxinv  # noqa: E402
from bench.common import MODEL_NAMES, MODELS_DIR, PIECEWISE_MODELS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=[*MODEL_NAMES, *PIECEWISE_MODELS])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--method", default="auto")
    args = ap.parse_args(argv)
    data = np.load(MODELS_DIR / "digits_val.npz")
    five = data["x"][int(np.flatnonzero(data["y"] == 5)[0])].astype(np.float64)
    mean = data["x"].mean(0).astype(np.float64)
    print(f"target: the model's output on the first validation 5; prior: the mean digit; "
          f"{args.samples} samples, method {args.method}, bounds [0, 1], seed 0")  # fmt: skip
    print("| model | plain: verified | plain: distance to the 5 | prior: verified | "
          "prior: distance to the 5 | prior: distance to the prior |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = MODELS_DIR / f"{name}.onnx"
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shaped = five.astype(np.float32).reshape([1] + [int(d) for d in inp.shape[1:]])
        p = np.asarray(sess.run(None, {inp.name: shaped})[0], dtype=np.float64).ravel()
        target = {"distribution": (p / p.sum()).tolist()}  # exactly the model's output
        row = [name]
        for prior in (None, mean):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = onnxinv.invert(str(path), target, samples=args.samples, bounds=(0, 1),
                                     seed=0, method=args.method,
                                     prior=None if prior is None else prior)  # fmt: skip
            x = res.inputs.reshape(len(res), -1).astype(np.float64)[res.verified]
            row += [
                f"{res.n_verified}/{len(res)}",
                f"{np.linalg.norm(x - five, axis=1).mean():.2f}",
            ]
            if prior is not None:
                row.append(f"{np.linalg.norm(x - mean, axis=1).mean():.2f}")
        print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
