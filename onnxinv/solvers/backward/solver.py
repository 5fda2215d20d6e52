"""The backward pass as a solver: inverse rules through invertible blocks, LM on opaque ones."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..base import Solver, SolverOutcome


class BackwardSolver(Solver):
    """Inverse rules from the output down (the plan); LM only where a block has no inverse.

    What the plan cannot do exactly is returned as it is and reported unverified.
    """

    name = "backward"
    summary = "Inverse rules through invertible blocks; LM only on blocks without an inverse."
    whole_model = True

    def prepare(self) -> None:
        from ...errors import set_phase
        from .plan import BackwardPass

        self.problem.partition  # noqa: B018 - partitioned first, its own phase
        set_phase("while planning the backward pass")
        self.plan = BackwardPass(self.problem)

    def solve(self, k, rng, x0=None, on_progress=None) -> SolverOutcome:
        """``k`` samples in chunks of ``chunk_size``; ``x0`` is ignored (the plan draws).

        Each chunk draws from its own generator (spawned from ``rng`` in chunk order, so a
        seed gives the same samples however the chunks are scheduled). Where the plan is the
        chain's numpy alone, chunks after the first run on ``os.cpu_count()`` threads with one
        BLAS thread each: most of a chunk is small matrix products that one BLAS call cannot
        spread over the cores, while numpy releases the GIL inside each of them.
        """
        size = self.problem.settings.chunk_size
        sizes = [min(size, k - first) for first in range(0, k, size)]
        rngs = rng.spawn(len(sizes))

        def chunk(i: int):
            out = self.plan.run(sizes[i], rngs[i])
            if on_progress is not None:
                on_progress(sizes[i])
            return out

        outs = [chunk(0)] if sizes else []  # (the first also settles one-time choices)
        workers = min(os.cpu_count() or 1, len(sizes) - 1)
        if workers > 1 and self.plan.chain_only:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1), ThreadPoolExecutor(workers) as pool:
                outs += list(pool.map(chunk, range(1, len(sizes))))
        else:
            outs += [chunk(i) for i in range(1, len(sizes))]
        xs = [o.x for o in outs]
        solved = [o.solved for o in outs]
        iterations = [o.iterations for o in outs]
        path = "backward+lm" if self.plan.used_lm else "backward"
        self.problem.jacobian_sources |= self.plan.jacobian_sources
        error = np.where(np.concatenate(solved), 0.0, np.nan)  # the check judges inexact ones
        return SolverOutcome(np.concatenate(xs), error, np.concatenate(iterations), [path] * k,
                       list(self.plan.notes))  # fmt: skip
