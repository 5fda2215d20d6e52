"""The backward pass as a solver: inverse rules through invertible blocks, LM on opaque ones."""

from __future__ import annotations

import numpy as np

from .base import Outcome, Solver


class BackwardSolver(Solver):
    """Inverse rules from the output down (the plan); LM only where a block has no inverse.

    What the plan cannot do exactly is returned as it is and reported unverified.
    """

    name = "backward"
    summary = "Inverse rules through invertible blocks; LM only on blocks without an inverse."
    whole_model = True

    def prepare(self) -> None:
        from ..errors import set_phase
        from ..plan import Plan

        self.problem.partition  # noqa: B018 - partitioned first, its own phase
        set_phase("while planning the backward pass")
        self.plan = Plan(self.problem)

    def solve(self, k, rng, x0=None, on_progress=None) -> Outcome:
        """``k`` samples in chunks of ``chunk_size``; ``x0`` is ignored (the plan draws)."""
        size = self.problem.settings.chunk_size
        xs, exact, iterations = [], [], []
        for first in range(0, k, size):
            n = min(size, k - first)
            out = self.plan.run(n, rng)
            xs.append(out.x)
            exact.append(out.exact)
            iterations.append(out.iterations)
            if on_progress is not None:
                on_progress(n)
        path = "backward+lm" if self.plan.used_lm else "backward"
        self.problem.jacobian_sources |= self.plan.jacobian_sources
        error = np.where(np.concatenate(exact), 0.0, np.nan)  # the check judges inexact ones
        return Outcome(np.concatenate(xs), error, np.concatenate(iterations), [path] * k,
                       list(self.plan.notes))  # fmt: skip
