"""``invert()``: validate every argument, dispatch to a method, verify, return one result type."""

from __future__ import annotations

import contextvars
import functools
import math
import os
import time
import warnings
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np

from . import model as model_mod
from . import objective as objective_mod
from .budget import parse_memory
from .errors import (
    MemoryBudgetError,
    ModelError,
    OnnxInvError,
    OptionError,
    UnreachableTargetError,
)
from .repair import first_line
from .result import InversionResult
from .target import Target
from .verify import verify

METHODS = ("auto", "backward", "forward")
DEVICES = ("cpu", "cuda")


def parse_bounds(bounds: Any) -> tuple[float, float] | None:
    """Accept None, ``(lo, hi)`` or ``"lo,hi"``; reject anything else with one line."""
    if bounds is None:
        return None
    if isinstance(bounds, str):
        parts = [p.strip() for p in bounds.split(",")]
        if len(parts) != 2:
            raise OptionError(f"bounds must be LO,HI (two numbers), not {bounds!r}")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise OptionError(f"bounds must be two numbers LO,HI, not {bounds!r}") from None
    else:
        try:
            lo, hi = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise OptionError(
                f"bounds must be a pair of numbers (lo, hi), not {bounds!r}"
            ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise OptionError(f"bounds must be finite numbers, not {lo:g},{hi:g}")
    if lo >= hi:
        raise OptionError(f"bounds need LO < HI, got {lo:g},{hi:g}")
    return lo, hi


def parse_shape(shape: Any) -> tuple[int, ...] | None:
    """Accept None, a sequence of ints or ``"1,3,224,224"``; -1 only first (a batch axis)."""
    if shape is None:
        return None
    try:
        dims = (
            [int(p) for p in shape.replace("x", ",").split(",")]
            if isinstance(shape, str)
            else [int(d) for d in shape]
        )
    except (TypeError, ValueError):
        raise OptionError(
            f"input_shape must be integers such as 1,3,224,224, not {shape!r}"
        ) from None
    if not dims or any(d == 0 or d < -1 for d in dims) or -1 in dims[1:]:
        raise OptionError(
            f"input_shape must be positive integers (-1 allowed first only), not {shape!r}"
        )
    return tuple(dims)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise OptionError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _validate(
    samples,
    seed,
    method,
    max_iter,
    restarts,
    device,
    init_std,
    chunk_size,
    timeout,
    max_condition,
    std,
):
    _positive_int("samples", samples)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise OptionError(f"seed must be a non-negative integer, not {seed!r}")
    if method not in METHODS:
        raise OptionError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    _positive_int("max_iter", max_iter)
    if isinstance(restarts, bool) or not isinstance(restarts, int | np.integer) or restarts < 0:
        raise OptionError(f"restarts must be a non-negative integer, not {restarts!r}")
    if device not in DEVICES:
        raise OptionError(f"device must be 'cpu' or 'cuda', not {device!r}")
    if not (isinstance(init_std, int | float) and math.isfinite(init_std) and init_std > 0):
        raise OptionError(f"init_std must be a positive number, not {init_std!r}")
    _positive_int("chunk_size", chunk_size)
    for name, value in (("init_std", init_std), ("std", std), ("max_condition", max_condition)):
        if isinstance(value, bool):
            raise OptionError(f"{name} must be a number, not {value!r}")
    if not (isinstance(max_condition, int | float) and max_condition > 1):
        raise OptionError(f"max_condition must be a number > 1, not {max_condition!r}")
    if not (isinstance(std, int | float) and math.isfinite(std) and std >= 0):
        raise OptionError(f"std must be a non-negative number, not {std!r}")
    if (
        isinstance(timeout, bool)
        or timeout is not None
        and not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0)
    ):
        raise OptionError(f"timeout must be a positive number of seconds, not {timeout!r}")


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
                result = fn(*args, **kwargs)
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
                    f"onnxinv failed {_PHASE.get()}: {type(exc).__name__}: {first_line(exc)} "
                    "(run with --debug for the traceback, and please report it)"
                ) from exc
        result.notes.extend(_warning_notes(caught))
        return result

    return wrapper


@_contained
def invert(
    model: model_mod.ModelLike,
    target: Target | dict | str | os.PathLike,
    *,
    samples: int = 16,
    seed: int = 0,
    bounds: tuple[float, float] | str | None = None,
    method: str = "auto",
    input: str | None = None,
    output: str | None = None,
    max_iter: int = 30,
    restarts: int = 3,
    device: str = "cpu",
    init_std: float = 1.0,
    chunk_size: int = 256,
    timeout: float | None = None,
    max_condition: float = 100.0,
    std: float = 0.1,
    disable_plugins: tuple[str, ...] = (),
    fixed: dict[str, Any] | None = None,
    input_shape: tuple[int, ...] | str | None = None,
    max_memory: int | str | None = None,
    registry=None,
    on_progress: Callable[[int], None] | None = None,
) -> InversionResult:
    """Find ``samples`` different inputs that ``model`` maps to ``target``.

    Args:
        model: path to an .onnx file (external data beside it), its bytes, or a ModelProto.
        target: a :class:`Target`, a target dict, or a path to a target JSON file.
        samples: how many inputs to return.
        seed: seed of every random choice; the same seed gives the same inputs.
        bounds: ``(lo, hi)`` box every input must lie in (e.g. ``(0, 1)`` for images).
        method: ``"backward"`` runs the plan (inverse rules through invertible blocks, LM on
            opaque ones) and reports what it cannot do as unverified; ``"forward"`` runs
            Levenberg–Marquardt on the whole model from random starts; ``"auto"`` runs the plan,
            polishes unverified samples with LM from where the plan left them, and falls back to
            fresh forward starts.
        input: the input to invert, when the model has several float inputs.
        output: the output to match, when the model has several (else the target's "output").
        max_iter: LM iterations per attempt.
        restarts: fresh random starts for a sample whose attempt stalled.
        device: "cpu" or "cuda" (torch Jacobians and onnxruntime provider).
        init_std: standard deviation of random starts when unbounded.
        chunk_size: samples solved together; bounds memory.
        timeout: seconds for the whole run; what is verified by then is returned (flagged).
        max_condition: singular values below σ_max / max_condition count as zero (backward).
        std: random free-direction vectors' norm relative to the particular solution (backward).
        disable_plugins: entry-point names of rule plugins to leave out.
        fixed: other model inputs held at given values, ``{name: array}`` (any dtype: integer
            token ids, shapes and masks too); the output may depend on them.
        input_shape: the inverted input's full shape where the model leaves it open (a
            missing shape, or symbolic dimensions); ``-1`` first keeps a batch axis.
        max_memory: bytes (or a size such as ``"8G"``) the solvers may hold at once; larger
            batches are solved in slices, and a step that cannot fit raises
            :class:`MemoryBudgetError`. Default: half the memory available at the start.
        registry: a :class:`~onnxinv.rules.Registry` to use instead of the installed rules.
        on_progress: called with the number of samples that just finished.

    Returns:
        An :class:`InversionResult`; every sample carries its onnxruntime verified flag.

    Raises:
        OnnxInvError: a subclass naming the problem, for any bad argument, model or target;
            :class:`UnreachableTargetError` when no sample verified.
    """
    t_start = time.perf_counter()
    _phase("while checking the arguments")
    _validate(
        samples,
        seed,
        method,
        max_iter,
        restarts,
        device,
        init_std,
        chunk_size,
        timeout,
        max_condition,
        std,
    )
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    for name, value in (("input", input), ("output", output)):
        if value is not None and not (isinstance(value, str) and value):
            raise OptionError(f"{name} must be a tensor name (a non-empty string), not {value!r}")
    disable_plugins = _plugin_names(disable_plugins)
    budget = parse_memory(max_memory)
    box = parse_bounds(bounds)
    tgt = Target.coerce(target)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but torch sees no CUDA device")

    _phase("while loading the model")
    lm = model_mod.load(
        model,
        input=input,
        output=output or tgt.output,
        device=device,
        seed=seed,
        fixed=fixed,
        input_shape=parse_shape(input_shape),
    )
    _phase("while reading the model's output")
    obj = objective_mod.build(lm, tgt, seed=seed)
    t_loaded = time.perf_counter()

    notes: list[str] = list(lm.notes)
    rng = np.random.default_rng(seed)
    _phase("while converting the model for Jacobians")
    run = _MethodRun(
        lm, obj, method, rng, box, init_std, chunk_size, device, notes,
        lambda: _lm_settings(obj, max_iter, restarts, deadline, budget), deadline,
    )  # fmt: skip
    plan_info = None
    # When loading used the whole timeout, nothing more is prepared: solve() then returns
    # random starts, verified and flagged like any other sample.
    if method != "forward" and not run.expired():
        from .graph import describe, partition
        from .plan import Plan
        from .rules import default_registry
        from .solvers.backward import BackwardSettings

        reg = registry if registry is not None else default_registry(disable_plugins)
        unknown = [n for n in disable_plugins if n not in reg.plugins]
        if unknown:
            raise OptionError(
                f"no rule plugin named {unknown[0]!r} to disable; installed: "
                + ", ".join(sorted(reg.plugins))
            )
        _phase("while partitioning the graph")
        part = partition(lm, reg, seed)
        plan_info = [line.strip() for line in describe(part, max_condition)]
        _phase("while planning the backward pass")
        run.plan = Plan(
            lm,
            part,
            obj,
            BackwardSettings(max_condition, std),
            box,
            device,
            init_std,
            max_iter,
            restarts,
            deadline,
            max_memory=budget,
        )
    elif not run.expired():
        run.residual_provider()
    t_converted = time.perf_counter()
    _phase(f"while solving ({method})")
    check, iterations, methods = run.solve(samples, on_progress)
    check, iterations, methods = _distinct(run, check, iterations, methods, deadline, notes)
    timed_out = deadline is not None and time.monotonic() > deadline
    t_solved = time.perf_counter()
    sources = run.plan.jacobian_sources if run.plan is not None else set()
    if run.plan is not None:
        notes += [n for n in run.plan.notes if n not in notes]
    residual = run.residual

    result = InversionResult(
        inputs=check.inputs,  # exactly what onnxruntime verified, in the input's dtype
        outputs=check.outputs,
        verified=check.verified,
        errors=check.errors,
        iterations=iterations,
        methods=methods,
        target=tgt,
        target_array=obj.target,
        input_shape=lm.input_shape,
        bounds=box,
        settings={
            "samples": samples,
            "seed": seed,
            "bounds": list(box) if box else None,
            "method": method,
            "max_iter": max_iter,
            "restarts": restarts,
            "device": device,
            "init_std": init_std,
            "chunk_size": chunk_size,
            "timeout": timeout,
            "tolerance": obj.tolerance,
            "max_condition": max_condition,
            "std": std,
            "disabled_plugins": list(disable_plugins),
            "fixed": {
                k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in lm.fixed.items()
            },
            "input_shape": list(input_shape) if input_shape is not None else None,
        },
        model={
            "name": lm.name,
            "input": lm.input_name,
            "output": lm.output_name,
            "input_shape": list(lm.input_shape),
            "output_shape": list(lm.output_shape),
            "output_space": obj.output_space,
            "solved_on": obj.solve_on,
            "jacobians": _jacobians(residual, sources),
            "plan": plan_info,
        },
        timings={
            "load": t_loaded - t_start,
            "convert": t_converted - t_loaded,
            "solve": t_solved - t_converted,  # each sample is verified as it is solved
            "total": t_solved - t_start,
        },
        notes=notes,
        probabilities=obj.probabilities(check.outputs),
    )
    if timed_out and not result.all_verified:
        notes.append(f"timed out after {timeout:g} s: unfinished samples are returned unverified")
    if result.n_verified == 0:
        best = float(np.min(result.errors))
        if timed_out:
            raise UnreachableTargetError(
                f"timed out after {timeout:g} s before any of {samples} samples reached "
                f"tolerance {obj.tolerance:g} (best max error {best:.3g}); allow a longer "
                "--timeout",
                result=result,
                best_error=best,
            )
        raise UnreachableTargetError(
            f"target unreachable: none of {samples} samples reached tolerance "
            f"{obj.tolerance:g} (best max error {best:.3g}); try more --max-iter/--restarts, "
            "wider --bounds, or a larger tolerance",
            result=result,
            best_error=best,
        )
    return result


#: What ``invert`` is doing, for the message of an unexpected failure.
_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("phase", default="while starting")


def _phase(text: str) -> None:
    _PHASE.set(text)


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Dependencies' warnings (onnx2torch, torch, onnx) as report notes, each once."""
    seen: dict[str, None] = {}
    for w in caught:
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        seen.setdefault(f"warning ({w.category.__name__}): {text[:300]}", None)
    return list(seen)[:20]


class _MethodRun:
    """One method on one model and target: ``solve(k)`` returns k verified-or-flagged samples.

    ``plan`` is set for the backward and auto methods; the whole-model residual (torch or
    finite differences) and the LM settings (which import torch) are built on first use.
    """

    def __init__(
        self, lm, obj, method, rng, box, init_std, chunk_size, device, notes, settings, deadline
    ):
        self.lm, self.obj, self.method, self.rng = lm, obj, method, rng
        self.box, self.init_std, self.chunk_size, self.device = box, init_std, chunk_size, device
        self.notes, self._settings, self.deadline = notes, settings, deadline
        self.plan = None
        self.residual = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @cached_property
    def settings(self):
        return self._settings()

    def residual_provider(self):
        if self.residual is None:
            from .residual import build_residual

            self.residual, note = build_residual(self.lm, self.obj, device=self.device)
            self.notes += [note] if note else []
        return self.residual

    def starts(self):
        from .solvers.forward import StartSampler

        return StartSampler(self.lm.input_size, self.rng, self.box, self.init_std)

    def solve(self, k: int, on_progress=None, fresh: bool = False):
        """(verification, iterations, per-sample paths) for ``k`` new samples.

        ``fresh``: under ``auto``, start from random points (the forward pass) instead of the
        plan, whose choices may be deterministic.
        """
        lm, obj, box = self.lm, self.obj, self.box
        if self.expired() or (self.plan is None and self.method != "forward"):
            # Out of time before solving started: random starts, verified like any sample.
            x = self.starts()(k).numpy().reshape((k, *lm.input_shape))
            return verify(lm, obj, x, box), np.zeros(k, dtype=np.int64), ["timed out"] * k
        if self.method == "forward" or (fresh and self.method == "auto"):
            from .solvers.forward import solve_forward

            try:
                sol = solve_forward(
                    self.residual_provider(), k, self.starts(), self.settings, self.chunk_size,
                    on_progress,
                )  # fmt: skip
            except MemoryBudgetError as exc:
                raise MemoryBudgetError(
                    f"{exc}, for LM on the whole model ({lm.input_name!r} -> "
                    f"{lm.logits_name if obj.solve_on == 'logits' else lm.output_name!r})"
                ) from None
            x = sol.x.reshape((k, *lm.input_shape))
            return verify(lm, obj, x, box), sol.iterations, ["forward"] * k
        chunks = []
        try:
            for first in range(0, k, self.chunk_size):
                size = min(self.chunk_size, k - first)
                chunks.append(self.plan.run(size, self.rng).x)
                if on_progress is not None:
                    on_progress(size)
        except MemoryBudgetError as exc:
            if self.method != "auto":
                raise
            # A block's LM (its outputs × its inputs) does not fit where the whole model's
            # may (fewer outputs): solve the whole model instead.
            self.notes.append(f"the plan was abandoned ({exc}); the forward pass solved instead")
            self.method, self.plan = "forward", None
            return self.solve(k, on_progress)
        flat = np.concatenate(chunks)
        iterations = np.zeros(k, dtype=np.int64)
        methods = ["backward+lm" if self.plan.used_lm else "backward"] * k
        check = verify(lm, obj, flat.reshape((k, *lm.input_shape)), box)
        pending = ~check.verified
        if self.method == "auto" and pending.any():
            self._polish(flat, iterations, methods, pending)
            x = flat.reshape((k, *lm.input_shape))
            check.replace(pending, verify(lm, obj, x[pending], box))
        return check, iterations, methods

    def _polish(self, x, iterations, methods, pending) -> None:
        """LM from the plan's points for unverified samples, then fresh starts; in place."""
        import dataclasses

        import torch

        from .solvers.lm import levenberg_marquardt

        residual, settings = self.residual_provider(), self.settings
        lo, hi = self.box if self.box is not None else (None, None)
        starts = self.starts()
        idx = np.flatnonzero(pending)
        x0 = torch.from_numpy(x[idx].astype(np.float64))
        if self.box is not None:
            x0 = x0.clamp(lo, hi)
        once = dataclasses.replace(settings, restarts=0)
        polish = levenberg_marquardt(residual, x0, once, starts, lo, hi)
        converged = polish.converged.numpy()
        x[idx] = polish.x.numpy()
        iterations[idx] += polish.iterations.numpy()
        for i in idx[converged]:
            methods[i] += "+polish"
        rest = idx[~converged]
        if rest.size:
            fresh = levenberg_marquardt(residual, starts(len(rest)), settings, starts, lo, hi)
            better = fresh.residual.numpy() < polish.residual.numpy()[~converged]
            x[rest[better]] = fresh.x.numpy()[better]
            iterations[rest] += fresh.iterations.numpy()
            for i in rest[better]:
                methods[i] = "forward"


def duplicate_rows(x: np.ndarray, rel: float = 1e-3) -> np.ndarray:
    """(N,) mask of samples that repeat an earlier one.

    Two samples repeat each other when no value differs by more than ``rel`` times the largest
    magnitude among the samples (at least 1): solvers stop within a tolerance, so two runs to
    the same preimage rarely agree to the last bit. Candidates are found by sorting a random
    projection, so well-spread samples cost O(N log N).
    """
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    dup = np.zeros(len(flat), dtype=bool)
    if len(flat) < 2:
        return dup
    tol = rel * max(1.0, float(np.nanmax(np.abs(flat))) if np.isfinite(flat).any() else 1.0)
    r = np.random.default_rng(0).standard_normal(flat.shape[1])
    p = np.nan_to_num(flat @ r)
    order = np.argsort(p, kind="stable")
    bound = tol * np.abs(r).sum()
    close = np.flatnonzero(np.diff(p[order]) <= bound)
    for a in close:  # only runs of nearby projections are compared exactly
        b = a + 1
        while b < len(order) and p[order[b]] - p[order[a]] <= bound:
            i, j = order[a], order[b]
            if np.max(np.abs(flat[i] - flat[j])) <= tol:
                dup[max(i, j)] = True  # the later sample is the repeat
            b += 1
    return dup


def _distinct(run, check, iterations, methods, deadline, notes):
    """Replace samples identical to an earlier one by new draws; drop those that stay equal.

    Two equal samples are one preimage counted twice. They are solved once more (fresh random
    choices); what is still a duplicate then (a target whose preimage is a single point, as for
    a bijective model and an exact target) is dropped, and a note says how many are distinct.
    """
    dup = duplicate_rows(check.inputs)
    if dup.any():  # after the deadline, solve() draws random starts: cheap, and often distinct
        idx = np.flatnonzero(dup)
        again, its, paths = run.solve(len(idx), fresh=True)
        # A new draw replaces a repeat unless it failed where the repeat was verified.
        take = again.verified | ~check.verified[idx]
        check.replace(idx[take], again.subset(take))
        iterations[idx[take]] = its[take]
        for i, path in zip(idx[take], np.asarray(paths)[take], strict=True):
            methods[i] = str(path)
        dup = duplicate_rows(check.inputs)
    if dup.any():
        keep = ~dup
        notes.append(
            f"only {int(keep.sum())} of {len(keep)} samples are distinct (the others repeated "
            "one of them even after new random choices: this target's preimage may be a "
            "single point); the repeats were dropped"
        )
        check = check.subset(keep)
        iterations = iterations[keep]
        methods = [m for m, k in zip(methods, keep, strict=True) if k]
    return check, iterations, methods


def _jacobians(residual, plan_sources: set[str]) -> str:
    """Where the Jacobians of this run came from ("none" for an exact backward pass)."""
    sources = set(plan_sources) | ({residual.jacobian_source} if residual is not None else set())
    return "+".join(sorted(sources)) or "none"


def _plugin_names(names) -> tuple[str, ...]:
    """``disable_plugins`` as a tuple of names: one string or an iterable of strings."""
    if isinstance(names, str):
        return (names,)
    try:
        out = tuple(names)
    except TypeError:
        raise OptionError(f"disable_plugins must be plugin names, not {names!r}") from None
    if not all(isinstance(n, str) and n for n in out):
        raise OptionError(f"disable_plugins must be plugin names, not {names!r}")
    return out


def _lm_settings(obj, max_iter: int, restarts: int, deadline: float | None, budget: int):
    """LM settings for the whole-model residual (imports torch, so only when LM runs)."""
    from .solvers.lm import LMSettings

    # Stop at half the tolerance: float32 rounding in the verification run must not tip a
    # sample over it.
    return LMSettings(
        tol=0.5 * obj.tolerance,
        error=obj.error_from_residual,
        max_iter=max_iter,
        restarts=restarts,
        deadline=deadline,
        max_memory=budget,
    )
