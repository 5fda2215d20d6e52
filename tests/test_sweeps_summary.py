"""A sweep's summary (onnxinv/sweeps/summary.py) from rows made here: the table's cells, the
counts, summary.json's form and the one line the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxinv import Settings
from onnxinv.sweeps import Pair, SweepRow, SweepSummary
from onnxinv.sweeps.summary import COLUMNS


def pair(cls: int, samples: int = 4) -> Pair:
    return Pair(cls, "digits", "digits.onnx", "", cls, 0.9, 1e-4, Settings(samples=samples))


def report(verified: list[bool], errors: list[float], status="solved", seconds=0.5, **sweep):
    return {
        "samples": [{"max_error": e, "verified": v} for v, e in zip(verified, errors, strict=True)],
        "totals": {"verified": sum(verified)},
        "sweep": {"status": status, "reason": None, "proven_unreachable": False,
                  "seconds": seconds, **sweep},
    }  # fmt: skip


@pytest.fixture
def summary() -> SweepSummary:
    rows = [
        SweepRow.from_report(pair(0), report([True] * 4, [1e-8, 3e-8, 2e-8, 4e-8]), reused=False),
        SweepRow.from_report(
            pair(1),
            report(
                [], [], status="unreachable", reason="proven | at once", proven_unreachable=True
            ),
            reused=True,
        ),  # fmt: skip
        SweepRow.failed(pair(2), "boom"),
    ]
    return SweepSummary(rows, Path("runs/sweep"), 2.0)


def test_a_row_from_its_shards_report(summary):
    solved, unreachable, failed = summary
    assert (solved.verified, solved.requested, solved.status) == (4, 4, "solved")
    assert solved.median_error == pytest.approx(2.5e-8) and solved.worst_error == 4e-8
    assert solved.samples_per_second == pytest.approx(8.0) and solved.shard == "digits/class_0"
    assert unreachable.proven_unreachable and unreachable.median_error is None
    assert (failed.status, failed.reason, failed.shard, failed.seconds) == ("failed", "boom", None, None)  # fmt: skip


def test_markdown_has_one_line_per_pair(summary):
    lines = summary.markdown().splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |" and len(lines) == 2 + 3
    assert lines[2] == "| digits | 0 | 4/4 | no | 2.5e-08 | 4e-08 | 0.50 | 8 | solved |"
    assert lines[3].endswith("| unreachable: proven / at once (earlier run) |")  # no stray "|"
    assert lines[4] == "| digits | 2 | 0/4 | no | – | – | – | – | failed: boom |"


def test_counts_and_the_line(summary):
    assert len(summary) == 3 and summary[2].status == "failed"
    assert [r.cls for r in summary.computed] == [0]
    assert [r.cls for r in summary.reused] == [1] and [r.cls for r in summary.failed] == [2]
    assert not summary.all_verified
    assert summary.line() == (
        "3 pairs: 1 solved, 1 unreachable, 1 failed; 1 from an earlier run in 2.0 s -> runs/sweep"
    )


def test_summary_json_names_the_class_column_class(summary):
    data = json.loads(json.dumps(summary.to_dict()))
    assert (data["pairs"], data["computed"], data["reused"], data["failed"]) == (3, 1, 1, 1)
    assert data["rows"][0]["class"] == 0 and "cls" not in data["rows"][0]
