"""The forward pass: LM root finding from random starts, chunk by chunk."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..residual import Residual
from .lm import LMSettings, levenberg_marquardt


@dataclass
class StartSampler:
    """Random starting points: uniform inside the bounds, else normal(0, std)."""

    n: int
    rng: np.random.Generator
    bounds: tuple[float, float] | None = None
    std: float = 1.0

    def __call__(self, k: int) -> torch.Tensor:
        if self.bounds is not None:
            lo, hi = self.bounds
            x = self.rng.uniform(lo, hi, size=(k, self.n))
        else:
            x = self.rng.normal(0.0, self.std, size=(k, self.n))
        return torch.from_numpy(x)


@dataclass
class ForwardSolution:
    """Flat solutions (N, n) with per-sample iterations, in float64."""

    x: np.ndarray
    iterations: np.ndarray
    timed_out: bool


def solve_forward(
    residual: Residual,
    samples: int,
    starts: StartSampler,
    settings: LMSettings,
    chunk_size: int = 256,
    on_finish: Callable[[int], None] | None = None,
) -> ForwardSolution:
    """Solve ``samples`` independent inversions in chunks of at most ``chunk_size``.

    Memory is bounded by the chunk: Jacobians are (chunk, m, n) and the autograd graph holds
    one chunk's activations.
    """
    xs, its = [], []
    timed_out = False
    lo, hi = starts.bounds if starts.bounds is not None else (None, None)
    for first in range(0, samples, chunk_size):
        k = min(chunk_size, samples - first)
        x0 = starts(k)
        if settings.deadline is not None and time.monotonic() > settings.deadline:
            timed_out = True
            xs.append(x0.numpy())
            its.append(np.zeros(k, dtype=np.int64))
            continue
        out = levenberg_marquardt(residual, x0, settings, starts, lo, hi, on_finish)
        timed_out |= out.timed_out
        xs.append(out.x.numpy())
        its.append(out.iterations.numpy())
    return ForwardSolution(np.concatenate(xs), np.concatenate(its), timed_out)
