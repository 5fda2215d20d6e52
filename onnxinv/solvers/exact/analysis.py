"""Piecewise-linear chains inverted as sets: a mixed-integer program decides, a walk samples.

A chain of affine maps, piecewise-linear activations (ReLU, LeakyReLU, PReLU, Clip, HardSigmoid,
Abs, Max/Min with constants) and max pools maps the input box onto a union of polyhedra, one
per activation pattern. :class:`ExactAnalysis` writes the chain as one mixed-integer linear program
(:mod:`.program`, solved by scipy's ``milp``, i.e. HiGHS) and

* **decides** the target: infeasible with the conditions every output within the tolerance
  meets means proven unreachable within the bounds; feasible gives a witness pattern; a time
  limit (``--milp-time-limit``) gives "unknown", never "unreachable". On chains without max
  pools, branch and bound over activation splits (:mod:`.branch`) takes over from the program
  after a share of the time: its relaxations tighten as it splits, so it proves far more;
* **samples** it: random objectives over the input give different patterns (different
  vertices of the union), and a hit-and-run walk inside each pattern's polytope, restricted to
  the slice that meets the request exactly (:mod:`.polytope`), turns each into many inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...errors import OptionError
from ...objective import TopRegion
from ...partition.chain import Activation, Affine
from ...rules.linalg import null_basis
from . import branch
from .polytope import centre, hit_and_run, nearest, pattern_polytope
from .program import tightened

CACHE_KEY = "exact"  # where a run's ModelProblem.shared keeps the analysis (or why none applies)

__all__ = ["Decision", "ExactAnalysis", "analysis_for", "analysis_of"]

MAX_VALUES = 20_000  # affine outputs a chain may have for the program to be written
TIGHTEN = 0.25  # share of --milp-time-limit spent tightening bounds by linear programs
PRIOR_STEPS, PRIOR_REACH = 2, 0.1  # with a prior: short moves away from its projection
FIRST = 0.2  # share of --milp-time-limit the search, then the program, has before the rest
WITNESS = 0.05  # share of it each further pattern's program may take (its best point so far)


@dataclass
class Decision:
    """Whether the target is reachable in the box: ``status`` is ``"reachable"``,
    ``"unreachable"`` (proven) or ``"unknown"``; ``message`` says so in one line."""

    status: str
    message: str
    witness: np.ndarray | None = None
    seconds: float = 0.0


class NotPiecewise(OptionError):
    """The model is not a piecewise-linear chain the exact solver can write as a program."""


def first_smooth(ops: list) -> str | None:
    """The op type of the chain's first activation that is not piecewise linear, or None."""
    return next(
        (o.rule.op_type for o in ops if isinstance(o, Activation) and o.rule.breakpoints() is None),
        None,
    )


def piecewise_chain(problem) -> tuple[list, TopRegion]:
    """The problem's chain and top region, or :class:`NotPiecewise` naming why not."""
    from .certificate import proof_chain

    if problem.bounds is None:
        raise NotPiecewise("the exact solver needs --bounds (a box for the input)")
    found = proof_chain(problem, select=True)
    if found is None:
        raise NotPiecewise(
            "the exact solver needs one chain of affine maps and piecewise-linear activations "
            "under a Softmax, LogSoftmax or the logits (see `onnxinv inspect`)"
        )
    ops = found
    width = sum(op.M.shape[0] for op in ops if isinstance(op, Affine))
    if width > MAX_VALUES:
        raise NotPiecewise(f"the chain has {width} values, more than the exact solver writes")
    smooth = first_smooth(ops)
    if smooth:
        raise NotPiecewise(f"{smooth} is not piecewise linear: the exact solver cannot write it")
    region = TopRegion.for_objective(problem.objective)
    if region is None:
        raise NotPiecewise("the target pins no output beyond its tolerance")
    return ops, region


def analysis_of(problem) -> ExactAnalysis:
    """The problem's :class:`ExactAnalysis`, built once; :class:`NotPiecewise` (also
    remembered) where it does not apply."""
    cache = problem.shared
    if CACHE_KEY not in cache:
        try:
            cache[CACHE_KEY] = ExactAnalysis(problem)
        except NotPiecewise as exc:
            cache[CACHE_KEY] = exc
    if isinstance(cache[CACHE_KEY], NotPiecewise):
        raise cache[CACHE_KEY]
    return cache[CACHE_KEY]


def analysis_for(problem) -> ExactAnalysis | None:
    """:func:`analysis_of`, or None where it does not apply or cannot be written (the decision is
    an optional extra: a chain it fails on is a note, never a reason for the run to fail)."""
    try:
        return analysis_of(problem)
    except NotPiecewise:
        return None
    except (ValueError, ArithmeticError, MemoryError) as exc:
        problem.shared[CACHE_KEY] = NotPiecewise(str(exc))
        problem.notes.append(f"the exact solver could not write this chain ({exc})")
        return None


class ExactAnalysis:
    """One model's chain as a program, with the decision and the samplers built on it."""

    def __init__(self, problem):
        self.problem = problem
        self.ops, self.region = piecewise_chain(problem)
        self.decision: Decision | None = None
        t = time.perf_counter()
        self.program, self.proven = tightened(
            self.ops, problem.n, problem.bounds, self.region, TIGHTEN * self._limit()
        )
        self.seconds = time.perf_counter() - t  # spent on programs so far

    def _chain(self) -> tuple:
        p = self.problem
        return self.ops, p.n, p.bounds, self.region

    def _limit(self) -> float:
        limit = self.problem.settings.milp_time_limit
        if self.problem.deadline is not None:
            limit = min(limit, self.problem.deadline - time.monotonic())
        return limit

    def size(self) -> str:
        p = self.program
        return f"{p.unstable} undecided activations, {p.binaries} binaries"

    def decide(self) -> Decision:
        """Reachable (with a witness), proven unreachable, or unknown: computed once.

        On chains without max pools, branch and bound over activation splits (:mod:`.branch`,
        far stronger at proofs) and the mixed-integer program (quicker at finding inputs) take
        a share (:data:`FIRST`) of ``--milp-time-limit`` each in turn, then the search goes on
        from where it stopped with the rest; elsewhere the program has all of it.
        """
        if self.decision is not None:
            return self.decision
        lo, hi = self.problem.bounds
        box = f"[{lo:g}, {hi:g}]"
        program = f"the mixed-integer program over every activation pattern (HiGHS; {self.size()})"
        how = program
        search = branch.Search(*self._chain()) if branch.applies(self.ops) else None
        share = FIRST * self.problem.settings.milp_time_limit if search else np.inf
        status, x = ("infeasible", None) if self.proven else ("unknown (time limit)", None)
        # The search first (quick proofs), the program next (quick witnesses), then the
        # search again with the rest of the time, from where it stopped.
        for step, budget in (("search", share), ("program", share), ("search", np.inf)):
            left = min(self._limit() - self.seconds, budget)
            if not status.startswith("unknown") or left <= 0 or (step == "search" and not search):
                continue
            t = time.perf_counter()
            if step == "program":
                status, x, _ = self.program.solve(None, time_limit=left)
                how = program
            else:
                try:
                    out = search.run(left)
                    status, x = out.status, out.x
                except ArithmeticError as exc:  # (a node's linear program failed numerically)
                    status, x = f"unknown ({exc})", None
                how = (f"branch and bound over activation splits ({search.nodes} linear "
                       f"programs, HiGHS; {self.program.unstable} undecided activations)")  # fmt: skip
            self.seconds += time.perf_counter() - t
        seconds = self.seconds
        if status == "infeasible":
            self.decision = Decision(
                "unreachable",
                f"target proven unreachable within the bounds {box}: {how} is infeasible "
                f"(search complete, {seconds:.2g} s)",
                seconds=seconds,
            )
        elif status == "feasible":
            self.decision = Decision(
                "reachable",
                f"the target may be reachable within the bounds {box}: {how} found an input "
                f"meeting its necessary conditions in {seconds:.2g} s (--method exact samples "
                "such inputs)",
                witness=x,
                seconds=seconds,
            )
        else:
            self.decision = Decision(
                "unknown",
                f"whether the target is reachable within the bounds {box} is unknown: {how} "
                f"stopped after {seconds:.2g} s, {status} (raise --milp-time-limit)",
                seconds=seconds,
            )
        return self.decision

    def witnesses(self, count: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Up to ``count`` inputs meeting the top region's necessary conditions, each the
        optimum of a random linear objective (so usually on different patterns); empty when
        none exists. (The sampler then asks each pattern for the exact request.)"""
        if self.decide().status != "reachable":
            return []
        prior = self.problem.settings.prior
        if prior is not None:
            # The program's input nearest the prior (L1): a projection onto the set.
            status, x, took = self.program.solve(None, time_limit=self._limit(), near=prior)
            self.seconds += took
            return [x if status == "feasible" else self.decision.witness]
        found = [self.decision.witness]
        for _ in range(count - 1):
            if self._limit() <= 0:
                break
            status, x, took = self.program.solve(
                rng.standard_normal(self.problem.n),
                time_limit=min(self._limit(), WITNESS * self.problem.settings.milp_time_limit),
            )
            self.seconds += took
            if status != "feasible":
                break
            found.append(x)
        return found

    def sample(self, witness: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` inputs on ``witness``'s pattern that meet the request exactly (hit-and-run
        from the pattern polytope's deepest point on the slice); the witness alone, repeated,
        when that slice is flat."""
        n = self.problem.n
        lo, hi = self.problem.bounds
        P, q, A, a = pattern_polytope(self.ops, witness)
        P = np.concatenate([P, np.eye(n), -np.eye(n)])
        q = np.concatenate([q, np.full(n, hi), np.full(n, -lo)])
        reg = self.region
        G, off = reg.D @ A, reg.D @ a
        if reg.loose is not None and reg.loose.any():  # below a cap, not at a value
            P = np.concatenate([P, G[reg.loose]])
            q = np.concatenate([q, reg.cap[reg.loose] - off[reg.loose]])
            keep = ~reg.loose
            G, off = G[keep], off[keep]
            want = reg.want[keep]
        else:
            want = reg.want
        N = null_basis(G)
        prior = self.problem.settings.prior
        near = nearest(P, q, G, want - off, prior)
        start = witness if near is None else near
        found = centre(P, q, G, G @ start, N)
        if found is None or found[1] <= 1e-9 * max(1.0, hi - lo):
            return np.tile(start, (k, 1))
        if prior is None:
            return np.clip(hit_and_run(P, q, N, found[0], k, rng), lo, hi)
        # Next to the projection: points a little of the way towards the deepest point (a
        # projection is a vertex, where a walk cannot move), then short walks from them.
        lam = rng.uniform(0, PRIOR_REACH, (k, 1))
        x0 = start[None] + lam * (found[0] - start)[None]
        return np.clip(hit_and_run(P, q, N, x0, k, rng, PRIOR_STEPS, PRIOR_REACH), lo, hi)
