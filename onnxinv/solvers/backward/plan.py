"""Run the generalised method: backward through invertible blocks, LM through opaque ones.

From the output down, the request is an affine family (a point, or ``log p + c`` for a
distribution). Invertible blocks pull it back rule by rule, choosing points at nonlinearities
(:mod:`onnxinv.solvers.backward.collapse`). An opaque block, or the part of an invertible block below an
affine step that is not onto (an expanding layer, which cannot be inverted exactly), is solved by
Levenberg–Marquardt on that sub-model alone, with the family above it as target: the residual is
the request's error outside the family's free directions, so a softmax constant or a null space
stays free. For a model with a Softmax tail and an opaque body this is exactly the forward pass
on centred logits; for a fully invertible MLP no LM runs at all. LM on a block alone needs every
block below it to be pulled back exactly (else what it finds at the block's input may be out of
reach, e.g. a class token beside a patch embedding): otherwise LM runs once, from the model's
input up to the family the exact tail asks for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import onnx

from ...errors import DeadlineReached, MemoryBudgetError
from ...load import runtime
from ...load.model import extract
from ...objective import Objective, softmax
from ...partition.blocks import Block
from ...partition.bounds import interval_bounds
from ...partition.chain import compose
from ...rules.base import Family, OutsideDomain
from ...rules.linalg import null_basis
from ..base import ModelProblem, Problem
from ..starts import Starts
from .collapse import MARGIN, box, collapse, joint_collapse

EXACT_RESIDUAL = 1e-6  # a family farther than this from the rules' range is not exact
SOLVE_TOLERANCE = 1e-7  # max |residual| an intermediate LM solve aims for
COORDINATE_LIMIT = 4_000_000  # entries of a family's fixed-direction basis, at most


class FamilyObjective:
    """Residual of a sub-model's output against per-sample families ``v0[b] + V u``."""

    def __init__(self, family: Family, coordinates: bool = True):
        self.v0 = family.v0
        self.V = family.V
        d, free = family.V.shape
        # Coordinates in the directions the family fixes (orthonormal, d − free of them): one
        # residual per equation, so each Jacobian costs d − free backward passes, not d.
        # (Past COORDINATE_LIMIT entries the basis costs more memory than it saves; without
        # ``coordinates`` the residual keeps the values' own axes, as the objective's does.)
        self.Q = None
        if coordinates and free and d * (d - free) <= COORDINATE_LIMIT:
            self.Q = null_basis(family.V.T)
        self.size = d - free if self.Q is not None else d

    def residual(self, y, index=None):
        import torch

        v0 = torch.as_tensor(self.v0, dtype=y.dtype, device=y.device)
        if index is not None:
            v0 = v0[index]
        e = y.reshape(y.shape[0], -1) - v0
        if self.Q is not None:
            return e @ torch.as_tensor(self.Q, dtype=y.dtype, device=y.device)
        if self.V.shape[1]:
            V = torch.as_tensor(self.V, dtype=y.dtype, device=y.device)
            e = e - (e @ V) @ V.T
        return e

    def error_from_residual(self, r):
        # The Euclidean norm of the coordinates bounds the largest miss in any direction.
        return r.norm(dim=1) if self.Q is not None else r.abs().amax(1)


@dataclass
class BackwardOutcome:
    """Flat inputs (B, n), whether each met the request exactly on the way down (``solved``;
    the onnxruntime check judges the others), and its LM iterations."""

    x: np.ndarray
    solved: np.ndarray
    iterations: np.ndarray | None = None


def initial_family(objective: Objective, b: int) -> Family:
    """The request at the graph output for ``b`` samples."""
    t = objective.target.reshape(1, -1).astype(np.float64)
    if objective.kind == "values":
        return Family.point(np.repeat(t, b, 0))
    if objective.output_space == "log-probabilities":
        return Family.point(np.repeat(np.log(t), b, 0))
    if objective.output_space == "logits":
        k = t.shape[1]
        return Family(np.repeat(np.log(t), b, 0), np.full((k, 1), 1 / np.sqrt(k)))
    return Family.point(np.repeat(t, b, 0))


class BackwardPass:
    """An executable plan for one whole-model problem (rules' SVDs cached between runs)."""

    def __init__(self, problem: ModelProblem):
        part = problem.partition
        self.problem, self.part = problem, part
        self.loaded, self.objective, self.settings = (
            problem.loaded,
            problem.objective,
            problem.settings,
        )
        self.bounds = problem.bounds
        self.sizes = {t: int(np.prod(s)) for t, s in part.shapes.items()}
        self.ibp: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        first = part.blocks[0] if part.blocks else None
        bounds = self.bounds
        if bounds is not None and first is not None and first.kind == "invertible":
            n = self.sizes[part.input]
            self.ibp = interval_bounds(first.steps, np.full(n, bounds[0]), np.full(n, bounds[1]))
        self._submodels: dict[tuple[str, str], onnx.ModelProto] = {}
        self._modules: dict[tuple[str, str], object] = {}
        self._why: dict[tuple[str, str], str | None] = {}  # why a block has no torch module
        self._runners: dict[tuple[str, str], object] = {}
        self.used_lm = False
        self.notes: list[str] = []
        self.jacobian_sources: set[str] = set()
        self._bottom = self._bottom_map(first) if bounds is not None and first else None
        self._splits = {id(b): self._split_tensor(b) for b in part.blocks if b.kind == "invertible"}
        self._chain = self._chain_solver()

    def _chain_solver(self):
        """The joint, batched backward pass for the first block, where it applies."""
        from .newton import ChainSolver

        found = self.problem.chain
        if found is None:
            return None
        ops, top = found
        whole = len(self.part.blocks) == 1
        if top and not whole:
            return None
        n = self.sizes[self.part.input]
        tops = {s.rule.op_type for s in top}
        check = self._top_check(tops) if whole else None
        region = None
        if whole and self._logit_top(tops):
            # Classes far below the tolerance need only stay small, not match log p exactly.
            from ...objective import TopRegion

            region = TopRegion.for_objective(self.objective)
        return ChainSolver(
            ops, top, n, self.bounds, self.settings, self.deadline, check,
            0.5 * self.objective.tolerance, region,
        )  # fmt: skip

    def _logit_top(self, tops: set[str]) -> bool:
        """Whether the chain's top values are the logits of a distribution target."""
        obj = self.objective
        if obj.kind == "values":
            return False
        return bool(tops & {"Softmax", "LogSoftmax"}) or (not tops and obj.output_space == "logits")

    def _top_check(self, tops: set[str]):
        """The user's check as a function of the chain's top values (None: not expressible)."""
        obj = self.objective
        target = obj.target.reshape(1, -1).astype(np.float64)
        if obj.kind == "values":
            return None if tops else (lambda z: np.abs(z - target).max(1))

        if self._logit_top(tops):
            return lambda z: np.abs(softmax(z) - target).max(1)
        if not tops and obj.output_space == "probabilities":
            return lambda z: np.abs(z - target).max(1)
        return None

    def _split_tensor(self, block: Block) -> str | None:
        """Where LM takes over in ``block``, decided from its structure alone (None: nowhere).

        Below an affine step that is not onto the backward pass cannot be exact, so LM solves
        from the block's input up to one of the families above it: the one with the fewest
        equations (``size − free``), and among those the smallest tensor, since each Jacobian
        costs one backward pass per residual. Free directions are counted without running the
        pass, so no work is spent on layers that LM will redo.
        """
        mc = self.settings.max_condition
        top = block is self.part.blocks[-1]
        free = initial_family(self.objective, 1).free if top else 0
        records = [(block.output, self.sizes[block.output] - free, self.sizes[block.output])]
        for step in reversed(block.steps):
            rule = step.rule
            if rule.kind == "affine":
                if not rule.onto(mc):
                    return min(records, key=lambda r: (r[1], r[2]))[0]
                free += rule.nullity(mc)
            else:
                free = rule.free_directions().shape[1]
            size = self.sizes[step.input]
            records.append((step.input, size - free, size))
        return None

    def _bottom_map(self, block: Block):
        """For a bounded first block: (index of its lowest nonlinearity, composed M, c below it).

        The nonlinearity's point is then chosen jointly with the input (``joint_collapse``).
        """
        if block.kind != "invertible":
            return None
        j = next((j for j, s in enumerate(block.steps) if s.rule.kind != "affine"), None)
        if not j or block.steps[j].rule.smooth_inverse() is None:
            return None  # (no nonlinearity, no affine map below it, or not a smooth one)
        mc = compose([step.rule for step in block.steps[:j]])
        return None if mc is None else (j, *mc)

    # -- backward through one invertible block ------------------------------------------------
    def _backward(self, block: Block, fam: Family, rng, exact):
        mc, std = self.settings.max_condition, self.settings.null_scale
        split = self._splits.get(id(block))
        if split == block.output:
            return None, (block.output, fam)
        for step in reversed(block.steps):
            rule = step.rule
            if rule.kind == "affine":
                fam = rule.pullback(fam, mc)
                if step.input == split:
                    return None, (step.input, fam)
            else:
                lo, hi = box(
                    rule.output_domain(),
                    self.sizes[step.output],
                    MARGIN,
                    self.ibp.get(step.output),
                )
                y, ok = collapse(fam, lo, hi, rng, std, self.deadline)
                j = block.steps.index(step)
                if (
                    self._bottom is not None
                    and block is self.part.blocks[0]
                    and j == self._bottom[0]
                ):
                    _, M, c = self._bottom
                    n = M.shape[1]
                    y, ok = joint_collapse(
                        fam,
                        rule.smooth_inverse(),
                        M,
                        c,
                        np.full(n, self.bounds[0]),
                        np.full(n, self.bounds[1]),
                        lo,
                        hi,
                        y,
                        rng,
                        deadline=self.deadline,
                    )
                exact &= ok & (fam.residual <= EXACT_RESIDUAL)
                try:
                    fam = rule.sample_preimage(y, rng, std)
                except OutsideDomain:
                    # The request misses what this operator can output (e.g. a probability of
                    # exactly 0): continue from the nearest point it can, flagged inexact.
                    exact[:] = False
                    fam = rule.sample_preimage(rule.nearest(y), rng, std)
                if step.input == split:
                    return None, (step.input, fam)
        return fam, None

    # -- LM on a sub-model ------------------------------------------------------------------------
    def _solve(self, src: str, dst: str, fam: Family, rng, exact, iterations) -> Family:
        from ..forward.solver import ForwardSolver
        from ..residual import convert_or_note, make_residual

        self.used_lm = True
        b = len(fam.v0)
        if self._expired():
            # Out of time: no conversion or LM for the blocks left; the samples stay flagged.
            exact[:] = False
            return Family.point(rng.standard_normal((b, self.sizes[src])))
        objective = FamilyObjective(fam, coordinates=not self._is_objective(dst))
        key = (src, dst)
        if key not in self._modules:
            self._modules[key], note = convert_or_note(self._submodel(src, dst))
            self._why[key] = note
            self.notes += [note] if note else []
        batched = self.loaded.batched
        sample = self.part.shapes[src]
        shape = (-1, *sample) if batched else self.loaded.feed_shape(sample)
        residual = make_residual(
            self._modules[key], objective, self._runner(src, dst), sample, shape, batched,
            self.settings.device, why=self._why.get(key),
        )  # fmt: skip
        self.jacobian_sources.add(residual.jacobian_source)
        at_input = src == self.part.input
        error, tol = objective.error_from_residual, SOLVE_TOLERANCE * (1 + np.abs(fam.v0).max())
        if self._is_objective(dst):
            # The request is the objective's own family, so its residuals are the objective's:
            # stop on the user's check (probabilities) at half the tolerance, as forward does.
            error, tol = self.objective.error_from_residual, 0.5 * self.objective.tolerance
        block = Problem(
            settings=self.settings,
            n=self.sizes[src],
            tol=float(tol),
            error=error,
            make_residual=lambda: residual,
            bounds=self.bounds if at_input else None,
            deadline=self.deadline,
            max_memory=self.problem.max_memory,
            make_starts=self.problem.starts if at_input else self._reachable_starts(src),
            name=f"the block {src!r} -> {dst!r}",
        )
        try:
            out = ForwardSolver(block).solve_chunk(b, block.starts(rng))
        except MemoryBudgetError as exc:
            ops = sorted({n.op_type for n in self._submodel(src, dst).graph.node})
            raise MemoryBudgetError(
                f"{exc}, for LM on the block {src!r} -> {dst!r} ({', '.join(ops[:6])})"
            ) from None
        exact &= out.converged.numpy()
        iterations += out.iterations.numpy()
        return Family.point(out.x.numpy())

    def _reachable_starts(self, src: str):
        """Starting values for tensor ``src``: the model's own values on random inputs."""
        run = self._runner(self.part.input, src)
        shape = self.loaded.input_shape

        def make(rng):
            sampler = self.problem.input_starts(rng)

            def draw(k: int):
                import torch

                y = run(sampler(k).numpy().reshape((k, *shape)))
                return torch.from_numpy(y.reshape(k, -1).astype(np.float64))

            return draw

        return make

    @property
    def deadline(self) -> float | None:
        """The problem's deadline, read when used (auto caps it during its pilots)."""
        return self.problem.deadline

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _is_objective(self, dst: str) -> bool:
        """Whether the family asked of ``dst`` is exactly the objective's residual family."""
        obj = self.objective
        if obj.solve_on == "logits":
            return dst == self.loaded.logits_name
        return dst == self.part.output and obj.transform in ("identity", "centre")

    def _submodel(self, src: str, dst: str) -> onnx.ModelProto:
        """The graph from tensor ``src`` to tensor ``dst`` (cached: extraction infers shapes)."""
        if (src, dst) not in self._submodels:
            whole = src == self.part.input and dst == self.part.output
            sub = self.part.model if whole else extract(self.part.model, src, dst, False)
            self._submodels[(src, dst)] = sub
        return self._submodels[(src, dst)]

    def _runner(self, src: str, dst: str):
        """onnxruntime on the ``src`` → ``dst`` sub-model: (k, *shape of src) → (k, ...) values.

        A model whose graph fixes a batch of one is run one sample at a time.
        """
        if (src, dst) not in self._runners:
            sub = self._submodel(src, dst)
            sess = runtime.session(sub.SerializeToString(), self.settings.device)
            name, dtype = sub.graph.input[0].name, self.loaded.input_dtype
            sample = self.part.shapes[src]

            def run(x: np.ndarray) -> np.ndarray:
                x = np.asarray(x, dtype=dtype)
                if self.loaded.batched:
                    return sess.run(None, {name: x.reshape((len(x), *sample))})[0]
                shape = self.loaded.feed_shape(sample)
                return self.loaded.stack([sess.run(None, {name: xi.reshape(shape)})[0] for xi in x])

            self._runners[(src, dst)] = run
        return self._runners[(src, dst)]

    def _pullable_below(self, block: Block) -> bool:
        """Whether every block below ``block`` is pulled back exactly (no LM below it).

        Only then is any value LM finds at ``block``'s input reachable from the model's input:
        below an opaque block (a patch embedding beside a constant class token) or a layer that
        is not onto, LM on ``block`` alone aims at values nothing below can produce.
        """
        blocks = self.part.blocks
        for i, b in enumerate(blocks[: blocks.index(block)]):
            # (The chain pass composes its block's maps: a step that is not onto is pulled
            # back jointly, as long as the composition can be onto.)
            chained = i == 0 and self._chain is not None and self._chain_can_be_onto(b)
            if b.kind != "invertible" or (self._splits.get(id(b)) is not None and not chained):
                return False
        return True

    def _chain_can_be_onto(self, block: Block) -> bool:
        """Whether no tensor along ``block`` has fewer values than its output: otherwise the
        composition's rank is below its output's size (a ViT's patch embedding beside a
        constant class token), and no input reaches a generic point there."""
        along = [self.sizes[block.input], *(self.sizes[s.output] for s in block.steps)]
        return min(along) >= self.sizes[block.output]

    @property
    def lm_from_input(self) -> bool:
        """Whether the plan is the forward pass in all but name: its first LM solve starts at
        the model's input (no chain pass, and the block that needs LM cannot be solved alone)
        and only affine maps and the Softmax tail lie above where that LM stops, so its
        equations are the forward pass's. (An exactly inverted Tanh above it, say, makes the
        plan's LM a different, easier problem.)"""
        blocks = self.part.blocks
        for i in range(len(blocks) - 1, -1, -1):
            block = blocks[i]
            if i == 0 and self._chain is not None:
                return False
            split = self._splits.get(id(block)) if block.kind == "invertible" else None
            if block.kind == "invertible" and split is None:
                continue
            if i and self._pullable_below(block):
                return False
            above = [s for b in blocks[i + 1 :] for s in b.steps]
            if split is not None:
                ins = [s.input for s in block.steps]  # (the split may be the block's output)
                cut = ins.index(split) if split in ins else len(ins)
                above = block.steps[cut:] + above
            return all(
                s.rule.kind == "affine" or s.rule.op_type in ("Softmax", "LogSoftmax")
                for s in above
            )
        return False

    # -- the whole plan ---------------------------------------------------------------------------
    def run(self, b: int, rng: np.random.Generator) -> BackwardOutcome:
        iterations = np.zeros(b, dtype=np.int64)  # (LM's, per sample)
        try:
            out = self._run(b, rng, iterations)
        except DeadlineReached:  # (inside an iterative pseudo-inverse): random inputs, flagged
            x = Starts(self.sizes[self.part.input], rng, self.bounds, self.settings.init_std)(b)
            out = BackwardOutcome(x.numpy(), np.zeros(b, dtype=bool))
        out.iterations = iterations
        return out

    @property
    def chain_only(self) -> bool:
        """Whether a run is the chain's numpy alone (no LM, no torch): chunks may then run in
        parallel threads."""
        return self._chain is not None and len(self.part.blocks) == 1

    def _run(self, b: int, rng: np.random.Generator, iterations: np.ndarray) -> BackwardOutcome:
        fam = initial_family(self.objective, b)
        exact = np.ones(b, dtype=bool)
        n = self.sizes[self.part.input]
        for block in reversed(self.part.blocks):
            if self._expired():
                # Out of time: skip the blocks left; random inputs, flagged, as forward would.
                x = Starts(n, rng, self.bounds, self.settings.init_std)(b).numpy()
                return BackwardOutcome(x, np.zeros(b, dtype=bool))
            if block is self.part.blocks[0] and self._chain is not None:
                self._chain.deadline = self.deadline  # (auto's pilots cap it for a while)
                x, ok = self._chain.solve(fam, rng)
                exact &= ok & (fam.residual <= EXACT_RESIDUAL)
                return BackwardOutcome(x, exact)
            if block.kind == "invertible":
                below, split = self._backward(block, fam, rng, exact)
                if split is None:
                    fam = below
                    continue
                dst, fam = split
            else:
                dst = block.output
            if not self._pullable_below(block):
                # What LM would find at this block's input need not be reachable from the
                # model's input: solve from the input up to here at once (the forward pass on
                # the family the exact tail asks for).
                fam = self._solve(self.part.input, dst, fam, rng, exact, iterations)
                break
            fam = self._solve(block.input, dst, fam, rng, exact, iterations)
        lo, hi = (np.full(n, v) for v in self.bounds) if self.bounds else box(None, n, 0.0)
        x, ok = collapse(fam, lo, hi, rng, self.settings.null_scale, self.deadline)
        exact &= ok & (fam.residual <= EXACT_RESIDUAL)
        return BackwardOutcome(x, exact)
