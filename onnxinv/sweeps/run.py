"""A sweep: every (model, class) pair inverted, on this machine's cores or on a Ray cluster.

Each pair is one task: :func:`~onnxinv.sweeps.task.run_pair` inverts a model for
``{"class": k, "confidence": c}`` and *returns* the result (arrays and report); it writes
nothing. The driver (:func:`sweep`) writes each pair's shard ``OUT/<model>/class_<k>/``
(:mod:`~onnxinv.sweeps.shards`, a temporary folder renamed into place) as results come in, so
an interrupted sweep keeps every finished pair, a rerun skips them, and Ray workers need no
shared filesystem. At the end it writes ``summary.json``, ``summary.md`` and ``figure.png``
from all the sweep's shards.

A pair whose target is out of reach is a result, not a failure: its shard holds what the
solvers returned (nothing when a proof came first) and its report says why. A task that
raises or whose process dies is run once more; if it fails again the pair has no shard (a
rerun retries it) and its row says ``failed``.

Here: :func:`sweep` and the planning of its pairs (models loaded, classes checked). The task
is :mod:`.task`, the summary :mod:`.summary`, the folder :mod:`.shards`, the runners
:mod:`.runners` (this machine) and :mod:`.cluster` (Ray).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionError, TargetError, first_line
from ..load import model as model_mod
from ..settings import Settings, positive_int
from ..solvers.registry import check_method
from ..target import DEFAULT_TOLERANCE, Target
from .cluster import connect_ray, run_ray
from .runners import ProgressBar, run_local
from .shards import (
    check_sweep_folder,
    read_shard,
    write_figure,
    write_marker,
    write_shard,
    write_summary,
)
from .summary import SweepRow, SweepSummary
from .task import Pair, ShardResult, jsonable, run_pair

__all__ = [
    "Pair",
    "ShardResult",
    "SweepRow",
    "SweepSummary",
    "parse_classes",
    "plan",
    "run_pair",
    "sweep",
]


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
            process is already connected to. A cluster that asks for a token gets
            ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` for a head on
            this machine (:mod:`onnxinv.sweeps.cluster`, docs/sweeps-on-ray.md).
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
    task = task or run_pair  # the default task, looked up in this module at each call
    if samples is not None:
        options["samples"] = samples
    s = Settings.create(settings, **options)
    check_method(s.method)
    if workers is not None:
        workers = positive_int("workers", workers)
    pairs, models_info = plan(models, classes, confidence, tolerance, s)
    out = check_sweep_folder(out, overwrite)
    rows: dict[int, SweepRow] = {}
    todo = []
    for pair in pairs:
        report = None if overwrite else read_shard(out, pair)
        if report is None:
            todo.append(pair)
        else:
            rows[pair.index] = SweepRow.from_report(pair, report, reused=True)
    with contextlib.ExitStack() as stack:
        if ray is not None and todo:  # connect first: a bad address fails before any write
            finished = run_ray(connect_ray(ray, stack), todo, task, models_info, workers)
        write_marker(out, {"models": models_info, "confidence": confidence,
                           "tolerance": tolerance, "settings": jsonable(s.report())})  # fmt: skip
        bar = ProgressBar(todo, s.samples) if progress and todo else None
        if bar is not None:
            stack.callback(bar.close)
        if ray is None or not todo:
            finished = run_local(todo, task, workers or os.cpu_count() or 1, bar)
        stack.enter_context(contextlib.closing(finished))
        for pair, outcome in finished:
            if isinstance(outcome, BaseException):
                rows[pair.index] = SweepRow.failed(pair, first_line(outcome))
            else:
                write_shard(out, pair, outcome)
                rows[pair.index] = SweepRow.from_report(pair, outcome.report(), reused=False)
            if bar is not None:
                bar.finished(pair)
    summary = SweepSummary([rows[p.index] for p in pairs], out, time.perf_counter() - t0)
    summary.figure = write_figure(out, pairs, summary)
    write_summary(out, summary)
    return summary


def plan(
    models: Sequence[str | os.PathLike] | str | os.PathLike,
    classes: str | Iterable[int],
    confidence: float,
    tolerance: float,
    s: Settings,
) -> tuple[list[Pair], list[dict]]:
    """Every (model, class) pair, validated (models loaded, classes in range), nothing written,
    and each model's facts for sweep.json (name, path, sha256, number of classes)."""
    if isinstance(models, str | os.PathLike):
        models = [models]
    models = list(models)
    if not models:
        raise OptionError("give at least one model")
    Target.from_dict({"class": 0, "confidence": confidence, "tolerance": tolerance})
    wanted = parse_classes(classes)
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


def parse_classes(classes: str | Iterable[int]) -> list[int] | None:
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
