"""``invert()``: validate every argument, dispatch to a method, verify, return one result type."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import model as model_mod
from . import objective as objective_mod
from .errors import OptionError, UnreachableTargetError
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
        registry: a :class:`~onnxinv.rules.Registry` to use instead of the installed rules.
        on_progress: called with the number of samples that just finished.

    Returns:
        An :class:`InversionResult`; every sample carries its onnxruntime verified flag.

    Raises:
        OnnxInvError: a subclass naming the problem, for any bad argument, model or target;
            :class:`UnreachableTargetError` when no sample verified.
    """
    t_start = time.perf_counter()
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
    box = parse_bounds(bounds)
    tgt = Target.coerce(target)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but torch sees no CUDA device")

    lm = model_mod.load(model, input=input, output=output or tgt.output, device=device, seed=seed)
    obj = objective_mod.build(lm, tgt, seed=seed)
    t_loaded = time.perf_counter()

    notes: list[str] = []
    rng = np.random.default_rng(seed)
    plan_info = None
    check = pending = None
    residual = None
    sources: set[str] = set()
    if method == "forward":
        from .residual import build_residual

        settings = _lm_settings(obj, max_iter, restarts, deadline)
        residual, note = build_residual(lm, obj, device=device)
        notes += [note] if note else []
        t_converted = time.perf_counter()
        flat, iterations, methods = _forward(
            residual, samples, rng, box, init_std, settings, chunk_size, on_progress
        )
    else:
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
        part = partition(lm, reg, seed)
        plan_info = [line.strip() for line in describe(part)]
        plan = Plan(
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
        )
        t_converted = time.perf_counter()
        chunks = []
        for first in range(0, samples, chunk_size):
            k = min(chunk_size, samples - first)
            chunks.append(plan.run(k, rng).x)
            if on_progress is not None:
                on_progress(k)
        flat = np.concatenate(chunks)
        iterations = np.zeros(samples, dtype=np.int64)
        methods = ["backward+lm" if plan.used_lm else "backward"] * samples
        notes += plan.notes
        sources = plan.jacobian_sources
        if method == "auto":
            check = verify(lm, obj, flat.reshape((samples, *lm.input_shape)), box)
            pending = ~check.verified
            if pending.any():
                from .residual import build_residual

                settings = _lm_settings(obj, max_iter, restarts, deadline)
                residual, note = build_residual(lm, obj, device=device)
                notes += [note] if note else []
                _polish(residual, flat, iterations, methods, pending, rng, box, init_std, settings)
    timed_out = deadline is not None and time.monotonic() > deadline
    t_solved = time.perf_counter()

    x = flat.reshape((samples, *lm.input_shape))
    if check is None:
        check = verify(lm, obj, x, box)
    elif pending.any():  # only the samples the polish changed need another check
        check.replace(pending, verify(lm, obj, x[pending], box))
    t_end = time.perf_counter()

    result = InversionResult(
        inputs=check.inputs.astype(np.float32),
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
            "solve": t_solved - t_converted,
            "verify": t_end - t_solved,
            "total": t_end - t_start,
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


def _forward(residual, samples, rng, box, init_std, settings, chunk_size, on_progress):
    """LM on the whole model from random starts: (flat inputs, iterations, per-sample paths)."""
    from .solvers.forward import StartSampler, solve_forward

    starts = StartSampler(residual.n, rng, box, init_std)
    sol = solve_forward(residual, samples, starts, settings, chunk_size, on_progress)
    return sol.x, sol.iterations, ["forward"] * samples


def _polish(residual, x, iterations, methods, pending, rng, box, init_std, settings) -> None:
    """LM from the plan's points for unverified samples, then fresh starts; updates in place."""
    import dataclasses

    import torch

    from .solvers.forward import StartSampler
    from .solvers.lm import levenberg_marquardt

    lo, hi = box if box is not None else (None, None)
    starts = StartSampler(residual.n, rng, box, init_std)
    idx = np.flatnonzero(pending)
    x0 = torch.from_numpy(x[idx].astype(np.float64))
    if box is not None:
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


def _lm_settings(obj, max_iter: int, restarts: int, deadline: float | None):
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
    )
