"""``auto``: the backward pass, then LM polish from where it left each sample, then restarts.

Written once as a composition of the other solvers, each stage working only on the samples the
previous ones left unverified:

1. **backward** (:class:`BackwardSolver`): exact where the graph is invertible;
2. **polish**: one LM attempt (no restarts) from the backward pass's point, clipped into the
   bounds (:class:`ForwardSolver` with starting points);
3. **restart**: the forward pass from fresh random starts for what polish did not solve,
   keeping whichever of the two ended with the smaller error.

When the plan's LM on a block cannot fit the memory budget (a block may have more outputs than
the whole model), the forward pass solves the whole model instead, with a note.
"""

from __future__ import annotations

import numpy as np

from ..errors import MemoryBudgetError
from .backward import BackwardSolver
from .base import Outcome, Solver
from .forward import ForwardSolver


class AutoSolver(Solver):
    """Backward pass, then LM polish and fresh forward starts for what it left unverified."""

    name = "auto"
    summary = "The backward pass, then LM polish and fresh forward starts where it fell short."
    whole_model = True

    def __init__(self, problem):
        super().__init__(problem)
        self.backward: BackwardSolver | None = BackwardSolver(problem)
        self.forward = ForwardSolver(problem)

    def prepare(self) -> None:
        self.backward.prepare()

    def solve(self, k, rng, x0=None, on_progress=None) -> Outcome:
        if self.backward is None:
            return self.forward.solve(k, rng, on_progress=on_progress)
        try:
            out = self.backward.solve(k, rng, on_progress=on_progress)
        except MemoryBudgetError as exc:
            # A block's LM (its outputs × its inputs) does not fit where the whole model's
            # may (fewer outputs): solve the whole model instead, from now on.
            self.backward = None
            self.problem.notes.append(
                f"the plan was abandoned ({exc}); the forward pass solved instead"
            )
            return self.forward.solve(k, rng, on_progress=on_progress)
        out.verification = check = self.problem.verify(out.x)
        pending = np.flatnonzero(~check.verified)
        if pending.size:
            self._polish(out, pending, rng)
            check.replace(pending, self.problem.verify(out.x[pending]))
        return out

    def _polish(self, out: Outcome, idx: np.ndarray, rng) -> None:
        """Stages 2 and 3 on samples ``idx`` of ``out``, in place."""
        bounds = self.problem.bounds
        x0 = out.x[idx].astype(np.float64)
        if bounds is not None:
            x0 = np.clip(x0, *bounds)
        polish = self.forward.solve(len(idx), rng, x0=x0)
        solved = polish.error <= self.problem.tol
        out.x[idx] = polish.x
        out.error[idx] = polish.error
        out.iterations[idx] += polish.iterations
        for i in idx[solved]:
            out.paths[i] += "+polish"
        rest = idx[~solved]
        if rest.size:
            fresh = self.forward.solve(len(rest), rng)
            better = fresh.error < polish.error[~solved]
            out.x[rest[better]] = fresh.x[better]
            out.error[rest[better]] = fresh.error[better]
            out.iterations[rest] += fresh.iterations
            for i in rest[better]:
                out.paths[i] = "forward"

    def again(self, k, rng) -> Outcome:
        """Replacements for repeated samples come from fresh forward starts (the plan's
        choices may be deterministic)."""
        return self.forward.run(k, rng)
