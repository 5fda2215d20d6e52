"""``exact``: piecewise-linear networks inverted as sets (see :mod:`onnxinv.solvers.exact`).

Each call finds up to ``PATTERNS`` activation patterns by mixed-integer programs with random
objectives and spreads the samples over them by hit-and-run. When the program is infeasible
the samples are left unsolved and the decision (a proof) is in the notes; the API turns it
into a proven-unreachable error.
"""

from __future__ import annotations

import numpy as np

from ...errors import OptionError
from ..base import Solver, SolverOutcome

PATTERNS = 8  # activation patterns (programs solved) per call, at most one per sample


class ExactSolver(Solver):
    """MILP over activation patterns, then hit-and-run inside each pattern's polytope."""

    name = "exact"
    summary = (
        "Piecewise-linear nets (ReLU, MaxPool, ...) in a box: patterns by mixed-integer "
        "programs (HiGHS), samples by hit-and-run; proves unreachability."
    )
    whole_model = True

    def prepare(self) -> None:
        from .analysis import NotPiecewise, analysis_of

        try:
            self.analysis = analysis_of(self.problem)
        except NotPiecewise as exc:
            raise OptionError(f"method 'exact' does not apply: {exc}") from None

    def solve(self, k, rng, x0=None, on_progress=None) -> SolverOutcome:
        if not hasattr(self, "analysis"):
            self.prepare()
        witnesses = self.analysis.witnesses(min(k, PATTERNS), rng)
        notes = []
        if not witnesses:
            lo, hi = self.problem.bounds
            decision = self.analysis.decide()
            x = rng.uniform(lo, hi, size=(k, self.problem.n))
            return SolverOutcome(x, np.full(k, np.nan), np.zeros(k, dtype=np.int64),
                           ["exact (no input found)"] * k, notes=[decision.message])  # fmt: skip
        share = np.diff(np.linspace(0, k, len(witnesses) + 1).round().astype(int))
        parts = [
            self.analysis.sample(w, m, rng) for w, m in zip(witnesses, share, strict=True) if m
        ]
        x = np.concatenate(parts)
        how = (
            "the L1 projection of the prior onto the set"
            if self.problem.settings.prior is not None
            else "optima of random objectives"
        )
        notes.append(
            f"exact: the program over every activation pattern is feasible (HiGHS; "
            f"{self.analysis.size()}; {self.analysis.seconds:.2g} s in programs); "
            f"{len(witnesses)} pattern(s) sampled, found as {how} (a sample of the preimage's "
            "patterns, not all of them); samples by hit-and-run on each pattern's slice of "
            "exact preimages"
        )
        if on_progress is not None:
            on_progress(k)
        return SolverOutcome(x, np.full(k, np.nan), np.zeros(k, dtype=np.int64), ["exact"] * k,
                       notes=notes)  # fmt: skip
