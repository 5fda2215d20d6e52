"""``invert()``: validate → load → run the chosen solver → verify → result."""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import objective as objective_mod
from .budget import parse_memory
from .distinct import duplicate_rows
from .errors import (
    DeadlineReached,
    MemoryBudgetError,
    ModelError,
    OnnxInvError,
    OptionError,
    UnreachableTargetError,
    current_phase,
    first_line,
    set_deadline,
    set_phase,
)
from .load import model as model_mod
from .result import InversionResult
from .settings import Settings, describe_options, parse_bounds, parse_shape
from .solvers.base import ModelProblem, Solver, SolverOutcome
from .solvers.exact.certificate import certify
from .solvers.registry import check_method
from .target import Target
from .verify import Verification

__all__ = ["invert", "parse_bounds", "parse_shape"]


def _contained(fn):
    """Run ``fn`` so that it ends in a result or a typed one-line error, never a bare traceback.

    Dependencies' warnings become the result's notes instead of reaching the terminal; an
    unexpected exception (a bug of ours or a dependency's, on a model onnxruntime runs) becomes a
    :class:`ModelError` naming the phase it happened in (``--debug`` re-raises it).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                try:
                    result = fn(*args, **kwargs)
                finally:
                    set_deadline(None)  # (the run's deadline ends with it)
            except UnreachableTargetError as exc:
                if exc.result is not None:
                    exc.result.notes.extend(_warning_notes(caught))
                raise
            except (OnnxInvError, KeyboardInterrupt):
                raise
            except MemoryError:
                raise MemoryBudgetError(
                    "out of memory: lower --max-memory, --chunk-size or --samples"
                ) from None
            except Exception as exc:
                if os.environ.get("ONNXINV_DEBUG"):
                    raise
                raise ModelError(
                    f"onnxinv failed {current_phase()}: {type(exc).__name__}: {first_line(exc)} "
                    "(run with --debug for the traceback, and please report it)"
                ) from exc
        result.notes.extend(_warning_notes(caught))
        return result

    return wrapper


@_contained
def invert(
    model: model_mod.ModelLike,
    target: Target | dict | str | os.PathLike,
    settings: Settings | None = None,
    *,
    registry=None,
    on_progress: Callable[[int], None] | None = None,
    **options: Any,
) -> InversionResult:
    """Find ``samples`` different inputs that ``model`` maps to ``target``.

    Args:
        model: path to an .onnx file (external data beside it), its bytes, or a ModelProto.
        target: a :class:`Target`, a target dict, or a path to a target JSON file.
        settings: a :class:`~onnxinv.settings.Settings`; ``options`` override its fields.
        registry: a :class:`~onnxinv.rules.Registry` to use instead of the installed rules.
        on_progress: called with the number of samples that just finished.
        **options: any :class:`~onnxinv.settings.Settings` field (listed below).

    Returns:
        An :class:`InversionResult`; every sample carries its onnxruntime verified flag.

    Raises:
        OnnxInvError: a subclass naming the problem, for any bad argument, model or target;
            :class:`UnreachableTargetError` when no sample verified.
    """
    t0 = time.perf_counter()
    set_phase("while checking the arguments")
    s = Settings.create(settings, **options)
    deadline = None if s.timeout is None else time.monotonic() + s.timeout
    set_deadline(deadline)  # (for computations deep below the solvers: see errors.check_deadline)
    check_method(s.method)  # (the first call imports the solvers, torch included: seconds)
    tgt = Target.coerce(target)
    solver_class = _solver_class(s, registry)

    set_phase("while loading the model")
    loaded = _until(None if deadline is None else deadline + LOAD_GRACE, functools.partial(
        model_mod.load, model, input=s.input, output=s.output or tgt.output, device=s.device,
        seed=s.seed, fixed=s.fixed, input_shape=s.input_shape, deadline=deadline,
    ))  # fmt: skip
    if loaded is OVERTIME:
        raise UnreachableTargetError(_late(s.timeout, "while loading the model"))
    set_phase("while reading the model's output")
    objective = objective_mod.build(loaded, tgt, seed=s.seed)
    problem = ModelProblem(
        s, loaded, objective, deadline=deadline, max_memory=parse_memory(s.max_memory),
        registry=registry,
    )  # fmt: skip
    set_phase("while bounding what the box can reach")
    proof = stopped = None
    if s.bounds is not None and not problem.expired():
        proof = _until(deadline, functools.partial(certify, problem))
    if proof is OVERTIME:
        proof, stopped = None, current_phase()
    if proof is not None:
        raise UnreachableTargetError(proof, proven=True)
    t1 = time.perf_counter()

    set_phase(f"while preparing the {s.method} solver")
    solver = solver_class(problem)
    if not problem.expired() and _until(deadline, solver.prepare) is OVERTIME:
        stopped = current_phase()
    if stopped is not None:
        problem.notes.append(f"the {s.timeout:g} s timeout was reached {stopped}")
    late = stopped is not None or problem.expired()
    if late and s.samples * loaded.run_seconds > CHECK_LATE:
        # Nothing will be solved, and checking k random starts would overrun the timeout.
        raise UnreachableTargetError(_late(s.timeout, stopped or current_phase()))
    t2 = time.perf_counter()

    set_phase(f"while solving ({s.method})")
    rng = np.random.default_rng(s.seed)
    check, outcome = _solve_in_batches(solver, s.samples, rng, on_progress)
    check, outcome = _distinct(solver, rng, check, outcome, problem.notes)
    timed_out = deadline is not None and time.monotonic() > deadline
    timings = {"load": t1 - t0, "convert": t2 - t1, "solve": time.perf_counter() - t2}
    timings["total"] = time.perf_counter() - t0  # each sample is verified as it is solved
    result = _result(problem, tgt, check, outcome, timings)
    if result.n_verified or timed_out:
        return _checked(result, timed_out)
    set_phase("while deciding whether the target is reachable")
    decision = _decide(problem)
    if decision is not None and decision.status == "unreachable":
        raise UnreachableTargetError(decision.message, result=result, proven=True)
    return _checked(result, timed_out, None if decision is None else decision.message)


class _Overtime(BaseException):
    """Raised in the main thread by :func:`_until`'s alarm (a BaseException, so that code which
    catches Exception to try another way does not swallow it)."""


#: What :func:`_until` returns for a step it stopped.
OVERTIME = object()

#: Seconds past the deadline that loading may take before it is stopped (with no result).
LOAD_GRACE = 2.0

#: Seconds of onnxruntime runs allowed past the deadline for checking random starts, when the
#: deadline passed before solving: beyond that the run ends with a time-out error instead.
CHECK_LATE = 2.0


def _late(timeout: float | None, phase: str) -> str:
    return (
        f"timed out after {timeout:g} s {phase}, before any sample was solved; allow a longer "
        "--timeout"
    )


def _until(deadline: float | None, step: Callable[[], Any]) -> Any:
    """``step()``, or :data:`OVERTIME` when it is still running at ``deadline`` (or stopped
    itself there with :class:`~onnxinv.solvers.residual.DeadlineReached`).

    Solvers check the deadline themselves; this stops a step before solving that does not
    (loading a huge model, an iterative pseudo-inverse while partitioning), so that a run ends
    within seconds of its timeout. It is a SIGALRM timer, so it works only in the main thread
    and only when nothing else uses SIGALRM; elsewhere ``step()`` runs to its end. A step stuck
    inside one C call (an onnxruntime session, shape inference) is stopped when that call
    returns.
    """
    usable = (
        deadline is not None
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )
    if not usable:
        try:
            return step()
        except Exception as exc:
            if _deadline_reached(exc):
                return OVERTIME
            raise
    armed = [True]

    def alarm(signum, frame):
        if armed[0]:
            raise _Overtime

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        # Repeats each second, in case the step swallowed the first one.
        # (+10 ms: then time.monotonic() is past the deadline too when the alarm comes.)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0) + 0.01, 1.0)
        try:
            return step()
        finally:
            armed[0] = False  # an alarm after this line is ignored
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Overtime:
        return OVERTIME
    except Exception as exc:
        if _deadline_reached(exc):
            return OVERTIME
        raise
    finally:
        signal.signal(signal.SIGALRM, previous)


def _deadline_reached(exc: Exception) -> bool:
    """Whether ``exc`` is a step's own way of stopping at the deadline."""
    return isinstance(exc, DeadlineReached)


def _solve_in_batches(
    solver: Solver, k: int, rng, on_progress
) -> tuple[Verification, SolverOutcome]:
    """``k`` samples, solved and checked ``STREAM`` at a time.

    Only each batch's float64 working copy exists at once; what is kept is onnxruntime's
    check (the inputs in the model's dtype), written into arrays sized for all ``k``, so
    memory beyond the result itself stays flat in ``k``.
    """
    checks, outcomes = [], []
    for first in range(0, k, STREAM):
        out = solver.run(min(STREAM, k - first), rng, on_progress)
        checks.append(out.verification or solver.problem.verify(out.x))
        out.x = out.verification = None  # (the float64 copy goes now)
        outcomes.append(out)
    check = checks[0] if len(checks) == 1 else _joined(checks)
    out = SolverOutcome(
        check.inputs.reshape(len(check.inputs), -1),  # (a view: the checked float32 inputs)
        np.concatenate([o.error for o in outcomes]),
        np.concatenate([o.iterations for o in outcomes]),
        [p for o in outcomes for p in o.paths],
        list(dict.fromkeys(n for o in outcomes for n in o.notes)),
        check,
        any(o.timed_out for o in outcomes),
    )
    return check, out


def _joined(parts: list[Verification]) -> Verification:
    """The checks of consecutive batches as one, each batch freed once copied."""
    first = parts[0]
    total = sum(len(p.verified) for p in parts)
    whole = Verification(*(np.empty((total, *getattr(first, name).shape[1:]),
                                    dtype=getattr(first, name).dtype)
                           for name in ("inputs", "outputs", "errors", "verified")))  # fmt: skip
    at = 0
    while parts:
        part = parts.pop(0)
        m = len(part.verified)
        for name in ("inputs", "outputs", "errors", "verified"):
            getattr(whole, name)[at : at + m] = getattr(part, name)
        at += m
    return whole


def _decide(problem: ModelProblem):
    """For a piecewise-linear chain in a box, the exact solver's decision (reachable, proven
    unreachable or unknown within --milp-time-limit); None where it does not apply."""
    from .solvers.exact.analysis import analysis_for

    if problem.bounds is None or problem.expired():
        return None
    exact = analysis_for(problem)
    return None if exact is None else exact.decide()


invert.__doc__ += "\n    Options:\n" + describe_options(" " * 8) + "\n"


def _solver_class(s: Settings, registry) -> type[Solver]:
    """The solver for ``s.method``, after checking what the run needs is there."""
    from .rules import default_registry
    from .solvers.registry import default_solvers

    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but torch sees no CUDA device")
    solvers = default_solvers(s.disable_plugins)
    if s.disable_plugins:
        rules = registry if registry is not None else default_registry(s.disable_plugins)
        known = set(rules.plugins) | set(solvers.plugins)
        unknown = [n for n in s.disable_plugins if n not in known]
        if unknown:
            raise OptionError(
                f"no plugin named {unknown[0]!r} to disable; installed: " + ", ".join(sorted(known))
            )
    if s.method not in solvers:
        raise OptionError(f"method {s.method!r} comes from a disabled plugin")
    return solvers.get(s.method)


def _result(problem: ModelProblem, tgt: Target, check: Verification, out: SolverOutcome, timings):
    """The result object: samples exactly as onnxruntime verified them, and the report's facts."""
    s, loaded, obj = problem.settings, problem.loaded, problem.objective
    notes = list(dict.fromkeys([*problem.notes, *out.notes]))
    residual = problem.residual_built
    return InversionResult(
        inputs=check.inputs,  # in the input's dtype
        outputs=check.outputs,
        verified=check.verified,
        errors=check.errors,
        iterations=out.iterations,
        methods=out.paths,
        target=tgt,
        target_array=obj.target,
        input_shape=loaded.input_shape,
        bounds=s.bounds,
        settings={**s.report(), "tolerance": obj.tolerance},
        model={
            **model_facts(loaded),
            "output_space": obj.output_space,
            "solved_on": obj.solve_on,
            "jacobians": _jacobians(residual, problem.jacobian_sources),
            "plan": problem.plan_info,
        },
        timings=timings,
        notes=notes,
        probabilities=obj.probabilities(check.outputs),
        prior_distance=InversionResult.distances(check.inputs, s.prior),
    )


def model_facts(loaded: model_mod.LoadedModel) -> dict[str, Any]:
    """The model's part of report.json that does not depend on the target or the solver."""
    return {
        "name": loaded.name,
        "input": loaded.input_name,
        "output": loaded.output_name,
        "input_shape": list(loaded.input_shape),
        "output_shape": list(loaded.output_shape),
    }


def _checked(result: InversionResult, timed_out: bool, decided: str | None = None):
    """``result``, noting a time-out; :class:`UnreachableTargetError` when none verified
    (``decided``: what the exact solver found out about the target, for the message)."""
    timeout, n, tol = result.settings["timeout"], len(result), result.settings["tolerance"]
    if timed_out and not result.all_verified:
        result.notes.append(
            f"timed out after {timeout:g} s: unfinished samples are returned unverified"
        )
    if result.n_verified:
        return result
    best = float(np.min(result.errors))
    if timed_out:
        message = (
            f"timed out after {timeout:g} s before any of {n} samples reached tolerance "
            f"{tol:g} (best max error {best:.3g}); allow a longer --timeout"
        )
    else:
        why = (
            f"); {decided}"
            if decided
            else (
                "; not proven unreachable either); try more --max-iter/--restarts, wider --bounds, "
                "or a larger tolerance"
            )
        )
        message = (
            f"target not reached: none of {n} samples reached tolerance {tol:g} (best max "
            f"error {best:.3g}{why}"
        )
    raise UnreachableTargetError(message, result=result, best_error=best)


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Dependencies' warnings (onnx2torch, torch, onnx) as report notes, each once."""
    seen: dict[str, None] = {}
    for w in caught:
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        seen.setdefault(f"warning ({w.category.__name__}): {text[:300]}", None)
    return list(seen)[:20]


STREAM = 16384  # samples solved and checked at a time (memory beyond the result stays flat)


def _distinct(solver: Solver, rng, check: Verification, out: SolverOutcome, notes: list[str]):
    """Replace samples identical to an earlier one by new draws; drop those that stay equal.

    Two equal samples are one preimage counted twice. They are solved once more (the solver's
    :meth:`~Solver.again`); what is still a duplicate then (a target whose preimage is a single
    point, as for a bijective model and an exact target) is dropped, with a note.
    """
    dup = duplicate_rows(check.inputs)
    if dup.any():  # after the deadline, again() draws random starts: cheap, and often distinct
        idx = np.flatnonzero(dup)
        again = solver.again(len(idx), rng)
        recheck = again.verification or solver.problem.verify(again.x)
        # A new draw replaces a repeat unless it failed where the repeat was verified.
        take = recheck.verified | ~check.verified[idx]
        check.replace(idx[take], recheck.subset(take))
        out.iterations[idx[take]] = again.iterations[take]
        for i, path in zip(idx[take], np.asarray(again.paths)[take], strict=True):
            out.paths[i] = str(path)
        dup = duplicate_rows(check.inputs)
    if dup.any():
        keep = ~dup
        notes.append(
            f"only {int(keep.sum())} of {len(keep)} samples are distinct (the others repeated "
            "one of them even after new random choices: this target's preimage may be a "
            "single point); the repeats were dropped"
        )
        check = check.subset(keep)
        out = SolverOutcome(out.x[keep], out.error[keep], out.iterations[keep],
                      [m for m, k in zip(out.paths, keep, strict=True) if k], out.notes)  # fmt: skip
    return check, out


def _jacobians(residual, plan_sources: set[str]) -> str:
    """Where the Jacobians of this run came from ("none" for an exact backward pass)."""
    sources = set(plan_sources) | ({residual.jacobian_source} if residual is not None else set())
    return "+".join(sorted(sources)) or "none"
