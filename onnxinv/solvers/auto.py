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

Before that, auto settles the route for the run as a small portfolio: the backward route
(stages 1-4) is piloted on a few samples (one chunk after a warm-up chunk on a large run, an
eighth of the samples on a small one) under a time cap (``PILOT_CAP`` seconds, or
``PILOT_MODEL_RUNS`` onnxruntime runs of the pilot, whichever is longer). When it verifies the
whole pilot and the rest of the run would take it less than ``SWITCH_WORTH`` seconds, it goes
on alone. Otherwise the forward pass (whole-model LM, dense or matrix-free as its memory
estimate decides) is piloted on as many samples, capped at the time the backward pilot took
when that one verified everything, and the rest of the run goes to the route that verified
more samples per second. A route that cannot fit the memory budget (or cannot be converted
for Jacobians at all) drops out before it is timed. Verified pilot samples are kept; the
others are solved again by the chosen route. The choice is timed, so it can depend on the
machine's load: ``--method backward`` or ``--method forward`` pins a route.

When the plan's LM on a block cannot fit the memory budget (a block may have more outputs than
the whole model), the forward pass solves the whole model instead, with a note.
"""

from __future__ import annotations

import time
from functools import cached_property

import numpy as np

from ..errors import ConversionError, MemoryBudgetError, set_deadline
from .backward.solver import BackwardSolver
from .base import Solver, SolverOutcome
from .exact.solver import ExactSolver
from .forward.solver import ForwardSolver, concatenate

PILOTS = 8  # a run of at least this many chunks pilots on whole chunks, after a warm-up chunk
PILOT_SHARE = 8  # a smaller run pilots on this share of its samples (at least one)
PILOT_CAP = 3.0  # seconds the backward pilot may take at least before it is cut short...
PILOT_MODEL_RUNS = 100  # ... or this many onnxruntime runs of its samples, if longer
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
        if self.route is None and self.backward is not None and self.backward.plan.lm_from_input:
            self.route = "forward"
            self.problem.notes.append(
                "auto solved by the forward pass: the backward pass would run LM from the "
                "model's input anyway (no exact pass below the first block that needs LM)"
            )
        if self.backward is None or self.route == "forward":
            return self._forward_route(k, rng, on_progress)
        if k == 0:
            return SolverOutcome.unsolved(np.zeros((0, self.problem.n)), self.name)
        if self.route == "backward":
            return self._backward_route(k, rng, on_progress)
        if k < PILOTS * self.problem.settings.chunk_size:
            return self._capped_run(k, rng, on_progress)
        return self._pilot(k, rng, on_progress)

    def _capped_run(self, k, rng, on_progress) -> SolverOutcome:
        """A small run: the backward route on all ``k`` samples under the pilot's time cap;
        when the cap cuts it short, what it left goes to the forward pass (as does the rest
        of the run)."""
        if not self.backward.plan.chain_only:
            import onnx2torch  # noqa: F401 - torch's import (seconds, once) is not the route's time

        cap, start = self._cap(k), time.monotonic()
        out = self._capped(cap, lambda: self._backward_route(k, rng, on_progress))
        cut = time.monotonic() - start >= cap
        if self.backward is None:  # (the plan did not fit the memory budget: forward solved)
            self.route = "forward"
            return out
        pending = np.flatnonzero(~out.verification.verified)
        if not pending.size or self.problem.expired() or not cut:
            self.route = "backward"
            return out
        self.route = "forward"
        self.problem.notes.append(
            f"auto cut the backward route at its time cap with {pending.size} of {k} samples "
            "unverified; the forward pass solved those and solves the rest of the run"
        )
        try:
            fresh = self._forward_route(pending.size, rng, on_progress)
        except (MemoryBudgetError, ConversionError):
            return out
        self._take(out, pending, fresh, "forward")
        return out

    def _pilot(self, k, rng, on_progress) -> SolverOutcome:
        """Settle the route on pilot samples (see the module's docstring), then solve the rest.

        On a large run each route's first chunk pays one-time costs (the chain pass tries both
        box strategies, torch warms up), so the backward route is timed on its second chunk.
        """
        size = self.problem.settings.chunk_size
        large = k >= PILOTS * size
        pilot = size if large else max(1, k // PILOT_SHARE)
        cap = self._cap(pilot)
        done = []
        if large:  # (a warm-up chunk, capped as the timed one is)
            done.append(self._capped(cap, lambda: self._backward_route(pilot, rng, on_progress)))
        start = time.perf_counter()
        back = self._capped(cap, lambda: self._backward_route(pilot, rng, on_progress))
        seconds = time.perf_counter() - start
        done.append(back)
        verified = int(back.verification.verified.sum())
        rate = verified / seconds
        if self.backward is None:  # (the plan did not fit the memory budget)
            self.route = "forward"
            return self._rest(done, k, rng, on_progress)
        left = k - self._kept(done)
        if verified == pilot and left / rate < SWITCH_WORTH:
            self.route = "backward"
            return self._rest(done, k, rng, on_progress)
        cap = seconds if verified == pilot else None  # the forward must beat a full pilot
        second = min(pilot, k - self._kept(done))  # (never more samples than were asked for)
        try:
            self.forward.prepare()  # the conversion is paid once, whichever route wins
            start = time.perf_counter()
            ahead = self._capped(cap, lambda: self._forward_route(second, rng, on_progress))
        except (MemoryBudgetError, ConversionError) as exc:
            self.route = "backward"
            self.problem.notes.append(f"auto kept the backward route: the forward pass {exc}")
            return self._rest(done, k, rng, on_progress)
        forward_rate = ahead.verification.verified.sum() / (time.perf_counter() - start)
        done.append(ahead)
        # (Neither reached anything: the forward route alone, since the backward one ends in
        # LM from fresh starts anyway.)
        self.route = "forward" if forward_rate > rate or forward_rate == rate == 0 else "backward"
        self.problem.notes.append(
            f"auto timed both routes ({pilot} and {second} sample{'s' * (second > 1)}: "
            f"{rate:.3g} verified/s backward, {forward_rate:.3g}/s forward) and solved the "
            f"rest by the {self.route} route"
        )
        return self._rest(done, k, rng, on_progress)

    def _rest(self, done: list[SolverOutcome], k: int, rng, on_progress) -> SolverOutcome:
        """The pilots' verified samples, and the rest of the ``k`` by the chosen route (the
        pilots' unverified samples stay when the deadline has passed: nothing replaces them)."""
        kept = [_subset(out, out.verification.verified) for out in done]
        if self.problem.expired():
            # Out of time: the verified samples, then the best of the rest, then random starts.
            tried = [_subset(out, ~out.verification.verified) for out in done]
            every = concatenate([*kept, *tried])
            if len(every.x) >= k:
                return _subset(every, np.arange(len(every.x)) < k)
            late = SolverOutcome.unsolved(
                self.problem.starts(rng)(k - len(every.x)).numpy(), "timed out"
            )
            late.verification = self.problem.verify(late.x)
            return concatenate([every, late])
        left = k - self._kept(done)
        return concatenate([*kept, self.solve(left, rng, on_progress=on_progress)])

    @staticmethod
    def _kept(done: list[SolverOutcome]) -> int:
        return int(sum(out.verification.verified.sum() for out in done))

    def _cap(self, k: int) -> float:
        """Seconds the backward pilot on ``k`` samples may take (see ``PILOT_MODEL_RUNS``)."""
        loaded = self.problem.loaded
        x = np.zeros((k, *loaded.input_shape), dtype=np.float64)
        start = time.perf_counter()
        loaded.run(x)
        return max(PILOT_CAP, PILOT_MODEL_RUNS * (time.perf_counter() - start))

    def _capped(self, seconds: float | None, route):
        """``route()`` with the problem's deadline brought forward to ``seconds`` from now."""
        p = self.problem
        saved = p.deadline
        if seconds is not None:
            cap = time.monotonic() + seconds
            p.deadline = cap if saved is None else min(saved, cap)
            set_deadline(p.deadline)
        try:
            return route()
        finally:
            p.deadline = saved
            set_deadline(saved)

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
        except (MemoryBudgetError, ConversionError) as exc:
            # A block's LM (its outputs × its inputs) does not fit where the whole model's
            # may (fewer outputs), or a block cannot be converted for Jacobians: solve the
            # whole model instead, from now on.
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
        if pending.size and self._lm_possible():
            self._polish(out, pending, rng)
            check.replace(pending, self.problem.verify(out.x[pending]))
            pending = np.flatnonzero(~check.verified)
        if pending.size and self.exact is not None:
            self._exact(out, pending, rng)
        return out

    def _lm_possible(self) -> bool:
        """Whether LM can run on the whole model (its Jacobians: converted, or differences
        cheap enough); when not, the backward pass's samples are what there is, with a note."""
        try:
            self.forward.prepare()
        except ConversionError as exc:
            note = f"no LM polish: {exc}"
            if note not in self.problem.notes:
                self.problem.notes.append(note)
            return False
        return True

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
        them (their paths become ``path`` if given); returns that mask. ``fresh``'s own check
        is used when it has one."""
        check = fresh.verification or self.problem.verify(fresh.x)
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


def _subset(out: SolverOutcome, keep: np.ndarray) -> SolverOutcome:
    """The samples of ``out`` selected by the mask ``keep``, with their check."""
    return SolverOutcome(
        out.x[keep],
        out.error[keep],
        out.iterations[keep],
        [p for p, k in zip(out.paths, keep, strict=True) if k],
        list(out.notes),
        verification=out.verification.subset(keep),
        timed_out=out.timed_out,
    )
