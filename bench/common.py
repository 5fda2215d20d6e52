"""What every benchmark table shares: cases, records, the onnxinv runner and the check.

- :class:`Case` (a model file, a target dict, samples, seed, bounds) and :class:`Record`
  (what a runner returns: counts, times, the returned inputs and their verified flags).
- :func:`run_onnxinv`, the single way the tables call ``onnxinv.invert``.
- :func:`check`, the bench's own judge: every sample of every method is run again in a fresh
  ``onnxruntime.InferenceSession`` on the original file and counts as verified when its output
  is within the target's own tolerance (``Target.from_dict(spec).tolerance``), finite, and
  inside :data:`BOUNDS` (the same constant passed into onnxinv). Nothing here hard-codes a
  tolerance.
- :func:`run_repeated`, :func:`warm_up`, :func:`mean_pairwise_distance`, the targets
  (:func:`targets_for`), machine facts and the other-load probe, and table formatting.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import onnxinv
from onnxinv.errors import UnreachableTargetError
from onnxinv.settings import Settings
from onnxinv.target import Target

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
MODEL_NAMES = ("digits_1layer", "digits_2layer", "digits_6layer")
PIECEWISE_MODELS = ("digits_relu", "digits_cnn", "digits_nhwc")  # ReLU, max pools: exact applies
QUICK_MODELS = ("digits_2layer",)
FILE_TARGETS = ("digit3", "mix_1_7", "uniform")
BOUNDS = (0.0, 1.0)  # the one box: passed into onnxinv and used by check()
REACHABLE_DIGIT = 3
QUICK_SAMPLES = 32
BUSY_SHARE = 0.1  # warn when other processes take this share of the machine's CPU time


@dataclass
class Case:
    """One benchmark cell: a model file, a target (as a dict onnxinv accepts) and the settings.

    ``settings`` (samples, seed, bounds) is the :class:`onnxinv.settings.Settings` object every
    method of the cell runs with; :func:`check` takes the box from it too.
    """

    model_name: str
    model_path: Path
    target_name: str
    target: dict[str, Any]
    samples: int
    seed: int
    bounds: tuple[float, float] | None = BOUNDS

    @property
    def settings(self) -> Settings:
        return Settings(samples=self.samples, seed=self.seed, bounds=self.bounds)


@dataclass
class Record:
    """What every runner returns, judged by :func:`check`.

    ``verified``, ``best_error`` and ``median_error`` are the bench's own check; ``inputs`` and
    ``ok`` (its per-sample flags) are kept for diversity but left out of :meth:`to_dict`.
    ``seconds`` is the method's wall time (for onnxinv: load, convert, solve and its own
    verification), without the bench's check.
    """

    method: str
    samples: int
    verified: int
    seconds: float
    solve_seconds: float
    best_error: float
    median_error: float
    extra: dict[str, Any] = field(default_factory=dict)
    inputs: np.ndarray | None = field(default=None, repr=False)
    ok: np.ndarray | None = field(default=None, repr=False)

    @property
    def verified_fraction(self) -> float:
        return self.verified / self.samples if self.samples else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.inf

    @property
    def seconds_per_verified(self) -> float:
        return self.seconds / self.verified if self.verified else math.inf

    def verified_inputs(self) -> np.ndarray:
        if self.inputs is None or self.ok is None:
            return np.zeros((0, 0))
        return self.inputs[self.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "samples": self.samples,
            "verified": self.verified,
            "seconds": self.seconds,
            "solve_seconds": self.solve_seconds,
            "best_error": self.best_error,
            "median_error": self.median_error,
            "extra": self.extra,
            "verified_fraction": self.verified_fraction,
            "samples_per_second": self.samples_per_second,
            "seconds_per_verified": json_number(self.seconds_per_verified),
        }


Runner = Callable[[Case], Record]


@dataclass(frozen=True)
class Method:
    """A column group of a table: a name and the runner that produces its record."""

    name: str
    run: Runner
    baseline: bool = False


# ---------------------------------------------------------------------------------------------
# The independent check


def check(case: Case, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-judge ``inputs`` (N, ...) in a fresh onnxruntime session on the original file.

    Returns per-sample max |output - target| (``inf`` where not finite) and verified flags:
    error <= the target's tolerance, finite input, and (with bounds) inside ``case.bounds``.
    Inputs are cast to the model's input dtype but never clipped: a sample outside the box
    fails. Where the input's batch axis is fixed (a sample is the whole input, so ``inputs``
    has one more axis than the input), each sample runs alone.
    """
    spec = Target.from_dict(case.target)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        str(case.model_path), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    x = np.asarray(inputs).astype(dtype)
    if x.ndim == len(inp.shape) + 1:  # a fixed batch axis: a sample is a whole input, run alone
        y = np.stack([sess.run([out.name], {inp.name: np.nan_to_num(s)})[0] for s in x])
    else:
        y = sess.run([out.name], {inp.name: np.nan_to_num(x)})[0]
    x = x.reshape(len(x), -1)
    finite = np.isfinite(x).all(1)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    want = spec.resolve(tuple(y.shape[1:])).astype(np.float64).reshape(1, -1)
    err = np.abs(y - want).max(1)
    err = np.where(np.isfinite(err) & finite, err, np.inf)
    ok = err <= spec.tolerance
    bounds = case.settings.bounds
    if bounds is not None:
        ok &= ((x >= bounds[0]) & (x <= bounds[1])).all(1)
    return err, ok


def judged(
    method: str,
    case: Case,
    inputs: np.ndarray,
    seconds: float,
    solve_seconds: float = math.nan,
    extra: dict[str, Any] | None = None,
    also_ok: np.ndarray | None = None,
) -> Record:
    """A :class:`Record` for ``inputs`` judged by :func:`check` (``also_ok`` ANDed in)."""
    err, ok = check(case, inputs)
    if also_ok is not None:
        ok &= also_ok
    return Record(
        method=method,
        samples=len(inputs),
        verified=int(ok.sum()),
        seconds=seconds,
        solve_seconds=solve_seconds,
        best_error=float(err.min()) if len(err) else math.nan,
        median_error=float(np.median(err)) if len(err) else math.nan,
        extra=extra or {},
        inputs=np.asarray(inputs),
        ok=ok,
    )


# ---------------------------------------------------------------------------------------------
# The onnxinv runner


def run_onnxinv(case: Case, method: str, **options: Any) -> Record:
    """``onnxinv.invert(..., case.settings, method=method, **options)``, then :func:`check`.

    An :class:`UnreachableTargetError` carrying a result is a run with nothing verified; a
    proven one (``exc.proven``) is a record with no samples verified and the proof kept. The
    library's own verified count is kept in ``extra["library_verified"]``; a disagreement with
    the check is flagged in ``extra["check_disagrees"]`` and printed.
    """
    t0 = time.perf_counter()
    try:
        res = onnxinv.invert(
            str(case.model_path), case.target, case.settings, method=method, **options
        )
    except UnreachableTargetError as exc:
        if exc.proven:  # proven out of reach before solving: no samples, counted as such
            return Record(method, case.samples, 0, time.perf_counter() - t0, math.nan,
                          math.nan, math.nan, extra={"proven_unreachable": str(exc)})  # fmt: skip
        if exc.result is None:
            raise
        res = exc.result
    seconds = time.perf_counter() - t0
    rec = judged(
        method,
        case,
        res.inputs,
        seconds,
        solve_seconds=float(res.timings.get("solve", math.nan)),
        extra={
            "timings": {k: round(float(v), 6) for k, v in res.timings.items()},
            "mean_iterations": float(np.mean(res.iterations)) if len(res) else math.nan,
            "notes": list(res.notes),
            "paths": sorted(set(res.methods)),
            "library_verified": res.n_verified,
        },
    )
    if not np.array_equal(rec.ok, np.asarray(res.verified, dtype=bool)):
        rec.extra["check_disagrees"] = int((rec.ok != res.verified).sum())
        print(
            f"WARNING: {case.model_name} {case.target_name} {method}: the bench's check "
            f"verified {rec.verified}, onnxinv flagged {res.n_verified}",
            file=sys.stderr,
        )
    return rec


def onnxinv_runner(method: str, **options: Any) -> Runner:
    """A runner for one onnxinv method (``options`` go to ``onnxinv.invert``)."""
    return lambda case: run_onnxinv(case, method, **options)


def run_repeated(run: Runner, case: Case, repeats: int) -> Record:
    """Run ``run`` ``repeats`` times; keep the fastest wall time (results are seeded).

    The minimum is the usual estimate least disturbed by other load; every time is kept in
    ``extra["all_seconds"]``. A repeat whose verified count differs is flagged in
    ``extra["nondeterministic"]``.
    """
    runs = [run(case) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.seconds)
    best.extra["all_seconds"] = [round(r.seconds, 4) for r in runs]
    if len({r.verified for r in runs}) > 1:
        best.extra["nondeterministic"] = [r.verified for r in runs]
    return best


def warm_up(runs: Sequence[Runner], model_path: Path, seed: int) -> None:
    """One tiny untimed run per runner, so one-off import and first-call costs are not timed."""
    case = Case("warm-up", model_path, "warm-up", {"class": 0, "confidence": 0.5}, 2, seed)
    for run in runs:
        run(case)


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows."""
    if len(x) < 2:
        return math.nan
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(len(x), 1)
    return float(np.sqrt(d2[iu]).mean())


# ---------------------------------------------------------------------------------------------
# Targets


def reachable_target(model_path: Path, digit: int = REACHABLE_DIGIT) -> dict[str, Any]:
    """The model's own probabilities on the first validation image of ``digit``."""
    data = np.load(MODELS_DIR / "digits_val.npz")
    idx = int(np.flatnonzero(data["y"] == digit)[0])
    return output_target(model_path, data["x"][idx])


def output_target(model_path: Path, image: np.ndarray) -> dict[str, Any]:
    """The model's own probabilities on ``image`` (any shape with the input's size), as a
    distribution target: reachable by construction (zeros floored at 1e-12, renormalised)."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.asarray(image, dtype=np.float32).reshape([1] + [int(d) for d in inp.shape[1:]])
    p = np.asarray(sess.run(None, {inp.name: x})[0], dtype=np.float64).ravel()
    p = p / p.sum()
    p = np.maximum(p, 1e-12)
    p = p / p.sum()
    return {"distribution": p.tolist()}


def targets_for(model_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The bundled target files plus the reachable-by-construction target."""
    out = [
        (name, json.loads((MODELS_DIR / "targets" / f"{name}.json").read_text()))
        for name in FILE_TARGETS
    ]
    out.append((f"reachable({REACHABLE_DIGIT})", reachable_target(model_path)))
    return out


def cases(model_names: Sequence[str], samples: int, seed: int, bounds=BOUNDS) -> list[Case]:
    """One :class:`Case` per model x target."""
    out = []
    for model_name in model_names:
        path = MODELS_DIR / f"{model_name}.onnx"
        for target_name, target in targets_for(path):
            out.append(Case(model_name, path, target_name, target, samples, seed, bounds))
    return out


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt_ratio(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}x" if v < 1000 else f"{v:.0f}x"


def fmt_percent(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def json_number(v: float) -> float | str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return v


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], n_left: int) -> str:
    """A fixed-width table: the first ``n_left`` columns left-aligned, the rest right."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < n_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def progress(*cells: str) -> None:
    """One progress line on stderr."""
    print("  " + " ".join(cells), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Machine facts and other load


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": _load_average(),
    }


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


class OtherLoad:
    """CPU time other processes used over a span: /proc/stat busy time minus this process's.

    Linux only; elsewhere :meth:`share` returns None. The share is of the whole machine
    (wall seconds x CPUs), so 0.5 on two CPUs means a core was taken by someone else.
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
        except (OSError, ValueError, IndexError):
            return None
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, ru.ru_utime + ru.ru_stime

    def share(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None:
            return None
        wall = end[0] - self._start[0]
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return max(0.0, others) / (wall * (os.cpu_count() or 1)) if wall > 0 else None
