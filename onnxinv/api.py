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

METHODS = ("auto", "forward")
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


def _validate(samples, seed, method, max_iter, restarts, device, init_std, chunk_size, timeout):
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
    if timeout is not None and not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
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
    on_progress: Callable[[int], None] | None = None,
) -> InversionResult:
    """Find ``samples`` different inputs that ``model`` maps to ``target``.

    Args:
        model: path to an .onnx file (external data beside it), its bytes, or a ModelProto.
        target: a :class:`Target`, a target dict, or a path to a target JSON file.
        samples: how many inputs to return.
        seed: seed of every random choice; the same seed gives the same inputs.
        bounds: ``(lo, hi)`` box every input must lie in (e.g. ``(0, 1)`` for images).
        method: ``"auto"`` or ``"forward"`` (Levenberg–Marquardt from random starts).
        input: the input to invert, when the model has several float inputs.
        output: the output to match, when the model has several (else the target's "output").
        max_iter: LM iterations per attempt.
        restarts: fresh random starts for a sample whose attempt stalled.
        device: "cpu" or "cuda" (torch Jacobians and onnxruntime provider).
        init_std: standard deviation of random starts when unbounded.
        chunk_size: samples solved together; bounds memory.
        timeout: seconds for the whole run; what is verified by then is returned (flagged).
        on_progress: called with the number of samples that just finished.

    Returns:
        An :class:`InversionResult`; every sample carries its onnxruntime verified flag.

    Raises:
        OnnxInvError: a subclass naming the problem, for any bad argument, model or target;
            :class:`UnreachableTargetError` when no sample verified.
    """
    t_start = time.perf_counter()
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    _validate(samples, seed, method, max_iter, restarts, device, init_std, chunk_size, timeout)
    box = parse_bounds(bounds)
    tgt = Target.coerce(target)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise OptionError("device 'cuda' requested but torch sees no CUDA device")

    lm = model_mod.load(model, input=input, output=output or tgt.output, device=device, seed=seed)
    obj = objective_mod.build(lm, tgt, seed=seed)
    t_loaded = time.perf_counter()

    from .residual import build_residual
    from .solvers.forward import StartSampler, solve_forward
    from .solvers.lm import LMSettings

    notes: list[str] = []
    residual, note = build_residual(lm, obj, device=device)
    if note:
        notes.append(note)
    t_converted = time.perf_counter()

    rng = np.random.default_rng(seed)
    starts = StartSampler(residual.n, rng, box, init_std)
    # Stop at half the tolerance: float32 rounding in the verification run must not tip a
    # sample over it.
    settings = LMSettings(
        tol=0.5 * obj.tolerance,
        error=obj.error_from_residual,
        max_iter=max_iter,
        restarts=restarts,
        deadline=deadline,
    )
    sol = solve_forward(residual, samples, starts, settings, chunk_size, on_progress)
    if sol.timed_out:
        notes.append(f"timed out after {timeout:g} s: unfinished samples are returned unverified")
    methods = ["forward"] * samples
    t_solved = time.perf_counter()

    x = sol.x.reshape((samples, *lm.input_shape))
    check = verify(lm, obj, x, box)
    t_end = time.perf_counter()

    result = InversionResult(
        inputs=check.inputs.astype(np.float32),
        outputs=check.outputs,
        verified=check.verified,
        errors=check.errors,
        iterations=sol.iterations,
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
        },
        model={
            "name": lm.name,
            "input": lm.input_name,
            "output": lm.output_name,
            "input_shape": list(lm.input_shape),
            "output_shape": list(lm.output_shape),
            "output_space": obj.output_space,
            "solved_on": obj.solve_on,
            "jacobians": residual.jacobian_source,
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
    if result.n_verified == 0:
        best = float(np.min(result.errors))
        raise UnreachableTargetError(
            f"target unreachable: none of {samples} samples reached tolerance "
            f"{obj.tolerance:g} (best max error {best:.3g}); try more --max-iter/--restarts, "
            "wider --bounds, or a larger tolerance",
            result=result,
            best_error=best,
        )
    return result
