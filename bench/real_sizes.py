"""Real sizes: every method on models the size of deployed ones, each run in a fresh process.

    python bench/real_sizes.py [--models ...] [--methods ...] [--samples N] [--timeout S]
                               [--max-memory 8G] [--model-dir DIR] [--out DIR] [--small]

The models are ``models/real_sizes.py``'s (MobileNetV3, ResNet-18, a CRNN-like recognizer with
a per-step Softmax, a U-Net, a ViT from the dynamo exporter, the recognizer with paddle2onnx-
style Constant weights), built into ``--model-dir`` or taken from its cache there. The target
of each is its own output on a real photograph, so it is reachable; bounds are the input's
range, :data:`common.BOUNDS` = (0, 1).

For each model:

- its input and output shapes and number of weights;
- the floor: one onnxruntime forward pass and one torch forward + backward pass (a
  vector-Jacobian product) of one sample, in a fresh process; the torch module is onnxinv's
  conversion (``onnxinv.convert.to_torch``), else onnx2torch's;
- each method (``auto``, ``backward``, ``forward``, ``gd``, ``exact`` by default) in its own
  fresh process: ``common.run_onnxinv`` with ``--timeout`` (onnxinv's own limit; the process
  is killed at :func:`hard_limit`) and ``--max-memory``, judged by ``common.check``. Shown:
  verified samples, seconds per verified sample (wall time of ``invert``: load, convert, solve,
  verify; not the imports), the process's peak RSS (``os.wait4``'s ``ru_maxrss``, imports
  included) beside the ``--max-memory`` given, and for a refusal its one-line reason;
- the route ``auto`` took (the paths of its samples, and its notes on abandoned plans or
  pilots) and its time per verified sample over the best single method's.

Prints two Markdown tables (models, runs) and writes ``DIR/real_sizes.md`` and
``DIR/real_sizes.json``. ``--small`` uses the tiny builds (for tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench.* and onnxinv import from the checkout
    sys.path.insert(0, str(ROOT))

METHODS = ("auto", "backward", "forward", "gd", "exact")
DEFAULT_SAMPLES = 4
SAMPLES = {"resnet18": 2}  # fewer where one sample costs most
DEFAULT_TIMEOUT = 120.0
MARK = "REAL_SIZES_RESULT "  # the line a child prints its result on
FLOOR_REPEATS = 3
REASON_WIDTH = 110  # characters of a reason shown in the table (the JSON has all of it)


def load_models_module() -> ModuleType:
    """``models/real_sizes.py`` (models/ is not a package; this file shares its name)."""
    name = "real_size_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "models" / "real_sizes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Children: one job per fresh process


def hard_limit(timeout: float) -> float:
    """Seconds after which a run's process is killed: onnxinv's timeout is checked between
    steps, and loading or converting a large model may run past it."""
    return timeout + max(60.0, timeout)


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(job: dict[str, Any], limit: float, threads: int = 1) -> dict[str, Any]:
    """``job`` in a fresh Python process, killed after ``limit`` seconds. Returns the child's
    result dict plus ``wall`` (seconds), ``peak_rss_mb`` (the process's own peak, from
    ``os.wait4``), and ``killed`` / ``crashed`` when it did not finish."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    with tempfile.TemporaryDirectory() as tmp:
        out_path, err_path = Path(tmp, "out"), Path(tmp, "err")
        with out_path.open("w") as out, err_path.open("w") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=child_env(threads), cwd=ROOT)
            killed = False
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if not killed and time.monotonic() - t0 > limit:
                    proc.kill()  # this run's own process, by its pid
                    killed = True
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.monotonic() - t0
        stdout, stderr = out_path.read_text(), err_path.read_text()
    found = [ln for ln in stdout.splitlines() if ln.startswith(MARK)]
    result: dict[str, Any] = json.loads(found[-1][len(MARK) :]) if found else {}
    result.update(wall=wall, peak_rss_mb=usage.ru_maxrss / 1024)
    if killed:
        result["killed"] = f"killed at the hard limit ({limit:.0f} s)"
    elif not found:
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        result["crashed"] = f"exit status {proc.returncode}: {last}"[:300]
    return result


def child_main(job: dict[str, Any]) -> None:
    """The child's side: limit threads, run the job, print its result on one line."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    threadpool_limits(threads)
    run = {"floor": floor_job, "invert": invert_job}[job["job"]]
    print(MARK + json.dumps(run(job), default=str), flush=True)


def current_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def invert_job(job: dict[str, Any]) -> dict[str, Any]:
    """``common.run_onnxinv`` on the model's target; a typed refusal is a one-line reason."""
    import onnxinv  # noqa: F401 - imported before the RSS baseline is read
    from bench.common import BOUNDS, Case, run_onnxinv
    from onnxinv.errors import OnnxInvError, first_line

    spec = json.loads(Path(job["target"]).read_text())
    case = Case(job["name"], Path(job["model"]), "real", spec, job["samples"], job["seed"], BOUNDS)
    options: dict[str, Any] = {"timeout": job["timeout"]}
    if job.get("max_memory"):
        options["max_memory"] = job["max_memory"]
    before = current_rss_mb()
    t0 = time.perf_counter()
    try:
        rec = run_onnxinv(case, job["method"], **options)
    except OnnxInvError as exc:
        return {"refused": f"{type(exc).__name__}: {first_line(exc)}",
                "seconds": time.perf_counter() - t0, "rss_before_mb": before}  # fmt: skip
    out = rec.to_dict()
    notes = rec.extra.get("notes", [])
    out["timed_out"] = rec.seconds >= job["timeout"] or any("timed out" in n for n in notes)
    out["rss_before_mb"] = before
    return out


def floor_job(job: dict[str, Any]) -> dict[str, Any]:
    """One sample's onnxruntime forward time, and torch forward and forward + backward times
    (the fastest of :data:`FLOOR_REPEATS`, after one untimed call)."""
    import numpy as np
    import onnx
    import torch

    models = load_models_module()
    x = np.load(job["input"])
    sess = models.session(Path(job["model"]))
    feed = {sess.get_inputs()[0].name: x}
    out: dict[str, Any] = {"ort_forward_s": best_time(lambda: sess.run(None, feed))}
    proto = onnx.load(job["model"])
    t0 = time.perf_counter()
    try:
        from onnxinv.convert import to_torch

        module, out["converter"] = to_torch(proto, check=False), "onnxinv.convert"
    except Exception as exc:  # noqa: BLE001 - the fallback, and the reason kept
        out["onnxinv_convert_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        try:
            import onnx2torch

            module, out["converter"] = onnx2torch.convert(proto), "onnx2torch"
        except Exception as exc2:  # noqa: BLE001 - reported as the floor's reason
            out["torch_error"] = f"{type(exc2).__name__}: {str(exc2)[:200]}"
            return out
    out["convert_s"] = time.perf_counter() - t0
    module = module.eval()
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.no_grad():
        cotangent = torch.randn(module(xt).shape, generator=torch.Generator().manual_seed(0))

    def forward_backward() -> None:
        module(xt).backward(cotangent)
        xt.grad = None

    def forward() -> None:
        with torch.no_grad():
            module(xt)

    out["torch_forward_s"] = best_time(forward)
    out["torch_fwd_bwd_s"] = best_time(forward_backward)
    return out


def best_time(fn, repeats: int = FLOOR_REPEATS) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# ---------------------------------------------------------------------------------------------
# The measurements


def samples_for(name: str, override: int | None) -> int:
    return override or SAMPLES.get(name, DEFAULT_SAMPLES)


def shapes(built, models: ModuleType) -> tuple[list, list]:
    """Input and output shapes, the symbolic batch axis as ``"N"``, the output's other axes as
    onnxruntime computes them on the real input."""
    sess = models.session(built.path)
    inp = sess.get_inputs()[0]
    x = built.real_input()
    y = sess.run(None, {inp.name: x})[0]
    batch = not isinstance(inp.shape[0], int)
    head = ["N"] if batch else []
    return head + list(x.shape[1 if batch else 0 :]), head + list(y.shape[1 if batch else 0 :])


def measure_model(built, args: argparse.Namespace, models: ModuleType) -> dict[str, Any]:
    """The floor and every method's run of one model (each a fresh process)."""
    name = built.name
    stem = built.path.stem
    input_shape, output_shape = shapes(built, models)
    row: dict[str, Any] = {
        "model": name,
        "file": str(built.path),
        "target": str(built.target),
        "input": input_shape,
        "output": output_shape,
        "params": built.info["params"],
        "ops": built.info["ops"],
        "opset": built.info["opset"],
        "bytes": built.info["bytes"],
    }
    floor_job_spec = {"job": "floor", "model": str(built.path),
                      "input": str(built.path.with_name(f"{stem}.input.npy"))}  # fmt: skip
    row["floor"] = run_child(floor_job_spec, hard_limit(args.timeout), args.threads)
    progress(name, "floor", floor_cell(row["floor"]))
    runs = {}
    n = samples_for(name, args.samples)
    for method in args.methods:
        job = {"job": "invert", "name": name, "model": str(built.path),
               "target": str(built.target), "method": method, "samples": n,
               "seed": args.seed, "timeout": args.timeout,
               "max_memory": args.max_memory}  # fmt: skip
        runs[method] = run_child(job, hard_limit(args.timeout), args.threads)
        runs[method]["samples"] = n
        progress(name, method, outcome(runs[method]), f"{runs[method]['peak_rss_mb']:.0f} MB")
    row["runs"] = runs
    row["route"] = route(runs.get("auto"))
    row["best_single"], row["auto_vs_best"] = auto_vs_best(runs)
    return row


def seconds_per_verified(run: dict[str, Any] | None) -> float:
    if not run or not run.get("verified"):
        return math.inf
    return run["seconds"] / run["verified"]


def auto_vs_best(runs: dict[str, dict[str, Any]]) -> tuple[str | None, float]:
    """(the single method with the least time per verified sample, auto's time per verified
    sample over it): inf when only the single method verified, nan when neither did or there
    is no auto run."""
    singles = {m: seconds_per_verified(r) for m, r in runs.items() if m != "auto"}
    best = min(singles, key=singles.get) if singles else None
    if "auto" not in runs or best is None:
        return best, math.nan
    auto, other = seconds_per_verified(runs["auto"]), singles[best]
    if math.isinf(other):
        return None, (math.nan if math.isinf(auto) else 0.0)
    return best, auto / other


def route(run: dict[str, Any] | None) -> str:
    """What ``auto`` did: its samples' paths, and whether it abandoned its plan or chose a route
    after timing both."""
    if not run:
        return "-"
    if "refused" in run or "killed" in run or "crashed" in run:
        return "-"
    paths = [p for p in run.get("extra", {}).get("paths", []) if p != "timed out"]
    text = "/".join(paths) or "-"
    for note in run.get("extra", {}).get("notes", []):
        if "plan was abandoned" in note:
            text += "; plan abandoned, forward"
        elif "solved the rest by the" in note:
            text += "; piloted, " + note.split("solved the rest by the ")[1].split()[0]
        elif "timeout was reached while" in note:
            text += "; timed out " + note.split("timeout was reached ")[1].rstrip(".")
    return text


def outcome(run: dict[str, Any]) -> str:
    """One line: verified count (and time-out), or why there is none."""
    for key in ("killed", "crashed", "refused"):
        if key in run:
            return run[key]
    extra = run.get("extra", {})
    if "proven_unreachable" in extra:
        return "proven unreachable: " + extra["proven_unreachable"]
    text = f"{run['verified']}/{run['samples']} verified"
    if run.get("timed_out"):
        text += ", timed out"
    if extra.get("check_disagrees"):
        text += f", the bench's check disagrees on {extra['check_disagrees']}"
    return text


def floor_cell(floor: dict[str, Any]) -> str:
    if "torch_fwd_bwd_s" in floor:
        return (f"ORT {1e3 * floor['ort_forward_s']:.1f} ms, torch fwd+bwd "
                f"{1e3 * floor['torch_fwd_bwd_s']:.1f} ms ({floor['converter']})")  # fmt: skip
    return floor.get("torch_error") or floor.get("killed") or floor.get("crashed") or "?"


def progress(*cells: str) -> None:
    print("  " + " | ".join(cells), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Tables

MODEL_HEADER = ("model", "input", "output", "params", "ORT fwd ms", "torch fwd+bwd ms",
                "auto route", "auto s/verified", "best single", "best s/verified",
                "auto/best")  # fmt: skip
RUN_HEADER = ("model", "method", "verified", "s/verified", "wall s", "RSS at start MB",
              "peak RSS MB", "max memory", "outcome")  # fmt: skip


def shape_text(shape: list) -> str:
    return "×".join(str(d) for d in shape)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.3g}"


def spv_text(v: float) -> str:
    return "-" if math.isinf(v) or math.isnan(v) else f"{v:.3g}"


def ratio_text(v: float) -> str:
    if math.isnan(v):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.3g}x"


def model_cells(row: dict[str, Any]) -> list[str]:
    floor, runs = row["floor"], row["runs"]
    best = row["best_single"]
    return [
        row["model"],
        shape_text(row["input"]),
        shape_text(row["output"]),
        f"{row['params']:,}",
        ms(floor.get("ort_forward_s")),
        ms(floor.get("torch_fwd_bwd_s")),
        row["route"],
        spv_text(seconds_per_verified(runs.get("auto"))),
        best or "-",
        spv_text(seconds_per_verified(runs.get(best))) if best else "-",
        ratio_text(row["auto_vs_best"]),
    ]


def run_cells(model: str, method: str, run: dict[str, Any], max_memory: str | None) -> list[str]:
    reason = outcome(run).replace("|", "/")
    if len(reason) > REASON_WIDTH:
        reason = reason[: REASON_WIDTH - 1] + "…"
    verified = "-" if "verified" not in run else f"{run['verified']}/{run['samples']}"
    return [
        model,
        method,
        verified,
        spv_text(seconds_per_verified(run)),
        f"{run['wall']:.1f}",
        "-" if run.get("rss_before_mb") is None else f"{run['rss_before_mb']:.0f}",
        f"{run['peak_rss_mb']:.0f}",
        max_memory or "default",
        reason,
    ]


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    models_table = markdown(MODEL_HEADER, [model_cells(r) for r in rows])
    run_rows = [run_cells(r["model"], m, run, args.max_memory)
                for r in rows for m, run in r["runs"].items()]  # fmt: skip
    size = "small" if args.small else "full"
    return (
        f"Real sizes ({size} builds), bounds {args.bounds}, timeout {args.timeout:g} s per run, "
        f"seed {args.seed}, {args.threads} thread(s); s/verified is the wall time of "
        "`invert` over the verified samples; peak RSS is each run's own process.\n\n"
        + models_table
        + "\n\n"
        + markdown(RUN_HEADER, run_rows)
    )


# ---------------------------------------------------------------------------------------------
# Command line


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as the strings "n/a" and "inf" (strict JSON)."""
    from bench.common import json_number

    if isinstance(obj, float):
        return json_number(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    models = load_models_module()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=models.MODELS, default=list(models.MODELS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS),
                    help="onnxinv methods, each run alone (default: %(default)s)")  # fmt: skip
    ap.add_argument("--samples", type=int, help=f"samples per run (default {DEFAULT_SAMPLES}; "
                    + ", ".join(f"{k} {v}" for k, v in SAMPLES.items()) + ")")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                    help="onnxinv's --timeout per run, s (default %(default)g; the process is "
                    "killed at timeout + max(60, timeout))")  # fmt: skip
    ap.add_argument("--max-memory", help="onnxinv's --max-memory, e.g. 8G (default: onnxinv's)")
    ap.add_argument("--model-dir", type=Path, help="where the models are built or cached "
                    "(default OUT/models)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "real_sizes")
    ap.add_argument("--small", action="store_true", help="the tiny builds (for tests)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads in every process")
    args = ap.parse_args(argv)
    args.bounds = "0,1"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(json.loads(argv[1]))
        return 0
    t0 = time.perf_counter()
    args = parse_args(argv)
    models = load_models_module()
    import torch

    torch.set_num_threads(args.threads)
    from bench.common import machine_facts

    model_dir = args.model_dir or args.out / "models"
    built = models.build_all(args.models, model_dir, args.small, log=lambda s: progress(s))
    rows = [measure_model(b, args, models) for b in built]
    text = render(rows, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_sizes.md").write_text(text + "\n")
    dump = {
        "machine": machine_facts(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": rows,
        "seconds": time.perf_counter() - t0,
    }
    (args.out / "real_sizes.json").write_text(json.dumps(finite(dump), indent=1, default=str))
    print(text)
    print(f"\nwrote {args.out / 'real_sizes.md'} and real_sizes.json "
          f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
