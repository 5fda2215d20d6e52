"""Targets: what output the inverted inputs must produce.

Three forms, as dicts or JSON files::

    {"distribution": [p0, ..., pK-1]}        every p > 0, sum 1 within 1e-6
    {"class": 3, "confidence": 0.9}          the other classes share 1 - confidence evenly
    {"values": [...]}                        the exact output tensor (logits, regression)

Optional keys: ``"output"`` (which model output), ``"tolerance"`` (default 1e-4).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TargetError

DEFAULT_TOLERANCE = 1e-4
SUM_TOLERANCE = 1e-6
_FORMS = ("distribution", "class", "values")
_OPTIONAL = ("output", "tolerance")


@dataclass(frozen=True)
class Target:
    """A validated target.

    Attributes:
        kind: ``"distribution"`` (class probabilities) or ``"values"`` (exact output).
        values: the probabilities or output values, or ``None`` for the class shorthand until
            it is resolved against the model's number of classes.
        cls: the class of the shorthand form.
        confidence: its probability.
        output: the model output to match, if named.
        tolerance: the largest absolute difference a verified sample may have.
    """

    kind: str
    values: np.ndarray | None = None
    cls: int | None = None
    confidence: float | None = None
    output: str | None = None
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Target:
        """Validate a target dict; every mistake is a one-line :class:`TargetError`."""
        if not isinstance(spec, dict):
            raise TargetError(f"target must be a JSON object, not {type(spec).__name__}")
        forms = [k for k in _FORMS if k in spec]
        if not forms:
            raise TargetError(
                'target needs one of the keys "distribution", "class" or "values"'
                + (f" (got {', '.join(map(repr, spec))})" if spec else "")
            )
        if len(forms) > 1:
            raise TargetError(f"target has both {forms[0]!r} and {forms[1]!r}; give one form")
        allowed = {*_OPTIONAL, forms[0], *(("confidence",) if forms[0] == "class" else ())}
        unknown = [k for k in spec if k not in allowed]
        if unknown:
            raise TargetError(
                f"unknown target key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))}"
            )
        output = spec.get("output")
        if output is not None and not (isinstance(output, str) and output):
            raise TargetError('"output" must be a non-empty string naming a model output')
        tolerance = _tolerance(spec.get("tolerance", DEFAULT_TOLERANCE))
        form = forms[0]
        if form == "distribution":
            p = _numbers(spec["distribution"], "distribution")
            if p.ndim != 1 or p.size < 2:
                raise TargetError('"distribution" must be a flat list of at least 2 probabilities')
            bad = np.flatnonzero(p <= 0)
            if bad.size:
                raise TargetError(
                    f'"distribution" entry {bad[0]} is {p[bad[0]]:g}: every probability must be > 0 '
                    "(a softmax never outputs exactly 0)"
                )
            if abs(p.sum() - 1.0) > SUM_TOLERANCE:
                raise TargetError(
                    f'"distribution" sums to {p.sum():.9g}, not 1 (within {SUM_TOLERANCE:g})'
                )
            return cls("distribution", values=p, output=output, tolerance=tolerance)
        if form == "class":
            c = spec["class"]
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise TargetError(f'"class" must be a non-negative integer, not {c!r}')
            if "confidence" not in spec:
                raise TargetError('"class" needs a "confidence" between 0 and 1 (exclusive)')
            conf = spec["confidence"]
            if isinstance(conf, bool) or not isinstance(conf, int | float):
                raise TargetError(f'"confidence" must be a number, not {conf!r}')
            if not (math.isfinite(conf) and 0 < conf < 1):
                raise TargetError(f'"confidence" must lie strictly between 0 and 1, not {conf!r}')
            return cls(
                "distribution", cls=c, confidence=float(conf), output=output, tolerance=tolerance
            )
        v = _numbers(spec["values"], "values")
        if v.size == 0:
            raise TargetError('"values" is empty')
        return cls("values", values=v, output=output, tolerance=tolerance)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Target:
        """Read and validate a JSON target file."""
        p = Path(path)
        if not p.is_file():
            raise TargetError(f"target file not found: {p}")
        try:
            spec = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TargetError(f"target file {p} is not valid JSON ({exc})") from None
        return cls.from_dict(spec)

    @classmethod
    def coerce(cls, target: Target | dict | str | os.PathLike) -> Target:
        """Accept a Target, a dict or a path to a JSON file."""
        if isinstance(target, Target):
            return target
        if isinstance(target, dict):
            return cls.from_dict(target)
        if isinstance(target, str | os.PathLike):
            return cls.from_file(target)
        raise TargetError(f"target must be a dict, a path or a Target, not {type(target).__name__}")

    def resolve(self, output_shape: tuple[int, ...]) -> np.ndarray:
        """The target array for a model output of ``output_shape`` (one sample).

        Raises:
            TargetError: when the target does not fit the output.
        """
        size = int(np.prod(output_shape)) if output_shape else 1
        if self.kind == "values":
            if self.values.size != size:
                raise TargetError(
                    f'"values" has {self.values.size} numbers but the output has shape '
                    f"{list(output_shape)} ({size} numbers)"
                )
            return self.values.reshape(output_shape)
        if sum(d > 1 for d in output_shape) > 1:
            raise TargetError(
                f"a class distribution needs a vector output, but the output has shape "
                f'{list(output_shape)}; use "values" instead'
            )
        if self.values is not None:
            if self.values.size != size:
                raise TargetError(
                    f'"distribution" has {self.values.size} entries but the model has {size} classes'
                )
            return self.values.copy()
        if size < 2:
            raise TargetError(
                f'"class" needs an output of at least 2 classes, but the output has shape '
                f'{list(output_shape)}; use "values" instead'
            )
        if self.cls >= size:
            raise TargetError(f'"class" {self.cls} is out of range: the model has {size} classes')
        p = np.full(size, (1.0 - self.confidence) / (size - 1))
        p[self.cls] = self.confidence
        return p

    def to_dict(self) -> dict[str, Any]:
        """The target as JSON-able dict (for reports)."""
        d: dict[str, Any] = {}
        if self.cls is not None:
            d.update({"class": self.cls, "confidence": self.confidence})
        elif self.kind == "distribution":
            d["distribution"] = self.values.tolist()
        else:
            d["values"] = self.values.tolist()
        if self.output:
            d["output"] = self.output
        d["tolerance"] = self.tolerance
        return d


def _tolerance(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
        raise TargetError(f'"tolerance" must be a positive number, not {t!r}')
    return float(t)


def _numbers(obj: Any, key: str) -> np.ndarray:
    if not isinstance(obj, list):
        raise TargetError(f'"{key}" must be a list of numbers, not {type(obj).__name__}')
    try:
        arr = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError):
        raise TargetError(
            f'"{key}" must contain only numbers (nested lists of equal length)'
        ) from None
    if arr.dtype == object:
        raise TargetError(f'"{key}" must contain only numbers')
    _check_no_bool(obj, key)
    bad = np.flatnonzero(~np.isfinite(arr.ravel()))
    if bad.size:
        raise TargetError(
            f'"{key}" entry {bad[0]} is {arr.ravel()[bad[0]]}: NaN and Inf are not allowed'
        )
    return arr


def _check_no_bool(obj: Any, key: str) -> None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, int | float):
            raise TargetError(f'"{key}" must contain only numbers, found {item!r}')
