"""One sweep task: a (model, class) pair inverted, its result returned, nothing written.

* :class:`Pair` – what one task inverts, and the request its shard answers;
* :func:`run_pair` – the task: :func:`onnxinv.invert` for the pair's target, an unreachable or
  not-reached target returned as a result (a :class:`ShardResult`) rather than raised;
* :func:`empty_result` – the result with no sample, for a target proven unreachable before any
  sample was solved.

The task runs in this process, in a pool worker or on a Ray node, so it takes the model's
bytes where the path is not readable there, and it returns arrays and report for the driver
to write.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnreachableTargetError as Unreachable
from ..errors import first_line
from ..load import model as model_mod
from ..result import InversionResult
from ..settings import Settings
from ..target import Target


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
        return jsonable(
            {
                "model_sha256": self.model_sha256,
                "target": self.target(),
                "settings": self.settings.report(),
            }
        )


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON gives it back (tuples become lists), for comparisons with a report."""
    return json.loads(json.dumps(obj))


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
        result = exc.result if exc.result is not None else empty_result(source, pair)
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


def empty_result(source: str | bytes, pair: Pair) -> InversionResult:
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
