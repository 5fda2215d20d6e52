"""``auto``: the backward pass, then LM polish from where it left each sample, then restarts.

Written once as a composition of the other solvers, each stage working only on the samples the
previous ones left unverified:

1. **backward** (:class:`BackwardSolver`): exact where the graph is invertible; where it
   verified part of a batch, fresh backward draws for the rest (up to ``AGAIN`` rounds);
2. **polish**: one LM attempt (no restarts) from the backward pass's point, clipped into the
   bounds (:class:`ForwardSolver` with starting points);
3. **restart**: the forward pass from fresh random starts for what polish did not solve,
   keeping whichever of the two ended with the smaller error;
4. **exact**: for a piecewise-linear chain in a box (ReLU, max pools...), the exact solver's
   samples (activation patterns by mixed-integer programs, hit-and-run inside them) replace
   what is still unverified; when its program is infeasible the API reports the proof. When
   the backward pass verifies nothing at all, the exact decision is asked before stages 2
   and 3: a proof ends the run there.

On a large run auto also checks that this route pays: the backward route is timed on a pilot
of one chunk (``--chunk-size`` samples, the size every later batch has, after one chunk of
warm-up, so the rate is the steady one), and when the rest of the run would take it longer
than ``SWITCH_WORTH`` seconds (more than the forward pass's one-time conversion costs), the
forward pass is timed on another chunk and the rest of the run takes whichever verified more
samples per second. The
backward pass is the same Newton iteration as the forward pass where a chain needs one, in
numpy instead of torch, and some deep nets favour the forward pass; auto should never cost
much more than the better of the two.

When the plan's LM on a block cannot fit the memory budget (a block may have more outputs than
the whole model), the forward pass solves the whole model instead, with a note.
"""

from __future__ import annotations

import time
from functools import cached_property

import numpy as np

from ..errors import MemoryBudgetError
from .backward.solver import BackwardSolver
from .base import Solver, SolverOutcome
from .exact.solver import ExactSolver
from .forward.solver import ForwardSolver, concatenate

PILOTS = 8  # a run of at least this many chunks times both routes (two chunks each)
SWITCH_WORTH = 5.0  # seconds the backward route would still take before the forward is tried
AGAIN = 2  # rounds of fresh backward draws for what a partly successful batch left


class AutoSolver(Solver):
    """Backward pass, then LM polish and fresh forward starts for what it left unverified."""

    name = "auto"
    summary = "The backward pass, then LM polish and fresh forward starts where it fell short."
    whole_model = True

    def __init__(self, problem):
        super().__init__(problem)
        self.backward: BackwardSolver | None = BackwardSolver(problem)
        self.forward = ForwardSolver(problem)

        self.route: str | None = None  # "backward" or "forward" once measured

    def prepare(self) -> None:
        self.backward.prepare()

    def solve(self, k, rng, x0=None, on_progress=None) -> SolverOutcome:
        if self.backward is None or self.route == "forward":
            return self._forward_route(k, rng, on_progress)
        if self.route is None and k >= PILOTS * self.problem.settings.chunk_size:
            return self._pilot(k, rng, on_progress)
        return self._backward_route(k, rng, on_progress)

    def _pilot(self, k, rng, on_progress) -> SolverOutcome:
        """Time both routes on one chunk each (after one chunk of warm-up); the faster goes on.

        A route's first chunk pays one-time costs (the chain pass tries both box strategies,
        torch warms up), so each route's rate is taken on its second chunk.
        """
        pilot = self.problem.settings.chunk_size
        done = [self._backward_route(pilot, rng, on_progress)]
        rate = self._rate(done, lambda: self._backward_route(pilot, rng, on_progress))
        left = k - 2 * pilot
        if self.backward is None or (rate > 0 and left / rate < SWITCH_WORTH):
            self.route = "backward" if self.backward is not None else "forward"
            return concatenate([*done, self.solve(left, rng, on_progress=on_progress)])
        self.forward.prepare()  # the conversion is paid once, whichever route wins
        done.append(self._forward_route(pilot, rng, on_progress))
        forward_rate = self._rate(done, lambda: self._forward_route(pilot, rng, on_progress))
        # (Neither reached anything: the forward route alone, since the backward one ends in
        # LM from fresh starts anyway.)
        self.route = "forward" if forward_rate > rate or forward_rate == rate == 0 else "backward"
        self.problem.notes.append(
            f"auto timed both routes on {pilot} samples each ({rate:.0f} verified/s backward, "
            f"{forward_rate:.0f}/s forward) and solved the rest by the {self.route} route"
        )
        return concatenate([*done, self.solve(left - 2 * pilot, rng, on_progress=on_progress)])

    @staticmethod
    def _rate(done: list[SolverOutcome], route) -> float:
        """Verified samples per second of one timed call of ``route``; its outcome joins ``done``."""
        t = time.perf_counter()
        done.append(route())
        return done[-1].verification.verified.sum() / (time.perf_counter() - t)

    def _forward_route(self, k, rng, on_progress) -> SolverOutcome:
        out = self.forward.solve(k, rng, on_progress=on_progress)
        out.verification = self.problem.verify(out.x)
        return out

    def _backward_route(self, k, rng, on_progress) -> SolverOutcome:
        """The backward pass, then polish and fresh forward starts for what it left."""
        if self.backward is None:
            return self._forward_route(k, rng, on_progress)
        try:
            out = self.backward.solve(k, rng, on_progress=on_progress)
        except MemoryBudgetError as exc:
            # A block's LM (its outputs × its inputs) does not fit where the whole model's
            # may (fewer outputs): solve the whole model instead, from now on.
            self.backward = None
            self.problem.notes.append(
                f"the plan was abandoned ({exc}); the forward pass solved instead"
            )
            return self._forward_route(k, rng, on_progress)
        out.verification = check = self.problem.verify(out.x)
        pending = np.flatnonzero(~check.verified)
        if pending.size == len(out.x) and self._proven():
            return out  # (nothing can reach it: the API reports the proof)
        if 0 < pending.size < len(out.x):
            self._again_backward(out, pending, rng)
            pending = np.flatnonzero(~check.verified)
        if pending.size:
            self._polish(out, pending, rng)
            check.replace(pending, self.problem.verify(out.x[pending]))
            pending = np.flatnonzero(~check.verified)
        if pending.size and self.exact is not None:
            self._exact(out, pending, rng)
        return out

    def _again_backward(self, out: SolverOutcome, idx: np.ndarray, rng) -> None:
        """Fresh backward draws for samples ``idx`` that the pass left unverified while it
        verified others of the same batch: its restarts ran out on these anchors, and new
        ones reach the target at about the rate the batch did (on deep nets, where LM from
        the same points or from scratch reaches far less). Up to ``AGAIN`` rounds."""
        for _ in range(AGAIN):
            if idx.size == 0 or self.problem.expired():
                return
            good = self._take(out, idx, self.backward.solve(len(idx), rng))
            if not good.any():
                return
            idx = idx[~good]

    def _take(
        self, out: SolverOutcome, idx: np.ndarray, fresh: SolverOutcome, path: str | None = None
    ):
        """``fresh``'s samples replace samples ``idx`` of ``out`` where onnxruntime verifies
        them (their paths become ``path`` if given); returns that mask."""
        check = self.problem.verify(fresh.x)
        good = check.verified
        out.notes.extend(fresh.notes)
        if good.any():
            out.x[idx[good]] = fresh.x[good]
            out.error[idx[good]] = check.errors[good]
            out.iterations[idx[good]] += fresh.iterations[good]
            out.verification.replace(idx[good], check.subset(good))
            for i in idx[good]:
                out.paths[i] = path or out.paths[i]
        return good

    @cached_property
    def exact(self) -> ExactSolver | None:
        """Stage 4, for piecewise-linear chains in a box (None elsewhere)."""
        from .exact.analysis import analysis_for

        return ExactSolver(self.problem) if analysis_for(self.problem) is not None else None

    def _proven(self) -> bool:
        """Whether the exact decision proves the target unreachable (asked when the backward
        pass verified nothing: a proof then spares the LM stages their restarts)."""
        if self.exact is None or self.problem.expired():
            return False
        from .exact.analysis import analysis_of

        return analysis_of(self.problem).decide().status == "unreachable"

    def _exact(self, out: SolverOutcome, idx: np.ndarray, rng) -> None:
        """Stage 4 on samples ``idx``: the exact solver's samples replace them where verified."""
        if self.problem.expired():
            return
        self._take(out, idx, self.exact.solve(len(idx), rng), "exact")

    def _polish(self, out: SolverOutcome, idx: np.ndarray, rng) -> None:
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

    def again(self, k, rng) -> SolverOutcome:
        """Replacements for repeated samples come from fresh forward starts (the plan's
        choices may be deterministic)."""
        return self.forward.run(k, rng)
