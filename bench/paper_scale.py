"""Paper scale: every method on the same targets, as one Markdown table and the paper's figure.

    python bench/paper_scale.py [--quick] [--models ...] [--samples N] [--out DIR]

For each model and each method, the same targets with the same seed and bounds
:data:`common.BOUNDS`: every class at 0.9 (the rest 0.1/9) and a few validation images' own
outputs (reachable by construction). Methods: onnxinv's ``auto``, ``backward`` (where the model
is one invertible block, else n/a), ``forward`` and ``gd``; the paper's BackPassInv and
ForwardPassInv; scipy's ``least_squares`` one sample at a time; ART's MIFace. Every sample is
judged by :func:`common.check`. Writes ``DIR/paper_scale.md`` (also printed),
``DIR/paper_scale.png`` (rows: model and method, columns: classes) and ``DIR/paper_scale.json``,
then the measurements issue 13 asks for: the backward pass's verified samples/s at ``--samples``
on the fully connected models, the ViTs' verified share within 30 LM iterations against the
floor their own cost sets, and peak memory of ``auto`` as N grows (fresh processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import baselines, scale
from bench import paper_scale_report as report
from bench.backward_table import run_paper
from bench.common import (
    BOUNDS,
    MODELS_DIR,
    ROOT,
    Case,
    Record,
    check,
    mean_pairwise_distance,
    output_target,
    progress,
    run_onnxinv,
)
from bench.nearest import data_set, nearest_distances, training_images, validation
from bench.paper_backward import one_invertible_block
from bench.paper_forward import torch_model

FASHION_MODELS = ("fashion_1layer", "fashion_2layer", "fashion_6layer", "fashion_vit")
DIGITS_MODELS = ("digits_1layer", "digits_2layer", "digits_6layer")
CONFIDENCE = 0.9  # the paper's targets: this for the class, the rest shared evenly
VIT_MAX_ITER = 30  # the paper's LM budget for its ViTs
WARM_UP_TIMEOUT = 2.0  # seconds: the warm-up is for imports and conversions, not results
RATE_TIMEOUT = 30.0  # seconds at most for each backward-pass throughput run
TINY_SAMPLES = 2  # per target (every class at 0.9, two real outputs) on the ViT-tiny


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: ``--quick`` or full."""

    models: tuple[str, ...]
    samples: int  # the backward pass's throughput run
    cell_samples: int  # per target, fast methods
    slow_samples: int  # per target, scipy (one sample at a time)
    reals: int  # validation images whose outputs are targets
    timeout: float  # per method and target, seconds
    slow_timeout: float  # the same for gd, scipy and MIFace
    vit_samples: int  # per class target, the ViTs' 30-iteration run
    memory_sizes: tuple[int, ...]
    quick: bool


def default_models(quick: bool) -> tuple[str, ...]:
    """The Fashion-MNIST models when they are there, else the 8x8 digits models."""
    files = [MODELS_DIR / f"{m}.onnx" for m in FASHION_MODELS] + [MODELS_DIR / "fashion_val.npz"]
    fashion = all(f.exists() for f in files)
    models = FASHION_MODELS if fashion else DIGITS_MODELS
    return models[1:2] if quick else models


def plan_for(args: argparse.Namespace) -> Plan:
    quick = Plan(default_models(True), 1024, 8, 2, 1, 10.0, 4.0, 4, (2500, 5000), True)
    full = Plan(default_models(False), 4096, 16, 2, 2, 8.0, 4.0, 8, (2500, 20000, 100000), False)
    plan = quick if args.quick else full
    changes = {
        "models": tuple(args.models) if args.models else None,
        "samples": args.samples,
        "cell_samples": args.cell_samples,
        "slow_samples": args.slow_samples,
        "timeout": args.timeout,
        "slow_timeout": args.slow_timeout,
    }
    return dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# Methods


Run = Callable[[Case, float], Record]


@dataclass(frozen=True)
class Entry:
    """A method of the table. ``slow`` ones get the shorter timeout; ``few`` ones (that solve
    one sample at a time) also fewer samples; ``quick`` ones run in --quick."""

    name: str
    run: Run
    slow: bool = False
    few: bool = False
    quick: bool = True


def onnxinv_method(method: str, **options: Any) -> Run:
    """``common.run_onnxinv`` with the cell's timeout; ``extra["timed_out"]`` set."""

    def run(case: Case, timeout: float) -> Record:
        rec = run_onnxinv(case, method, timeout=timeout, **options)
        notes = rec.extra.get("notes", [])
        rec.extra["timed_out"] = rec.seconds >= timeout or any("timed out" in n for n in notes)
        return rec

    return run


def run_backward(case: Case, timeout: float) -> Record:
    """onnxinv's backward pass where the model is one invertible block; n/a elsewhere."""
    if one_invertible_block_cached(str(case.model_path)) is None:
        return not_applicable("backward", case, "the model is not one invertible block")
    return onnxinv_method("backward")(case, timeout)


def run_paper_backward(case: Case, timeout: float) -> Record:
    """``backward_table.run_paper`` (the paper's BackPassInv; it has no time limit)."""
    rec = run_paper(case)
    rec.method = "paper-backward"
    return rec


@functools.cache
def one_invertible_block_cached(model_path: str):
    return one_invertible_block(model_path)


def not_applicable(method: str, case: Case, why: str) -> Record:
    nan = math.nan
    return Record(method, case.samples, 0, 0.0, nan, nan, nan, extra={"not_applicable": why})


ENTRIES: tuple[Entry, ...] = (
    Entry("auto", onnxinv_method("auto")),
    Entry("backward", run_backward),
    Entry("forward", onnxinv_method("forward")),
    Entry("gd", onnxinv_method("gd"), slow=True, quick=False),
    Entry("paper-backward", run_paper_backward),
    Entry("paper-forward", baselines.run_paper_forward),
    Entry("scipy-lsq", baselines.run_least_squares, slow=True, few=True, quick=False),
    Entry("miface", baselines.run_miface, slow=True, quick=False),
)


def entries_for(plan: Plan, names: Sequence[str] | None = None) -> list[Entry]:
    """The methods of this run: ``names`` (default all; --quick: the cheap ones); MIFace is
    left out with a printed reason when ART is missing."""
    out = [e for e in ENTRIES if (e.name in names if names else e.quick or not plan.quick)]
    why = baselines.art_available()
    if why and any(e.name == "miface" for e in out):
        print(f"skipping miface: {why}", file=sys.stderr)
        out = [e for e in out if e.name != "miface"]
    return out


# ---------------------------------------------------------------------------------------------
# Targets and the table's runs


@dataclass
class Cell:
    """One method on one (model, target)."""

    model: str
    target: str
    kind: str  # "class" (CONFIDENCE for one class) or "real" (a validation image's output)
    label: int  # the class, or the image's label
    record: Record
    errors: np.ndarray  # common.check's error of every returned sample


def targets(
    model_name: str, reals: int, path: Path | None = None
) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(name, kind, label, target dict): every class at :data:`CONFIDENCE`, then the outputs
    of the first ``reals`` validation images (the model file: ``path``, default bundled)."""
    path = path or MODELS_DIR / f"{model_name}.onnx"
    x, y = validation(data_set(model_name))
    out = [(f"class {k}", "class", k, {"class": k, "confidence": CONFIDENCE}) for k in range(10)]
    for i in range(reals):
        out.append((f"real #{i}", "real", int(y[i]), output_target(path, x[i])))
    return out


def run_cell(entry: Entry, case: Case, timeout: float) -> Record:
    """``entry.run``; any exception is a record with ``extra["error"]`` (printed), so one
    failing method does not end the benchmark."""
    try:
        return entry.run(case, timeout)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        print(f"ERROR {case.model_name} {case.target_name} {entry.name}: {exc}", file=sys.stderr)
        rec = not_applicable(entry.name, case, "")
        rec.extra = {"error": f"{type(exc).__name__}: {exc}"}
        return rec


def run_table(plan: Plan, entries: Sequence[Entry], seed: int = 0) -> list[Cell]:
    """Every entry on every model's targets. Untimed first: one tiny run per entry on the first
    model (imports, first calls), and each model's torch conversion for the baselines."""
    cells = []
    for i, model in enumerate(plan.models):
        path = MODELS_DIR / f"{model}.onnx"
        torch_model(str(path))
        warm = Case(model, path, "warm-up", {"class": 0, "confidence": 0.5}, 2, seed)
        for e in entries if i == 0 else ():
            run_cell(e, warm, WARM_UP_TIMEOUT)
        for name, kind, label, spec in targets(model, plan.reals):
            for e in entries:
                n = plan.slow_samples if e.few else plan.cell_samples
                case = Case(model, path, name, spec, n, seed, BOUNDS)
                rec = run_cell(e, case, plan.slow_timeout if e.slow else plan.timeout)
                errors = np.zeros(0) if rec.inputs is None else check(case, rec.inputs)[0]
                cells.append(Cell(model, name, kind, label, rec, errors))
                progress(f"{model:<15} {name:<9} {e.name:<15}", report.verified_cell([rec]))
    return cells


# ---------------------------------------------------------------------------------------------
# Rows: one per (model, method)


def summarize(cells: Sequence[Cell]) -> list[dict[str, Any]]:
    """One row per (model, method), in run order.

    Targets some onnxinv method proved unreachable on a model are left out of every method's
    verified fraction there (a proof is about the target, not the method). ``vs_auto`` is the
    method's time per verified sample over ``auto``'s on the same model in the same run.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    by_row: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        by_row.setdefault((c.model, c.record.method), []).append(c)
    for (model, method), group in by_row.items():
        proven = {c.target for c in cells if c.model == model and _proven(c.record)}
        recs = [c.record for c in group]
        live = [c for c in group if c.target not in proven]
        errors = np.concatenate([c.errors for c in group])
        verified = [c.record.verified_inputs() for c in group if c.record.verified]
        seconds, n_ok = sum(r.seconds for r in recs), sum(r.verified for r in recs)
        pairwise = [mean_pairwise_distance(v) for v in verified if len(v) > 1]
        rows[model, method] = {
            "model": model,
            "method": method,
            "class": _share([c for c in live if c.kind == "class"]),
            "real": _share([c for c in live if c.kind == "real"]),
            "proven": sum(_proven(r) for r in recs),
            "not_applicable": all("not_applicable" in r.extra for r in recs),
            "errors": [r.extra["error"] for r in recs if "error" in r.extra],
            "median_error": float(np.median(errors)) if len(errors) else math.nan,
            "worst_error": float(errors.max()) if len(errors) else math.nan,
            "seconds": seconds,
            "verified": n_ok,
            "seconds_per_verified": seconds / n_ok if n_ok else math.inf,
            "iterations": _mean_iterations(recs),
            "pairwise": float(np.mean(pairwise)) if pairwise else math.nan,
            "nearest_train": _mean_nearest(model, verified),
            "own": _own(recs),
        }
    for row in rows.values():
        auto = rows.get((row["model"], "auto"))
        row["vs_auto"] = _ratio(row, auto)
    return list(rows.values())


def reference_rows(models: Sequence[str], per_class: int = 50) -> list[dict[str, Any]]:
    """Per data set, what real images give: the mean pairwise distance between validation
    images of one class (first ``per_class`` of each), and their distance to the nearest
    training image."""
    out = []
    for name in dict.fromkeys(data_set(m) for m in models):
        x, y = validation(name)
        chosen = [x[y == k][:per_class] for k in np.unique(y)]
        pick = np.concatenate(chosen)
        out.append(
            {
                "data_set": name,
                "pairwise": float(np.mean([mean_pairwise_distance(v) for v in chosen])),
                "nearest_train": float(nearest_distances(pick, training_images(name)).mean()),
                "images": len(pick),
            }
        )
    return out


def _proven(rec: Record) -> bool:
    return "proven_unreachable" in rec.extra


def _share(cells: Sequence[Cell]) -> dict[str, Any]:
    return _share_of([c.record for c in cells])


def _share_of(recs: Sequence[Record]) -> dict[str, Any]:
    """Verified and returned samples, timed-out and applicable targets."""
    recs = [r for r in recs if "not_applicable" not in r.extra]
    return {
        "verified": sum(r.verified for r in recs),
        "samples": sum(r.samples for r in recs),
        "timeouts": sum(bool(r.extra.get("timed_out")) for r in recs),
        "targets": len(recs),
    }


def _mean_iterations(recs: Sequence[Record]) -> float:
    pairs = [(r.extra["mean_iterations"], r.samples) for r in recs if "mean_iterations" in r.extra]
    pairs = [(m, n) for m, n in pairs if not math.isnan(m)]
    if not pairs:
        return math.nan
    return sum(m * n for m, n in pairs) / sum(n for _, n in pairs)


def _mean_nearest(model: str, verified: Sequence[np.ndarray]) -> float:
    if not verified:
        return math.nan
    x = np.concatenate([v.reshape(len(v), -1) for v in verified])
    return float(nearest_distances(x, training_images(data_set(model))).mean())


def _own(recs: Sequence[Record]) -> dict[str, int] | None:
    own = [r for r in recs if "own_ok" in r.extra]
    if not own:
        return None
    return {"ok": sum(r.extra["own_ok"] for r in own), "samples": sum(r.samples for r in own)}


def _ratio(row: dict[str, Any], auto: dict[str, Any] | None) -> float:
    """``row``'s seconds per verified sample over ``auto``'s (nan where either has none)."""
    if auto is None or not row["verified"] or not auto["verified"]:
        return math.nan
    return row["seconds_per_verified"] / auto["seconds_per_verified"]


# ---------------------------------------------------------------------------------------------
# The measurements the targets ask for


def backward_rate(plan: Plan, rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict]:
    """Per fully connected model (one invertible block): the backward pass's verified
    samples/s at ``plan.samples`` on class 0 at 0.9 (at most :data:`RATE_TIMEOUT` s: the rate
    is then of what verified by then), and its time per verified sample against gd's and
    MIFace's in the table (same run)."""
    out = []
    for model in plan.models:
        path = MODELS_DIR / f"{model}.onnx"
        if one_invertible_block_cached(str(path)) is None:
            continue
        base = {r["method"]: r for r in rows if r["model"] == model}
        for name, _, _, spec in targets(model, 0)[:1]:
            case = Case(model, path, name, spec, plan.samples, seed, BOUNDS)
            rec = onnxinv_method("backward")(case, RATE_TIMEOUT)
            rate = rec.verified / rec.seconds if rec.seconds else math.nan
            row = {"model": model, "target": name, "samples": plan.samples,
                   "verified": rec.verified, "seconds": rec.seconds, "rate": rate,
                   "timed_out": rec.extra["timed_out"]}  # fmt: skip
            for other in ("gd", "miface"):
                spv = base.get(other, {}).get("seconds_per_verified", math.nan)
                row[f"vs_{other}"] = spv * rate if rate else math.nan
            own = base.get("miface", {}).get("own")  # MIFace judged by its own criterion
            row["vs_miface_own"] = (
                base["miface"]["seconds"] / own["ok"] * rate if own and own["ok"] and rate
                else math.nan
            )  # fmt: skip
            out.append(row)
            progress(f"{model:<15} {name:<9} backward x{plan.samples}", f"{rate:.0f} verified/s")
    return out


def model_cost(model_path: str, batch: int, repeats: int = 3) -> float:
    """Seconds of one forward pass and one backward pass per output at ``batch`` (torch,
    float64 as the forward pass computes), the fastest of ``repeats``."""
    import torch

    from bench.paper_forward import jacobian, torch_model

    module, shape = torch_model(model_path)
    x = torch.rand(batch, math.prod(shape), dtype=torch.float64)
    jacobian(module, x, shape)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jacobian(module, x, shape)
        times.append(time.perf_counter() - t0)
    return min(times)


def vit_floor(
    model: str, path: Path, samples: int, timeout: float, names: Sequence[str] | None = None,
    seed: int = 0,
) -> dict:  # fmt: skip
    """onnxinv's forward pass with one attempt of :data:`VIT_MAX_ITER` LM iterations on every
    class at 0.9 and the first two real outputs (or the targets ``names``), ``samples`` each,
    and the floor the model's own cost sets: one forward and one backward pass per output, at
    batch = the chunk solved together, per iteration."""
    from onnxinv.settings import Settings

    chunk = min(Settings().chunk_size, samples)
    recs = {"class": [], "real": []}
    for name, kind, _, spec in targets(model, 2, path):
        if names is not None and name not in names:
            continue
        case = Case(model, path, name, spec, samples, seed, BOUNDS)
        run = onnxinv_method("forward", max_iter=VIT_MAX_ITER, restarts=0)
        recs[kind].append(run_cell(Entry("forward", run), case, timeout))
        progress(f"{model:<15} {name:<9} forward, {VIT_MAX_ITER} iterations",
                 report.verified_cell(recs[kind][-1:]))  # fmt: skip
    cost = model_cost(str(path), chunk)
    every = recs["class"] + recs["real"]
    solve = sum(r.solve_seconds for r in every if not math.isnan(r.solve_seconds))
    per_sample = cost * math.ceil(samples / chunk) / samples  # one iteration, per sample
    iterations = _mean_iterations(every)
    return {
        "model": model,
        "class": _share_of(recs["class"]),
        "real": _share_of(recs["real"]),
        "verified": sum(r.verified for r in every),
        "samples": sum(r.samples for r in every),
        "seconds": sum(r.seconds for r in every),
        "solve_seconds": solve,
        "chunk": chunk, "cost": cost, "iterations": iterations,
        "floor": VIT_MAX_ITER * per_sample,
        "floor_used": iterations * per_sample,
        "timeouts": sum(bool(r.extra.get("timed_out")) for r in every),
    }  # fmt: skip


def vit_tiny(arg: str | None, out: Path) -> Path | None:
    """The ViT-tiny: ``arg`` (a path), else ``models/fashion_vit_tiny.onnx`` or one written
    earlier to ``out``, else written now by ``models/fashion.py``; None for ``--vit-tiny none``."""
    if arg == "none":
        return None
    if arg:
        return Path(arg)
    for path in (MODELS_DIR / "fashion_vit_tiny.onnx", out / "fashion_vit_tiny.onnx"):
        if path.exists():
            return path
    sys.path.insert(0, str(MODELS_DIR))
    from fashion import write_vit_tiny

    t0 = time.perf_counter()
    write_vit_tiny(out / "fashion_vit_tiny.onnx")
    print(f"wrote {out / 'fashion_vit_tiny.onnx'} in {time.perf_counter() - t0:.0f} s")
    return out / "fashion_vit_tiny.onnx"


def memory(plan: Plan, out: Path) -> dict:
    """``auto`` on the run's 2-layer model, class 0 at 0.9, each N in a fresh process
    (``scale.measure``): verified, seconds, verified/s and peak RSS."""
    model = "fashion_2layer" if data_set(plan.models[0]) == "fashion" else "digits_2layer"
    target = out / "memory_target.json"
    target.write_text(json.dumps({"class": 0, "confidence": CONFIDENCE}))
    rows = []
    for n in plan.memory_sizes:
        rows.append(scale.measure(str(MODELS_DIR / f"{model}.onnx"), str(target), "auto", n))
        progress(f"{model:<15} auto x{n}", f"{rows[-1]['peak_mb']:.0f} MB peak")
    return {"model": model, "target": "class 0", "rows": rows}


# ---------------------------------------------------------------------------------------------
# Command line


def limit_threads(n: int) -> None:
    """``n`` threads for torch and the BLAS here, and (by environment) in child processes."""
    import os

    import torch
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    threadpool_limits(n)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one model, few samples, cheap methods")
    ap.add_argument("--models", nargs="+", help="bundled model names (default: the Fashion-MNIST "
                    "models when present, else the digits ones)")  # fmt: skip
    ap.add_argument("--samples", type=int, help="backward-pass throughput run (4096; quick 1024)")
    ap.add_argument("--cell-samples", type=int, help="per target, fast methods (16; quick 8)")
    ap.add_argument("--slow-samples", type=int, help="per target, scipy (2; quick 2)")
    ap.add_argument("--timeout", type=float, help="per method and target, s (8; quick 10)")
    ap.add_argument("--slow-timeout", type=float, help="the same for gd/scipy/MIFace (5; quick 4)")
    ap.add_argument("--methods", nargs="+", choices=[e.name for e in ENTRIES])
    ap.add_argument("--vit-tiny", help="ViT-tiny ONNX file, or 'none' (default: written by "
                    "models/fashion.py when the run uses the Fashion-MNIST models)")  # fmt: skip
    ap.add_argument("--skip-memory", action="store_true", help="no fresh-process memory runs")
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, here and "
                    "in the memory runs' processes (default 1: on a machine shared with other "
                    "jobs, spinning thread pools slow small steps many-fold)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/paper_scale"))
    ap.add_argument("--readme", action="store_true", help="also rewrite bench/README.md's "
                    "paper-scale section and docs/paper_scale.png with this run's")  # fmt: skip
    return ap.parse_args(argv)


README = ROOT / "bench" / "README.md"  # the measured tables live here, not in the main README
README_MARKS = ("<!-- paper_scale:start -->", "<!-- paper_scale:end -->")


def update_readme(text: str, figure: Path, readme: Path = README) -> None:
    """``readme``'s paper-scale section becomes ``text``, its figure ``figure``'s copy in
    ``docs/``, linked relative to ``readme`` (the section is the command's output, never typed)."""
    from bench.readme_section import replace_section

    docs = ROOT / "docs"
    shutil.copyfile(figure, docs / figure.name)
    link = Path(os.path.relpath(docs, readme.parent)).as_posix()
    text = text.replace(f"]({figure.name})", f"]({link}/{figure.name})")
    replace_section(readme, *README_MARKS, text)


def main(argv: list[str] | None = None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    plan = plan_for(args)
    limit_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = entries_for(plan, args.methods)
    print(f"models {' '.join(plan.models)}; methods {' '.join(e.name for e in entries)}",
          file=sys.stderr)  # fmt: skip
    cells = run_table(plan, entries, args.seed)
    rows = summarize(cells)
    refs = reference_rows(plan.models)
    extras: dict[str, Any] = {"rate": backward_rate(plan, rows, args.seed), "vit": []}
    vits = [(m, MODELS_DIR / f"{m}.onnx") for m in plan.models if "vit" in m]
    if data_set(plan.models[0]) == "fashion" and (args.vit_tiny or not plan.quick):
        tiny = vit_tiny(args.vit_tiny, args.out)
        vits += [] if tiny is None else [("fashion_vit_tiny", tiny)]
    for model, path in vits:
        tiny = model == "fashion_vit_tiny"  # ~25x the small ViT's cost: fewer samples
        n = TINY_SAMPLES if tiny else plan.vit_samples
        extras["vit"].append(vit_floor(model, path, n, plan.timeout * 6, None, args.seed))
    extras["memory"] = None if args.skip_memory else memory(plan, args.out)
    report.figure(cells, plan.models, args.out / "paper_scale.png")
    text = report.render(rows, refs, extras, plan, args, time.perf_counter() - t0)
    (args.out / "paper_scale.md").write_text(text)
    dump = report.to_json(cells, rows, refs, extras)
    (args.out / "paper_scale.json").write_text(json.dumps(dump, indent=1, default=str))
    print(text)
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.readme:
        update_readme(text, args.out / "paper_scale.png")
        print("bench/README.md's paper-scale section and docs/paper_scale.png rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
