"""Benchmark onnxinv's inversion methods against plain Adam on the input, in one process.

For every bundled digits model and every target, each method in :data:`METHODS` inverts the
same number of samples from seeded uniform random starts inside the box [0, 1]; every sample is
then judged by onnxruntime on the original ONNX model (max |probs - target| <= tolerance and
inside the box). Each method's wall time covers everything it needs: loading and converting
the model, solving, and the onnxruntime verification.

The baseline ("adam") is the usual gradient descent on the input: the model converted with
``onnxinv.convert.to_torch`` (float64 by default), the MSE between its output probabilities and
the target minimised by ``torch.optim.Adam(lr=0.01)``, with the input clamped to [0, 1] after
every step, each sample frozen once its max |p - target| <= tolerance, at most 1,000 steps.

Run ``python bench/bench.py [--samples 256] [--seed 0] [--quick] [--json out.json]`` (also
``--threads N``, ``--repeats N``, ``--adam-dtype float32``). Ratios, not absolute times, are the
figures to quote: both sides run on the same machine in the same process, one after the other.
Run on a quiet machine: the CPU share other processes take just before and during the run
is measured (Linux) and a warning printed when it is noticeable.

Adding a method is one line in :data:`METHODS` (e.g. ``Method("backward",
onnxinv_runner("backward"))``); its columns and ratios against the baseline follow.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import onnxinv
from onnxinv.convert import to_torch
from onnxinv.errors import UnreachableTargetError
from onnxinv.target import Target

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
MODEL_NAMES = ("digits_1layer", "digits_2layer", "digits_6layer")
QUICK_MODELS = ("digits_2layer",)
FILE_TARGETS = ("digit3", "mix_1_7", "uniform")
BOUNDS = (0.0, 1.0)
REACHABLE_DIGIT = 3
QUICK_SAMPLES = 32
BUSY_SHARE = 0.1  # warn when other processes take this share of the machine's CPU time

ADAM_LR = 0.01
ADAM_MAX_STEPS = 1000


@dataclass
class Case:
    """One benchmark cell: a model file and a target (as a dict onnxinv accepts)."""

    model_name: str
    model_path: Path
    target_name: str
    target: dict[str, Any]
    samples: int
    seed: int


@dataclass
class Record:
    """What every method runner returns: counts, wall time and method-specific extras."""

    method: str
    samples: int
    verified: int
    seconds: float
    solve_seconds: float
    best_error: float
    median_error: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verified_fraction(self) -> float:
        return self.verified / self.samples if self.samples else 0.0

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.inf

    @property
    def seconds_per_verified(self) -> float:
        return self.seconds / self.verified if self.verified else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            verified_fraction=self.verified_fraction,
            samples_per_second=self.samples_per_second,
            seconds_per_verified=_json_number(self.seconds_per_verified),
        )
        return d


Runner = Callable[[Case], Record]


@dataclass(frozen=True)
class Method:
    """A column group of the table: a name and the runner that produces its record."""

    name: str
    run: Runner
    baseline: bool = False


# ---------------------------------------------------------------------------------------------
# onnxinv methods


def onnxinv_runner(method: str) -> Runner:
    """A runner calling ``onnxinv.invert(..., method=method)`` with bounds (0, 1)."""

    def run(case: Case) -> Record:
        t0 = time.perf_counter()
        try:
            res = onnxinv.invert(
                str(case.model_path),
                case.target,
                samples=case.samples,
                seed=case.seed,
                bounds=BOUNDS,
                method=method,
            )
        except UnreachableTargetError as exc:
            if exc.result is None:
                raise
            res = exc.result
        seconds = time.perf_counter() - t0
        errors = np.asarray(res.errors, dtype=np.float64)
        return Record(
            method=method,
            samples=len(res),
            verified=res.n_verified,
            seconds=seconds,
            solve_seconds=float(res.timings.get("solve", math.nan)),
            best_error=float(errors.min()),
            median_error=float(np.median(errors)),
            extra={
                "timings": {k: round(float(v), 6) for k, v in res.timings.items()},
                "mean_iterations": float(np.mean(res.iterations)),
                "notes": list(res.notes),
            },
        )

    return run


# ---------------------------------------------------------------------------------------------
# Adam-on-the-input baseline

ADAM_DTYPE = torch.float64  # set from --adam-dtype in main()


def target_probabilities(target: dict[str, Any], n_classes: int) -> np.ndarray:
    """The target's probability vector and nothing else (class shorthand resolved)."""
    return Target.from_dict(target).resolve((n_classes,)).astype(np.float64).ravel()


def ort_session(model_bytes: bytes) -> ort.InferenceSession:
    """A CPU onnxruntime session on the original model, as onnxinv builds it."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def ort_verify(
    sess: ort.InferenceSession, x: np.ndarray, target: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """onnxinv's check: float32 inputs clipped into the box, run by onnxruntime.

    Returns per-sample max |probs - target| and verified flags (error <= tolerance, finite,
    inside the bounds).
    """
    lo, hi = BOUNDS
    xs = np.clip(x.astype(np.float32), np.float32(lo), np.float32(hi))
    name = sess.get_inputs()[0].name
    probs = np.asarray(sess.run(None, {name: xs})[0], dtype=np.float64).reshape(len(xs), -1)
    err = np.abs(probs - target.reshape(1, -1)).max(1)
    err = np.where(np.isfinite(err), err, np.inf)
    ok = np.isfinite(err) & (err <= tolerance) & np.isfinite(xs).all(1)
    ok &= (xs >= lo).all(1) & (xs <= hi).all(1)
    return err, ok


def run_adam(case: Case) -> Record:
    """Adam on the input: MSE on probabilities, clamp to the box, freeze samples that converge.

    The loss is the per-sample mean squared error summed over samples, so each sample's
    gradient (and, Adam being element-wise, its whole trajectory) is what it would be alone.
    """
    t0 = time.perf_counter()
    proto = onnx.load(str(case.model_path))
    module = to_torch(proto).to(ADAM_DTYPE).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    n_in = int(proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value)
    n_out = int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    tolerance = Target.from_dict(case.target).tolerance
    t_np = target_probabilities(case.target, n_out)
    t = torch.as_tensor(t_np, dtype=ADAM_DTYPE)
    rng = np.random.default_rng(case.seed)
    x0 = rng.uniform(BOUNDS[0], BOUNDS[1], size=(case.samples, n_in))
    x = torch.tensor(x0, dtype=ADAM_DTYPE, requires_grad=True)
    opt = torch.optim.Adam([x], lr=ADAM_LR)
    done = torch.zeros(case.samples, dtype=torch.bool)
    steps = torch.zeros(case.samples, dtype=torch.int64)
    t_solve = time.perf_counter()
    n_steps = 0
    for _ in range(ADAM_MAX_STEPS):
        p = module(x)
        err = (p.detach() - t).abs().amax(1)
        done |= err <= tolerance
        if bool(done.all()):
            break
        loss = ((p - t) ** 2).mean(1).sum()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        with torch.no_grad():
            x.grad[done] = 0.0
            keep = x.detach().clone()
        opt.step()
        with torch.no_grad():
            # Adam's momentum would still move a zero-gradient row: restore frozen rows.
            x.copy_(torch.where(done[:, None], keep, x.clamp(BOUNDS[0], BOUNDS[1])))
        steps += (~done).to(torch.int64)
        n_steps += 1
    converged = int(done.sum())
    solve_seconds = time.perf_counter() - t_solve
    sess = ort_session(proto.SerializeToString())
    err_np, ok = ort_verify(sess, x.detach().cpu().numpy(), t_np, tolerance)
    seconds = time.perf_counter() - t0
    return Record(
        method="adam",
        samples=case.samples,
        verified=int(ok.sum()),
        seconds=seconds,
        solve_seconds=solve_seconds,
        best_error=float(err_np.min()),
        median_error=float(np.median(err_np)),
        extra={
            "dtype": str(ADAM_DTYPE).removeprefix("torch."),
            "lr": ADAM_LR,
            "max_steps": ADAM_MAX_STEPS,
            "batch_steps": n_steps,
            "mean_steps": float(steps.double().mean()),
            "converged_in_torch": converged,
        },
    )


# The table's column groups, in order. Exactly one baseline; every other method gets ratios
# against it. A new onnxinv method is one line, e.g.:
#     Method("backward", onnxinv_runner("backward")),
METHODS: list[Method] = [
    Method("forward", onnxinv_runner("forward")),
    Method("adam", run_adam, baseline=True),
]


# ---------------------------------------------------------------------------------------------
# Targets


def reachable_target(model_path: Path, digit: int = REACHABLE_DIGIT) -> dict[str, Any]:
    """The model's own probabilities on the first validation image of ``digit``."""
    data = np.load(MODELS_DIR / "digits_val.npz")
    idx = int(np.flatnonzero(data["y"] == digit)[0])
    sess = ort_session(model_path.read_bytes())
    name = sess.get_inputs()[0].name
    p = np.asarray(sess.run(None, {name: data["x"][idx : idx + 1]})[0], dtype=np.float64).ravel()
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


# ---------------------------------------------------------------------------------------------
# Ratios, table, JSON


def ratios(method: Record, baseline: Record) -> dict[str, float]:
    """Baseline time per verified / method's, and method's verified fraction / baseline's.

    ``inf`` when only the baseline verified nothing (a genuine "infinitely better"); ``nan``
    (printed "n/a") when the method verified nothing.
    """
    if method.verified == 0:
        time_ratio = math.nan
    elif baseline.verified == 0:
        time_ratio = math.inf
    else:
        time_ratio = baseline.seconds_per_verified / method.seconds_per_verified
    if method.verified == 0 and baseline.verified == 0:
        frac_ratio = math.nan
    elif baseline.verified == 0:
        frac_ratio = math.inf
    else:
        frac_ratio = method.verified_fraction / baseline.verified_fraction
    return {"time_per_verified": time_ratio, "verified_fraction": frac_ratio}


def _fmt_ratio(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.3g}x" if v < 1000 else f"{v:.0f}x"


def _json_number(v: float) -> float | str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return v


def table(rows: list[dict[str, Any]], methods: list[Method]) -> str:
    """A fixed-width table: one row per model x target."""
    base = next(m for m in methods if m.baseline)
    others = [m for m in methods if not m.baseline]
    ordered = [*others, base]
    header = ["model", "target"]
    for m in ordered:
        header += [f"{m.name} ver%", f"{m.name} smp/s"]
    for m in others:
        header += [f"t/ver {base.name}/{m.name}", f"ver {m.name}/{base.name}"]
    lines = []
    for row in rows:
        cells = [row["model"], row["target"]]
        for m in ordered:
            r = row["records"][m.name]
            cells += [f"{100 * r.verified_fraction:.1f}", f"{r.samples_per_second:.1f}"]
        for m in others:
            rt = row["ratios"][m.name]
            cells += [_fmt_ratio(rt["time_per_verified"]), _fmt_ratio(rt["verified_fraction"])]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        parts = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts)

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(c) for c in lines]
    return "\n".join(out)


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


def run_repeated(method: Method, case: Case, repeats: int) -> Record:
    """Run ``method`` ``repeats`` times; keep the fastest wall time (results are seeded).

    The minimum is the usual estimate least disturbed by other load; every time is kept in
    ``extra["all_seconds"]``. A repeat whose verified count differs is flagged in
    ``extra["nondeterministic"]``.
    """
    runs = [method.run(case) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.seconds)
    best.extra["all_seconds"] = [round(r.seconds, 4) for r in runs]
    if len({r.verified for r in runs}) > 1:
        best.extra["nondeterministic"] = [r.verified for r in runs]
    return best


def warm_up(methods: list[Method], model_path: Path, seed: int) -> None:
    """One tiny untimed run per method, so one-off import and first-call costs are not timed."""
    case = Case("warm-up", model_path, "warm-up", {"class": 0, "confidence": 0.5}, 2, seed)
    for m in methods:
        m.run(case)


# ---------------------------------------------------------------------------------------------
# Backward pass: onnxinv's versus forward and versus the paper's BackPassInv, with diversity


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows."""
    if len(x) < 2:
        return math.nan
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    sq = (x * x).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(len(x), 1)
    return float(np.sqrt(d2[iu]).mean())


def _invert_quiet(path: Path, target: dict[str, Any], samples: int, seed: int, bounds, method):
    t0 = time.perf_counter()
    try:
        res = onnxinv.invert(
            str(path), target, samples=samples, seed=seed, bounds=bounds, method=method
        )
    except UnreachableTargetError as exc:
        res = exc.result
    return res, time.perf_counter() - t0


def backward_section(model_names, samples: int, seed: int) -> list[dict[str, Any]]:
    """Per model x target x bounds: backward vs forward vs the paper's BackPassInv."""
    from paper_backward import paper_backward

    real = np.load(MODELS_DIR / "digits_val.npz")
    real_3 = mean_pairwise_distance(real["x"][real["y"] == REACHABLE_DIGIT])
    rows = []
    for model_name in model_names:
        path = MODELS_DIR / f"{model_name}.onnx"
        sess = ort_session(path.read_bytes())
        for target_name, target in targets_for(path):
            p = Target.from_dict(target).resolve((10,))
            for bounds in (None, BOUNDS):
                back, t_back = _invert_quiet(path, target, samples, seed, bounds, "backward")
                fwd, t_fwd = _invert_quiet(path, target, samples, seed, bounds, "forward")
                t0 = time.perf_counter()
                try:
                    xp, okp = paper_backward(str(path), p, samples, seed)
                    xp32 = xp.astype(np.float32)
                    if bounds is not None:
                        okp &= ((xp32 >= bounds[0]) & (xp32 <= bounds[1])).all(1)
                    name = sess.get_inputs()[0].name
                    probs = sess.run(None, {name: np.nan_to_num(xp32)})[0]
                    err = np.abs(probs.astype(np.float64) - p.reshape(1, -1)).max(1)
                    paper = float(np.mean(okp & np.isfinite(xp32).all(1) & (err <= 1e-4)))
                except ValueError:
                    paper = math.nan
                t_paper = time.perf_counter() - t0
                ok_b = back.inputs[back.verified]
                ok_f = fwd.inputs[fwd.verified]
                row = {
                    "model": model_name,
                    "target": target_name,
                    "bounds": "0,1" if bounds else "none",
                    "backward_verified": back.n_verified / samples,
                    "backward_sps": samples / t_back,
                    "forward_verified": fwd.n_verified / samples,
                    "forward_sps": samples / t_fwd,
                    "paper_verified": paper,
                    "paper_sps": samples / t_paper,
                    "backward_paths": sorted(set(back.methods)),
                    "diversity_backward": mean_pairwise_distance(ok_b),
                    "diversity_forward": mean_pairwise_distance(ok_f),
                    "diversity_real_3": real_3,
                }
                rows.append(row)
                print(
                    f"  {model_name:<14} {target_name:<12} bounds {row['bounds']:<4} backward "
                    f"{back.n_verified:>4}/{samples}  forward {fwd.n_verified:>4}/{samples}  "
                    f"paper {paper:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def backward_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "model", "target", "bounds", "backward ver%", "backward smp/s", "speed back/fwd",
        "forward ver%", "paper ver%", "div back", "div fwd", "div real 3s",
    ]  # fmt: skip
    lines = []
    for r in rows:
        speed = r["backward_sps"] / r["forward_sps"]
        lines.append([
            r["model"], r["target"], r["bounds"], f"{100 * r['backward_verified']:.1f}",
            f"{r['backward_sps']:.1f}", f"{speed:.3g}x", f"{100 * r['forward_verified']:.1f}",
            "n/a" if math.isnan(r["paper_verified"]) else f"{100 * r['paper_verified']:.1f}",
            f"{r['diversity_backward']:.2f}", f"{r['diversity_forward']:.2f}",
            f"{r['diversity_real_3']:.2f}",
        ])  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 3 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=256, help="samples per model x target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SAMPLES} samples, 2-layer model only"
    )
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument(
        "--skip-backward", action="store_true", help="leave out the backward-pass table"
    )
    ap.add_argument(
        "--adam-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the Adam baseline's torch model and input (default float64)",
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


def main(argv: list[str] | None = None) -> int:
    global ADAM_DTYPE
    args = parse_args(argv)
    ADAM_DTYPE = getattr(torch, args.adam_dtype)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    samples = QUICK_SAMPLES if args.quick else args.samples
    model_names = QUICK_MODELS if args.quick else MODEL_NAMES
    methods = METHODS
    base = next(m for m in methods if m.baseline)
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
        print(
            f"WARNING: other processes used {100 * before:.0f}% of the CPUs just before the "
            "run: times and even ratios will be unreliable (with torch threads > 1 a busy "
            "core can slow every parallel step many-fold). Re-run on a quiet machine, or use "
            "--threads 1 --repeats 3.",
            file=sys.stderr,
        )
    print(
        f"samples {samples}, seed {args.seed}, bounds {BOUNDS}, baseline {base.name}: "
        f"Adam lr {ADAM_LR}, <= {ADAM_MAX_STEPS} steps, {args.adam_dtype}; "
        f"repeats {args.repeats} (fastest kept)"
    )

    t_all = time.perf_counter()
    others = OtherLoad()
    warm_up(methods, MODELS_DIR / f"{model_names[0]}.onnx", args.seed)
    rows: list[dict[str, Any]] = []
    for model_name in model_names:
        model_path = MODELS_DIR / f"{model_name}.onnx"
        for target_name, target in targets_for(model_path):
            case = Case(model_name, model_path, target_name, target, samples, args.seed)
            records: dict[str, Record] = {}
            for m in methods:
                records[m.name] = run_repeated(m, case, args.repeats)
                r = records[m.name]
                print(
                    f"  {model_name:<14} {target_name:<12} {m.name:<10} "
                    f"{r.verified:>4}/{r.samples} verified  {r.seconds:8.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
            row_ratios = {
                m.name: ratios(records[m.name], records[base.name])
                for m in methods
                if not m.baseline
            }
            rows.append(
                {
                    "model": model_name,
                    "target": target_name,
                    "target_spec": target,
                    "records": records,
                    "ratios": row_ratios,
                }
            )
    backward_rows = [] if args.skip_backward else backward_section(model_names, samples, args.seed)
    total = time.perf_counter() - t_all

    print()
    print(table(rows, methods))
    print()
    print(
        "ver% = onnxruntime-verified share of samples; smp/s = samples / wall seconds (load, "
        "convert, solve, verify).\n"
        f"t/ver = {base.name} seconds per verified sample / method's (>1: method cheaper per "
        f"verified sample); ver = method's verified fraction / {base.name}'s.\n"
        "inf: the baseline verified nothing; n/a: the method verified nothing.\n"
        "Quote the ratios, not absolute times: both sides ran here, in one process, "
        "on the machine above."
    )
    if backward_rows:
        print()
        print(backward_table(backward_rows))
        print()
        print(
            "backward = onnxinv --method backward; paper = the paper's BackPassInv (pseudo-"
            "inverse, random null-space vector, error outside an inverse's domain) with the same "
            "rules; speed back/fwd = backward samples/s over forward's, in this run.\n"
            "div = mean pairwise distance between verified samples; real 3s = between the "
            "validation set's real digit 3s (same pixel scale)."
        )
    during = others.share()
    print(
        f"total run time {total:.1f} s; other processes used "
        + ("(unknown)" if during is None else f"{100 * during:.0f}%")
        + " of the CPUs during the run"
    )
    if during is not None and during >= BUSY_SHARE:
        print(
            f"WARNING: other processes used {100 * during:.0f}% of the CPUs during the run: "
            "treat the times and ratios with suspicion and re-run on a quiet machine.",
            file=sys.stderr,
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
                "adam": {"lr": ADAM_LR, "max_steps": ADAM_MAX_STEPS, "dtype": args.adam_dtype},
            },
            "total_seconds": total,
            "backward_rows": backward_rows,
            "other_cpu_share_during": during,
            "rows": [
                {
                    "model": row["model"],
                    "target": row["target"],
                    "target_spec": row["target_spec"],
                    "records": {k: r.to_dict() for k, r in row["records"].items()},
                    "ratios": {
                        k: {kk: _json_number(vv) for kk, vv in v.items()}
                        for k, v in row["ratios"].items()
                    },
                }
                for row in rows
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
