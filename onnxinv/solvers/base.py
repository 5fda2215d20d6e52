"""The contract every solver follows: a :class:`Problem` in, an :class:`SolverOutcome` out.

A *problem* is an inversion to solve: find flat inputs ``x`` (n values each) inside optional
box bounds with ``residual(x) = 0``, judged by an error measure and a tolerance. It may be the
whole model (:class:`ModelProblem`, which adds the loaded model, the objective, the rule
registry and the onnxruntime check) or one block of it (the planner builds those for the
opaque parts of a graph). A *solver* is a class constructed on a problem that returns, for
``k`` samples, one :class:`SolverOutcome`: samples, per-sample error, iterations, paths and notes.

Solvers register like inverse rules (:mod:`onnxinv.solvers.registry`, entry-point group
``onnxinv.solvers``); ``--method NAME`` runs the solver registered as NAME.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import OptionError, set_phase
from .starts import MIN_SIDE, Starts, field_axes, nearer_family

STARTS_SEED = 7  # --starts auto probes with a generator seeded seed + this

if TYPE_CHECKING:
    from ..load.model import LoadedModel
    from ..objective import Objective
    from ..settings import Settings
    from ..verify import Verification
    from .residual import Residual


@dataclass
class Problem:
    """One inversion: flat inputs in R^n, a residual to zero, bounds, budgets and settings.

    Attributes:
        settings: the run's settings (iterations, restarts, learning rates...).
        n: values per sample.
        tol: a sample is solved when ``error(residual) <= tol``.
        error: per-sample error of residuals (B, m) -> (B,) (torch), in the space the user's
            check measures.
        difference: residuals (B, m) -> the per-sample difference from the target in that
            space (B, m'); what a loss-minimising solver (gd) squares. Default: the residual.
        bounds: box every input value must lie in, or None.
        deadline: ``time.monotonic()`` value after which solvers return what they have.
        max_memory: bytes the solvers may hold at once (None: no limit).
        make_residual: builds the residual provider on first use (it may convert the model).
        make_starts: ``make_starts(rng)`` gives a callable drawing k starting points (k, n);
            default :class:`Starts` (uniform in the bounds, else normal(0, init_std)).
        scaling: ``(s, p)``: the forward pass solves on its residual in the check's units
            (:mod:`onnxinv.solvers.forward.scaled`); None: as it is.
        name: what the problem is, for error messages ("the whole model", "block a -> b").
    """

    settings: Settings
    n: int
    tol: float
    error: Callable[[Any], Any]
    make_residual: Callable[[], Residual]
    difference: Callable[[Any], Any] | None = None
    bounds: tuple[float, float] | None = None
    deadline: float | None = None
    max_memory: int | None = None
    make_starts: Callable[[np.random.Generator], Callable[[int], Any]] | None = None
    scaling: tuple[np.ndarray, np.ndarray] | None = None
    name: str = "the whole model"
    notes: list[str] = field(default_factory=list)

    @cached_property
    def residual(self) -> Residual:
        return self.make_residual()

    def starts(self, rng: np.random.Generator) -> Callable[[int], Any]:
        if self.make_starts is not None:
            return self.make_starts(rng)
        return Starts(self.n, rng, self.bounds, self.settings.init_std)

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def diff(self, r):
        return r if self.difference is None else self.difference(r)


class ModelProblem(Problem):
    """The whole model: adds the loaded model, the objective, the rules and the final check."""

    def __init__(
        self,
        settings: Settings,
        loaded: LoadedModel,
        objective: Objective,
        *,
        deadline: float | None,
        max_memory: int | None,
        registry=None,
    ):
        from .residual import build_residual

        notes = list(loaded.notes)

        def make_residual():  # refers to the notes list, not to self: no reference cycle
            set_phase("while converting the model for Jacobians")
            residual, note = build_residual(loaded, objective, device=settings.device)
            notes.extend([note] if note else [])
            return residual

        # Stop at half the tolerance: float32 rounding in the verification run must not tip
        # a sample over it.
        super().__init__(
            settings=settings,
            n=loaded.input_size,
            tol=0.5 * objective.tolerance,
            error=objective.error_from_residual,
            difference=objective.difference_from_residual,
            make_residual=make_residual,
            bounds=settings.bounds,
            deadline=deadline,
            max_memory=max_memory,
            scaling=objective.scaling(),
            notes=notes,
            name=f"the whole model ({loaded.input_name!r} -> "
            f"{loaded.logits_name if objective.solve_on == 'logits' else loaded.output_name!r})",
        )
        self.loaded, self.objective = loaded, objective
        self.prior = settings.prior
        if self.prior is not None and self.prior.size != self.n:
            raise OptionError(
                f"prior has {self.prior.size} values, the input {loaded.input_name!r} has "
                f"{self.n} ({'x'.join(map(str, loaded.input_shape))})"
            )
        if self.prior is not None and self.bounds is not None:
            lo, hi = self.bounds
            if self.prior.min() < lo or self.prior.max() > hi:
                self.notes.append("the prior lies partly outside --bounds: starts are clipped")
        self._registry = registry
        self.jacobian_sources: set[str] = set()
        #: Analyses that several solvers of one run share, built by the first that needs one
        #: (the exact solver's, keyed by :data:`onnxinv.solvers.exact.analysis.CACHE_KEY`).
        self.shared: dict[str, Any] = {}

    @property
    def residual_built(self) -> Residual | None:
        """The residual provider if a solver has built it (the report names its Jacobians),
        without building it."""
        return self.__dict__.get("residual")

    @cached_property
    def registry(self):
        """The inverse rules: the one passed in, or the installed ones minus disabled plugins."""
        from ..rules import default_registry

        return self._registry or default_registry(self.settings.disable_plugins)

    @cached_property
    def partition(self):
        """The graph's invertible and opaque blocks (and the plan's description for reports)."""
        from ..partition.blocks import partition

        set_phase("while partitioning the graph")
        return partition(self.loaded, self.registry, self.settings.seed)

    @property
    def plan_info(self) -> list[str] | None:
        """The partition's description for reports, if a solver partitioned the graph (large
        affine maps are not probed for being onto here: see ``describe``)."""
        if "partition" not in self.__dict__:
            return None
        from ..partition.blocks import describe

        return [line.strip() for line in describe(self.partition, self.settings.max_condition,
                                                  probe=False)]  # fmt: skip

    @cached_property
    def chain(self) -> tuple[list, list] | None:
        """The first block as a chain (:func:`~onnxinv.partition.chain.chain_of`), or None.

        Composed once per run: the certificate and the plan both use it.
        """
        from ..partition.chain import chain_of

        blocks = self.partition.blocks
        return chain_of(blocks[0]) if blocks and blocks[0].kind == "invertible" else None

    def starts(self, rng: np.random.Generator):
        """Starting points for the model's input: next to the prior when there is one, else
        :meth:`input_starts`."""
        if self.make_starts is None and self.prior is not None:
            return Starts(self.n, rng, self.bounds, self.settings.init_std, prior=self.prior)
        if self.make_starts is None:
            return self.input_starts(rng)
        return super().starts(rng)

    def input_starts(self, rng: np.random.Generator) -> Starts:
        """Random inputs of the run's family (``--starts``, see :attr:`start_family`)."""
        shape = tuple(self.loaded.input_shape) if self.start_family == "smooth" else None
        return Starts(self.n, rng, self.bounds, self.settings.init_std, shape=shape)

    @cached_property
    def start_family(self) -> str:
        """``"uniform"`` or ``"smooth"``: ``--starts``, or under ``auto`` the family whose
        outputs lie nearer the target (:func:`~onnxinv.solvers.starts.nearer_family`, a few
        onnxruntime runs with a generator of its own, so the run's draws are not shifted)."""
        family, shape = self.settings.starts, tuple(self.loaded.input_shape)
        if family == "smooth" and field_axes(shape) is None:
            raise OptionError(
                f"--starts smooth needs an input with two axes of {MIN_SIDE} or more values; "
                f"{self.loaded.input_name!r} is {'x'.join(map(str, shape))}"
            )
        if family != "auto":
            return family
        which = "logits" if self.objective.solve_on == "logits" else "pruned"

        def norms(x: np.ndarray) -> np.ndarray:
            y = self.loaded.run(x.reshape((len(x), *shape)), which=which)
            r = np.asarray(self.objective.residual(np.asarray(y, dtype=np.float64)))
            return np.where(np.isfinite(r).all(1), np.linalg.norm(r, axis=1), np.inf)

        rng = np.random.default_rng(self.settings.seed + STARTS_SEED)
        family, note = nearer_family(shape, norms, rng, self.bounds, self.settings.init_std)
        if note:
            self.notes.append(note)
        return family

    def verify(self, x: np.ndarray) -> Verification:
        """onnxruntime on the original model: flat or shaped samples -> verified flags."""
        from ..verify import verify

        x = np.asarray(x).reshape((len(x), *self.loaded.input_shape))
        return verify(self.loaded, self.objective, x, self.bounds)


@dataclass
class SolverOutcome:
    """What every solver returns for k samples.

    Attributes:
        x: (k, n) flat samples, float64.
        error: (k,) the solver's own error for each sample (``nan`` where it has none); the
            onnxruntime check decides success.
        iterations: (k,) iterations spent on each sample (all attempts).
        paths: per sample, how it was produced ("forward", "backward+lm", ...).
        notes: things the user should know (fallbacks, time-outs).
        verification: the onnxruntime check of ``x`` when the solver already ran it.
        timed_out: the deadline passed while solving.
    """

    x: np.ndarray
    error: np.ndarray
    iterations: np.ndarray
    paths: list[str]
    notes: list[str] = field(default_factory=list)
    verification: Verification | None = None
    timed_out: bool = False

    @classmethod
    def unsolved(cls, x: np.ndarray, path: str) -> SolverOutcome:
        """Samples that no solver worked on (e.g. drawn after the deadline)."""
        k = len(x)
        return cls(np.asarray(x, dtype=np.float64), np.full(k, np.nan),
                   np.zeros(k, dtype=np.int64), [path] * k, timed_out=True)  # fmt: skip


#: The earlier name of :class:`SolverOutcome`, for solver plugins written against it.
Outcome = SolverOutcome


class Solver(ABC):
    """Base class of every solver (registered by ``name``; ``summary`` is one line).

    Subclasses implement :meth:`solve`; :meth:`prepare` does the up-front work (conversion,
    planning) that the report times separately. ``whole_model`` solvers need a
    :class:`ModelProblem` (the graph, the rules, the check); the others solve any problem,
    a block of a model included.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    whole_model: ClassVar[bool] = False

    def __init__(self, problem: Problem):
        if self.whole_model and not isinstance(problem, ModelProblem):
            raise OptionError(f"method {self.name!r} needs a whole model, not {problem.name}")
        self.problem = problem

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Work done once before the first :meth:`solve` (default: nothing)."""

    @abstractmethod
    def solve(
        self,
        k: int,
        rng: np.random.Generator,
        x0: np.ndarray | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> SolverOutcome:
        """``k`` samples; from starting points ``x0`` (k, n) where the solver uses them."""

    def run(self, k: int, rng: np.random.Generator, on_progress=None) -> SolverOutcome:
        """:meth:`solve`, unless the deadline has passed: then random starts, flagged."""
        if self.problem.expired():
            return SolverOutcome.unsolved(self.problem.starts(rng)(k).numpy(), "timed out")
        return self.solve(k, rng, on_progress=on_progress)

    def again(self, k: int, rng: np.random.Generator) -> SolverOutcome:
        """New samples to replace repeats of earlier ones (default: :meth:`run` once more)."""
        return self.run(k, rng)
