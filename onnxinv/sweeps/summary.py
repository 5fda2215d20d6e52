"""A sweep's summary: one row per pair, as summary.md (a table) and summary.json.

* :class:`SweepRow` – one pair's line, from its shard's report (or a failed task);
* :class:`SweepSummary` – what :func:`onnxinv.sweep` returns: the rows, counts and one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .task import Pair

# summary.md's columns, one cell each from SweepRow.cells
COLUMNS = (
    "model", "class", "verified", "proven unreachable", "median error", "worst error",
    "seconds", "samples/s", "note",
)  # fmt: skip


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
        lines = ["| " + " | ".join(COLUMNS) + " |"]
        lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
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
