"""Sweeps: every (model, class) pair inverted, on this machine's cores or on a Ray cluster.

Each pair is one task: :func:`run_pair` inverts a model for ``{"class": k, "confidence": c}``
and *returns* the result (arrays and report); it writes nothing. The driver (:func:`sweep`)
writes each pair's shard ``OUT/<model>/class_<k>/`` with :func:`onnxinv.write.folder.save` (a
temporary folder renamed into place) as results come in, so an interrupted sweep keeps every
finished pair, a rerun skips them, and Ray workers need no shared filesystem. At the end it
writes ``summary.json``, ``summary.md`` and ``figure.png`` from all the sweep's shards.

A pair whose target is out of reach is a result, not a failure: its shard holds what the
solvers returned (nothing when a proof came first) and its report says why. A task that
raises or whose process dies is run once more; if it fails again the pair has no shard (a
rerun retries it) and its row says ``failed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OnnxInvError, OptionError, OutputExistsError, TargetError
from ..errors import UnreachableTargetError as Unreachable
from ..load import model as model_mod
from ..load.repair import first_line
from ..result import InversionResult
from ..settings import Settings, positive_int
from ..solvers.registry import check_method
from ..target import DEFAULT_TOLERANCE, Target
from ..write.folder import check_destination, save

RETRIES = 1  # extra attempts a failed task gets (Ray's max_retries, a re-submission locally)
MARKER = "sweep.json"  # what makes a folder a sweep's: written before the first shard
SUMMARY_COLUMNS = (
    "model", "class", "verified", "proven unreachable", "median error", "worst error",
    "seconds", "samples/s", "note",
)  # fmt: skip


# -- one pair ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One task: invert ``path`` (named ``model``) for class ``cls`` at ``confidence``."""

    index: int
    model: str
    path: str
    model_sha256: str
    cls: int
    confidence: float
    tolerance: float
    settings: Settings

    @property
    def shard(self) -> str:
        """The shard's folder, relative to the sweep's."""
        return f"{self.model}/class_{self.cls}"

    def target(self) -> dict[str, Any]:
        return {"class": self.cls, "confidence": self.confidence, "tolerance": self.tolerance}

    def request(self) -> dict[str, Any]:
        """What the shard answers; a shard written for another request is not reused."""
        return _jsonable(
            {
                "model_sha256": self.model_sha256,
                "target": self.target(),
                "settings": self.settings.report(),
            }
        )


@dataclass
class ShardResult(InversionResult):
    """An :class:`InversionResult` whose report.json also says how the pair ended (``sweep``)."""

    sweep: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {**super().report(), "sweep": self.sweep}


def run_pair(
    pair: Pair, model: bytes | None = None, on_progress: Callable[[int], None] | None = None
) -> ShardResult:
    """Invert one pair (``model``: the file's bytes where the path is not readable, on Ray).

    An unreachable or not-reached target is returned as a result with no verified sample;
    every other error is raised (the caller retries the task once).
    """
    from ..api import invert

    t0 = time.perf_counter()
    source = model if model is not None else pair.path
    proven, reason = False, None
    try:
        result = invert(source, pair.target(), pair.settings, on_progress=on_progress)
        status = "solved" if result.all_verified else "partial"
        if not result.all_verified:
            reason = f"{result.n_verified} of {len(result)} samples verified"
    except Unreachable as exc:
        proven, reason = exc.proven, first_line(exc)
        status = "unreachable" if proven else "not reached"
        result = exc.result if exc.result is not None else _nothing(source, pair)
    result.model["name"] = pair.model
    outcome = {
        "model": pair.model,
        "class": pair.cls,
        "confidence": pair.confidence,
        "status": status,
        "reason": reason,
        "proven_unreachable": proven,
        "seconds": time.perf_counter() - t0,
        "request": pair.request(),
    }
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(InversionResult)}
    return ShardResult(**fields, sweep=outcome)


def _nothing(source: str | bytes, pair: Pair) -> InversionResult:
    """An empty result (no samples) for a target proven unreachable before any was solved."""
    from ..api import model_facts

    s = pair.settings
    loaded = model_mod.load(
        source, input=s.input, output=s.output, fixed=s.fixed, input_shape=s.input_shape
    )
    target = Target.from_dict(pair.target())
    return InversionResult(
        inputs=np.zeros((0, *loaded.input_shape), dtype=loaded.input_dtype),
        outputs=np.zeros((0, *loaded.output_shape), dtype=np.float32),
        verified=np.zeros(0, dtype=bool),
        errors=np.zeros(0),
        iterations=np.zeros(0, dtype=np.int64),
        methods=[],
        target=target,
        target_array=target.resolve(loaded.output_shape),
        input_shape=tuple(loaded.input_shape),
        bounds=s.bounds,
        settings={**s.report(), "tolerance": target.tolerance},
        model=model_facts(loaded),
        notes=list(loaded.notes),
    )


# -- the summary ---------------------------------------------------------------------------------


@dataclass
class SweepRow:
    """One pair's line of the summary.

    ``median_error``/``worst_error`` are over every returned sample (verified or not), so a
    target not reached shows how far the solvers got; ``samples_per_second`` counts verified
    samples over the task's wall time (loading included). ``reused``: the shard was written by
    an earlier run and skipped by this one.
    """

    model: str
    cls: int
    requested: int
    verified: int
    proven_unreachable: bool
    median_error: float | None
    worst_error: float | None
    seconds: float | None
    samples_per_second: float | None
    status: str
    reason: str | None
    shard: str | None
    reused: bool = False

    @classmethod
    def from_report(cls, pair: Pair, report: dict[str, Any], reused: bool) -> SweepRow:
        errors = [row["max_error"] for row in report["samples"]]
        outcome, verified = report["sweep"], report["totals"]["verified"]
        seconds = outcome["seconds"]
        return cls(
            model=pair.model,
            cls=pair.cls,
            requested=pair.settings.samples,
            verified=verified,
            proven_unreachable=outcome["proven_unreachable"],
            median_error=float(np.median(errors)) if errors else None,
            worst_error=float(np.max(errors)) if errors else None,
            seconds=seconds,
            samples_per_second=verified / seconds if seconds > 0 else None,
            status=outcome["status"],
            reason=outcome["reason"],
            shard=pair.shard,
            reused=reused,
        )

    @classmethod
    def failed(cls, pair: Pair, reason: str) -> SweepRow:
        return cls(
            pair.model, pair.cls, pair.settings.samples, 0, False, None, None, None, None,
            "failed", reason, None,
        )  # fmt: skip

    def cells(self) -> list[str]:
        """The row as the summary table's text cells."""

        def num(v: float | None, fmt: str) -> str:
            return "–" if v is None else format(v, fmt)

        note = self.status if self.reason is None else f"{self.status}: {self.reason}"
        return [
            self.model,
            str(self.cls),
            f"{self.verified}/{self.requested}",
            "yes" if self.proven_unreachable else "no",
            num(self.median_error, ".2g"),
            num(self.worst_error, ".2g"),
            num(self.seconds, ".2f"),
            num(self.samples_per_second, ".0f"),
            note.replace("|", "/") + (" (earlier run)" if self.reused else ""),
        ]


@dataclass
class SweepSummary:
    """What :func:`sweep` returns: one :class:`SweepRow` per pair (it iterates over them)."""

    rows: list[SweepRow]
    out: Path
    seconds: float
    figure: Path | None = None

    def __iter__(self) -> Iterator[SweepRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> SweepRow:
        return self.rows[i]

    @property
    def computed(self) -> list[SweepRow]:
        """Pairs this run solved and wrote (not reused, not failed)."""
        return [r for r in self.rows if not r.reused and r.status != "failed"]

    @property
    def reused(self) -> list[SweepRow]:
        return [r for r in self.rows if r.reused]

    @property
    def failed(self) -> list[SweepRow]:
        return [r for r in self.rows if r.status == "failed"]

    @property
    def all_verified(self) -> bool:
        return all(r.verified == r.requested for r in self.rows)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |"]
        lines.append("|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|")
        lines += ["| " + " | ".join(row.cells()) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "pairs": len(self.rows),
            "computed": len(self.computed),
            "reused": len(self.reused),
            "failed": len(self.failed),
            "rows": [
                {("class" if k == "cls" else k): v for k, v in dataclasses.asdict(r).items()}
                for r in self.rows
            ],
        }

    def line(self) -> str:
        """One line: how many pairs ended how, and where."""
        counts: dict[str, int] = {}
        for r in self.rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        parts = ", ".join(f"{n} {status}" for status, n in counts.items())
        reused = f"; {len(self.reused)} from an earlier run" if self.reused else ""
        return f"{len(self.rows)} pairs: {parts}{reused} in {self.seconds:.1f} s -> {self.out}"


# -- the driver ----------------------------------------------------------------------------------


def sweep(
    models: Sequence[str | os.PathLike] | str | os.PathLike,
    classes: str | Iterable[int] = "all",
    confidence: float = 0.9,
    samples: int | None = None,
    out: str | os.PathLike = "runs/sweep",
    workers: int | None = None,
    ray: str | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = False,
    progress: bool = False,
    settings: Settings | None = None,
    task: Callable[..., ShardResult] | None = None,
    **options: Any,
) -> SweepSummary:
    """Invert every model for every class at ``confidence`` and write one folder.

    Args:
        models: .onnx paths; each model's shards go to ``out/<file stem>/``.
        classes: ``"all"`` (every class of each model's output), a list of class indices or
            ``"0,3,7"``.
        confidence: the class's probability; the other classes share the rest evenly.
        samples: inputs per pair (default: the settings', 16).
        out: the sweep's folder. Pairs already written there for the same request are skipped.
        workers: processes on this machine (default ``os.cpu_count()``; 1 runs the pairs in
            this process); with ``ray``, the most tasks in flight (default: all).
        ray: ``"auto"``, the head's ``"HOST:PORT"`` (or ``"ray://HOST:PORT"`` with Ray
            Client installed): run the tasks on that existing Ray cluster, or on the one this
            process is already connected to.
        tolerance: the targets' tolerance.
        overwrite: redo every pair, replacing its shard.
        progress: show a progress bar on stderr.
        settings, **options: the runs' :class:`~onnxinv.settings.Settings` (as for
            :func:`onnxinv.invert`).
        task: the function run per pair instead of :func:`run_pair` (same signature; the
            workers must be able to unpickle it), for wrapping it.

    Returns:
        A :class:`SweepSummary` (rows in model, then class order).

    Raises:
        OnnxInvError: one line, before anything is written, for a bad model, class,
            confidence, option, output folder or Ray address.
    """
    t0 = time.perf_counter()
    task = task or run_pair
    if samples is not None:
        options["samples"] = samples
    s = Settings.create(settings, **options)
    check_method(s.method)
    if workers is not None:
        workers = positive_int("workers", workers)
    pairs, models_info = _plan(models, classes, confidence, tolerance, s)
    out = check_destination(out, overwrite=True)  # a file in the way is an error
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file() and not overwrite:
        raise OutputExistsError(
            f"output folder {out} is not empty and holds no sweep; pass --overwrite to write "
            "into it anyway"
        )
    rows: dict[int, SweepRow] = {}
    todo = []
    for pair in pairs:
        report = None if overwrite else _read_shard(out, pair)
        if report is None:
            todo.append(pair)
        else:
            rows[pair.index] = SweepRow.from_report(pair, report, reused=True)
    with contextlib.ExitStack() as stack:
        if ray is not None and todo:  # connect first: a bad address fails before any write
            finished = _run_ray(_connect_ray(ray, stack), todo, task, models_info, workers)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / MARKER, {"models": models_info, "confidence": confidence,
                                   "tolerance": tolerance, "settings": _jsonable(s.report())})  # fmt: skip
        bar = _Bar(todo, s.samples) if progress and todo else None
        if bar is not None:
            stack.callback(bar.close)
        if ray is None or not todo:
            finished = _run_local(todo, task, workers or os.cpu_count() or 1, bar)
        stack.enter_context(contextlib.closing(finished))
        for pair, outcome in finished:
            if isinstance(outcome, BaseException):
                rows[pair.index] = SweepRow.failed(pair, first_line(outcome))
            else:
                save(outcome, out / pair.shard, overwrite=True)
                rows[pair.index] = SweepRow.from_report(pair, outcome.report(), reused=False)
            if bar is not None:
                bar.finished(pair)
    summary = SweepSummary([rows[p.index] for p in pairs], out, time.perf_counter() - t0)
    summary.figure = _write_figure(out, pairs, summary)
    _write_json(out / "summary.json", summary.to_dict())
    _write_text(out / "summary.md", summary.markdown())
    return summary


def _plan(models, classes, confidence, tolerance, s: Settings) -> tuple[list[Pair], list[dict]]:
    """Every (model, class) pair, validated (models loaded, classes in range), nothing written."""
    if isinstance(models, str | os.PathLike):
        models = [models]
    models = list(models)
    if not models:
        raise OptionError("give at least one model")
    Target.from_dict({"class": 0, "confidence": confidence, "tolerance": tolerance})
    wanted = _classes(classes)
    pairs: list[Pair] = []
    info: list[dict] = []
    seen: dict[str, str] = {}
    for path in map(Path, models):
        loaded = model_mod.load(
            path, input=s.input, output=s.output, fixed=s.fixed, input_shape=s.input_shape
        )
        name = path.stem
        if name in seen:
            raise OptionError(
                f"models {seen[name]} and {path} have the same name {name!r}: their shards "
                "would share a folder; rename one"
            )
        seen[name] = str(path)
        n = loaded.output_size
        for k in range(n) if wanted is None else wanted:
            try:
                Target.from_dict({"class": k, "confidence": confidence}).resolve(
                    loaded.output_shape
                )
            except TargetError as exc:
                raise TargetError(f"{name}: {exc}") from None
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        info.append({"name": name, "path": str(path), "sha256": sha, "classes": n})
        for k in range(n) if wanted is None else wanted:
            pairs.append(Pair(len(pairs), name, str(path), sha, k, confidence, tolerance, s))
    return pairs, info


def _classes(classes: str | Iterable[int]) -> list[int] | None:
    """``"all"`` → None; ``"0,3,7"`` or ``[0, 3, 7]`` → the classes, each once, in order."""
    if isinstance(classes, str):
        if classes.strip() == "all":
            return None
        parts = [p.strip() for p in classes.split(",")]
        if not all(p.isdigit() for p in parts):
            raise OptionError(
                f"classes must be 'all' or class indices such as 0,3,7, not {classes!r}"
            )
        classes = [int(p) for p in parts]
    try:
        ks = list(classes)
    except TypeError:
        raise OptionError(
            f"classes must be 'all' or a list of class indices, not {classes!r}"
        ) from None
    if not ks or not all(
        isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 0 for k in ks
    ):
        raise OptionError(f"classes must be non-negative class indices, not {classes!r}")
    return list(dict.fromkeys(int(k) for k in ks))


def _read_shard(out: Path, pair: Pair) -> dict | None:
    """The report of ``pair``'s shard if an earlier run wrote it for the same request.

    A shard is renamed into place whole, so one that exists is complete. One written for
    another request (other settings, confidence or model file) is an error rather than a
    silent mix.
    """
    path = out / pair.shard / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
        written = report["sweep"]["request"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputExistsError(
            f"{path.parent} is not a sweep shard; pass --overwrite to replace it"
        ) from None
    wanted = pair.request()
    if written != wanted:
        what = _difference(written, wanted)
        raise OutputExistsError(
            f"{path.parent} was written for another request ({what}); pass --overwrite to redo "
            "it, or use another --out"
        )
    return report


def _difference(old: dict, new: dict, prefix: str = "") -> str:
    """The first key whose value differs, as ``key: old, not new``."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _difference(a, b, f"{prefix}{key}.")
            return f"{prefix}{key} {a!r}, not {b!r}"
    return "same"


def _jsonable(obj: Any) -> Any:
    """``obj`` as JSON gives it back (tuples become lists), for comparisons with a report."""
    return json.loads(json.dumps(obj))


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary sibling renamed into place: never half-written."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    _write_atomic(path, lambda p: p.write_text(text))


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2) + "\n")


def _write_figure(out: Path, pairs: list[Pair], summary: SweepSummary) -> Path | None:
    """figure.png: rows models, columns classes, each cell the pair's first verified sample."""
    from ..write.figure import Cell, figure

    models = list(dict.fromkeys(p.model for p in pairs))
    classes = sorted({p.cls for p in pairs})
    cells = {m: {k: Cell(note="–") for k in classes} for m in models}
    for pair, row in zip(pairs, summary.rows, strict=True):
        cells[pair.model][pair.cls] = _cell(out, row)
    image = figure(models, [f"class {k}" for k in classes],
                   [[cells[m][k] for k in classes] for m in models])  # fmt: skip
    path = out / "figure.png"
    _write_atomic(path, lambda p: image.save(p, format="PNG"))
    return path


def _cell(out: Path, row: SweepRow):
    from ..write.figure import Cell

    if row.shard is None or not row.verified:
        return Cell(
            note={"unreachable": "unreachable", "failed": "failed"}.get(row.status, "not reached")
        )
    report = json.loads((out / row.shard / "report.json").read_text())
    first = next(s["index"] for s in report["samples"] if s["verified"])
    inputs = np.load(out / row.shard / "inputs.npy", mmap_mode="r")
    bounds = report["settings"]["bounds"]
    return Cell(np.array(inputs[first]), tuple(report["model"]["input_shape"]),
                None if bounds is None else tuple(bounds))  # fmt: skip


class _Bar:
    """A tqdm bar over the samples of the pairs to run, with the pairs done beside it."""

    def __init__(self, pairs: list[Pair], samples: int):
        from tqdm import tqdm

        self.pairs, self.samples = len(pairs), samples
        self.done = 0
        self.counted: dict[int, int] = {}
        self.tqdm = tqdm(total=len(pairs) * samples, desc="sweep", unit="sample",
                         file=sys.stderr, leave=False)  # fmt: skip
        self.tqdm.set_postfix_str(f"0/{self.pairs} pairs")

    def samples_done(self, index: int, n: int) -> None:
        room = self.samples - self.counted.get(index, 0)
        n = min(n, room)
        if n > 0:
            self.counted[index] = self.counted.get(index, 0) + n
            self.tqdm.update(n)

    def finished(self, pair: Pair) -> None:
        self.samples_done(pair.index, self.samples)  # what was not reported (dropped, failed)
        self.done += 1
        self.tqdm.set_postfix_str(f"{self.done}/{self.pairs} pairs")

    def close(self) -> None:
        self.tqdm.close()


# -- running the tasks here ----------------------------------------------------------------------

_EVENTS = None  # in a pool worker: the queue progress events go to
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _limit_threads(threads: int) -> None:
    """Torch, BLAS and onnxruntime in this process use at most ``threads`` threads.

    Torch is limited now if it is loaded, else through OMP_NUM_THREADS when it loads (not
    importing it here spares the workers that never need it its loading time).
    """
    from ..load import runtime

    os.environ.update({name: str(threads) for name in _THREAD_VARIABLES})
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    runtime.INTRA_OP_THREADS = threads


def _init_worker(threads: int, events) -> None:
    global _EVENTS
    _EVENTS = events
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _limit_threads(threads)


def _pool_task(task: Callable[..., ShardResult], pair: Pair) -> ShardResult:
    _EVENTS.put(("start", pair.index, 0))
    return task(pair, on_progress=lambda n: _EVENTS.put(("samples", pair.index, n)))


@contextlib.contextmanager
def _thread_env(threads: int):
    """BLAS/OpenMP thread counts for the worker processes started meanwhile (they read them
    when numpy loads, before any of our code runs there)."""
    before = {n: os.environ.get(n) for n in _THREAD_VARIABLES}
    os.environ.update({n: str(threads) for n in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _run_local(
    pairs: list[Pair], task, workers: int, bar: _Bar | None
) -> Iterator[tuple[Pair, ShardResult | BaseException]]:
    """Run the tasks on this machine: in this process for one worker, else in a process pool
    (spawned, ``workers`` processes, ``cores // workers`` threads each). Yields each pair with
    its result, or with its error after the one retry."""
    if not pairs:
        return
    workers = min(workers, len(pairs))
    if workers == 1:
        for pair in pairs:
            on_progress = None if bar is None else lambda n, i=pair.index: bar.samples_done(i, n)
            for attempt in range(RETRIES + 1):
                try:
                    yield pair, task(pair, on_progress=on_progress)
                    break
                except Exception as exc:
                    if attempt == RETRIES:
                        yield pair, exc
        return
    yield from _run_pool(pairs, task, workers, bar)


def _run_pool(pairs: list[Pair], task, workers: int, bar: _Bar | None):
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.SimpleQueue()  # synchronous puts: a "start" is sent before a worker can die
    failures: dict[int, int] = {}
    todo = list(pairs)
    with _thread_env(threads):
        while todo:  # one round per pool; a worker's death breaks the pool, the next takes over
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=ctx,
                initializer=_init_worker, initargs=(threads, events),
            )  # fmt: skip
            try:
                futures = {pool.submit(_pool_task, task, p): p for p in todo}
                todo, started = [], set()
                while futures:
                    done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(events, started, bar)
                    for future in done:
                        pair = futures.pop(future)
                        exc = future.exception()
                        if exc is None:
                            yield pair, future.result()
                        elif isinstance(exc, BrokenProcessPool) and pair.index not in started:
                            todo.append(pair)  # had not started: not the one that broke it
                        elif failures.setdefault(pair.index, 0) >= RETRIES:
                            yield pair, exc
                        else:
                            failures[pair.index] += 1
                            if isinstance(exc, BrokenProcessPool):
                                todo.append(pair)
                            else:
                                try:
                                    futures[pool.submit(_pool_task, task, pair)] = pair
                                except BrokenProcessPool:
                                    todo.append(pair)
            except BaseException:  # an interrupt, or the caller stopped early: end the workers
                pool.shutdown(wait=False, cancel_futures=True)
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
                raise
            pool.shutdown()


def _drain(events, started: set[int], bar: _Bar | None) -> None:
    while not events.empty():
        kind, index, n = events.get()
        if kind == "start":
            started.add(index)
        elif bar is not None:
            bar.samples_done(index, n)


# -- running the tasks on Ray --------------------------------------------------------------------


def _ray_task(task, pair: Pair, model: bytes, threads: int) -> ShardResult:
    _limit_threads(threads)
    return task(pair, model)


def _connect_ray(address: str, stack: contextlib.ExitStack):
    """The ``ray`` module, connected to the cluster at ``address`` (disconnected when ``stack``
    closes), or as it is when this process is already connected."""
    try:
        import ray
    except ImportError:
        raise OptionError(
            "Ray is not installed; install the 'ray' extra: pip install 'onnxinv[ray]'"
        ) from None
    if not isinstance(address, str) or not address:
        raise OptionError(f"ray must be 'auto' or a cluster address HOST:PORT, not {address!r}")
    if not ray.is_initialized():
        _probe(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:
            raise OptionError(f"cannot connect to Ray at {address!r}: {first_line(exc)}") from None
        stack.callback(ray.shutdown)
    return ray


def _probe(address: str) -> None:
    """Fail in one line, at once, when nothing listens at HOST:PORT (ray.init would retry
    for minutes)."""
    if address == "auto":
        return  # ray.init says at once when there is no cluster
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise OptionError(
            f"Ray address must be 'auto', HOST:PORT or ray://HOST:PORT, not {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise OptionError(
            f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}"
        ) from None


def _run_ray(ray, pairs: list[Pair], task, models_info: list[dict], workers: int | None):
    """Submit the pairs as Ray tasks (at most ``workers`` in flight), one CPU each; Ray runs a
    failed task once more (an exception or a dead worker). The models travel as bytes through
    the object store, so the nodes need onnxinv installed but no shared filesystem."""
    if not pairs:
        return
    remote = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=True)(_ray_task)
    models = {m["name"]: ray.put(_model_bytes(m["path"])) for m in models_info}
    waiting = list(pairs)
    running: dict[Any, Pair] = {}
    try:
        while waiting or running:
            while waiting and len(running) < (workers or math.inf):
                pair = waiting.pop(0)
                running[remote.remote(task, pair, models[pair.model], 1)] = pair
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                pair = running.pop(ref)
                try:
                    yield pair, ray.get(ref)
                except Exception as exc:
                    yield pair, getattr(exc, "cause", None) or exc
    finally:
        for ref in running:
            ray.cancel(ref, force=True)


def _model_bytes(path: str) -> bytes:
    """The model with its external data, serialized: what a node without the file needs."""
    import onnx

    try:
        return onnx.load(path).SerializeToString()
    except Exception as exc:
        raise OnnxInvError(f"cannot serialize {path} for Ray: {first_line(exc)}") from None
