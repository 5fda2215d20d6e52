"""Sweeps: every (model, class) pair inverted, on this machine's cores or a Ray cluster."""

from .run import Pair, SweepRow, SweepSummary, run_pair, sweep

__all__ = ["Pair", "SweepRow", "SweepSummary", "run_pair", "sweep"]
