"""The forward pass: Levenberg–Marquardt from random starts, chunk by chunk."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ...errors import MemoryBudgetError
from ...verify import Verification
from ..base import ModelProblem, Solver, SolverOutcome
from ..surrogate import has_relus, relu_slopes
from .lm import LMOutcome, LMSettings, levenberg_marquardt
from .scaled import ScaledResidual


class ForwardSolver(Solver):
    """Levenberg–Marquardt on the whole model (or a block) from random starts."""

    name = "forward"
    summary = "Levenberg–Marquardt root finding from random starts, on the whole model."

    def prepare(self) -> None:
        self.problem.residual  # noqa: B018 - converts the model now, timed as conversion

    def lm_settings(self, restarts: int | None = None, error=None) -> LMSettings:
        p, s = self.problem, self.problem.settings
        return LMSettings(
            tol=p.tol,
            error=p.error if error is None else error,
            max_iter=s.max_iter,
            restarts=s.restarts if restarts is None else restarts,
            deadline=p.deadline,
            max_memory=p.max_memory,
            jacobian=s.jacobian,
        )

    def solve_chunk(
        self,
        k: int,
        starts: Callable[[int], torch.Tensor],
        x0: torch.Tensor | None = None,
        restarts: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> LMOutcome:
        """LM on ``k`` samples at once from ``x0`` (default: ``starts(k)``), in float64."""
        p = self.problem
        x0 = starts(k) if x0 is None else x0
        out = self._lm(p.residual, x0, starts, restarts, None, on_progress)
        if p.scaling is not None or has_relus(p.residual):
            out = self._endgame(out, starts)
        if out.matrix_free:
            note = (
                f"LM on {p.name} took its steps matrix-free ({p.residual.m} residuals x "
                f"{p.residual.n} inputs: conjugate gradients on Jacobian-vector products)"
            )
            if note not in p.notes:
                p.notes.append(note)
        return out

    def _lm(self, residual, x0, starts, restarts, error, on_progress) -> LMOutcome:
        p = self.problem
        lo, hi = p.bounds if p.bounds is not None else (None, None)
        try:
            return levenberg_marquardt(
                residual, x0.to(torch.float64), self.lm_settings(restarts, error), starts, lo, hi,
                on_progress,
            )  # fmt: skip
        except MemoryBudgetError as exc:
            raise MemoryBudgetError(f"{exc}, for LM on {p.name}") from None

    def _endgame(self, out: LMOutcome, starts) -> LMOutcome:
        """LM once more, without restarts, from the best point of every sample that ended
        unsolved: on the residual in the check's units (:mod:`.scaled`) where the problem has
        a ``scaling`` (most target probabilities below the tolerance: the plain centred logits
        bring a sample near fastest, but near the target their sub-tolerance classes hold it
        back; the recognizer's per-step target: 0.11 → 0.007), and with the model's ReLUs
        differentiated with a slope on their inactive side (:mod:`..surrogate`: outputs that
        only dead units feed move again; the U-Net: 5e-3 → verified)."""
        p = self.problem
        todo = (~out.converged & torch.isfinite(out.residual)).nonzero().squeeze(1)
        if out.timed_out or todo.numel() == 0:
            return out
        residual, error = p.residual, None
        if p.scaling is not None:
            residual = scaled = ScaledResidual(p.residual, *p.scaling)

            def error(rw: torch.Tensor) -> torch.Tensor:
                return p.error(scaled.unscale(rw))

        with relu_slopes(p.residual):
            end = self._lm(residual, out.x[todo], starts, 0, error, None)
        out.iterations[todo] += end.iterations
        better = end.residual < out.residual[todo]
        idx = todo[better]
        out.x[idx], out.residual[idx] = end.x[better], end.residual[better]
        out.converged[idx] = end.converged[better]
        out.timed_out = end.timed_out
        return out

    def solve(self, k, rng, x0=None, on_progress=None) -> SolverOutcome:
        """``k`` samples in chunks of ``chunk_size`` (memory: one chunk's Jacobians at once).

        With ``x0``, each sample starts there and is not restarted (a polish); otherwise from
        random starts, with restarts for the samples that stall.
        """
        starts = self.problem.starts(rng)
        size = self.problem.settings.chunk_size
        parts = []
        for first in range(0, k, size):
            n = min(size, k - first)
            if self.problem.expired():
                x = starts(n) if x0 is None else torch.from_numpy(x0[first : first + n])
                parts.append(SolverOutcome.unsolved(x.numpy(), self.name))
                continue
            if x0 is None:
                out = self.solve_chunk(n, starts, on_progress=on_progress)
            else:
                start = torch.from_numpy(np.asarray(x0[first : first + n], dtype=np.float64))
                out = self.solve_chunk(n, starts, start, restarts=0, on_progress=on_progress)
            if self.problem.settings.tv > 0 and not out.timed_out:
                out.x = self._smooth(out)
            parts.append(
                SolverOutcome(
                    out.x.numpy(),
                    out.residual.numpy(),
                    out.iterations.numpy(),
                    [self.name] * n,
                    timed_out=out.timed_out,
                )  # fmt: skip
            )
        return concatenate(parts)

    def _smooth(self, out: LMOutcome) -> torch.Tensor:
        """``--tv``: solved samples smoothed inside the preimage set (image inputs only)."""
        from .tv import grid_shape, smooth

        if not isinstance(self.problem, ModelProblem):
            return out.x  # (a block's input is no image)
        hw = grid_shape(tuple(self.problem.loaded.input_shape), self.problem.n)
        if hw is None:
            note = "--tv ignored: the input is not an image (no two spatial axes, not square)"
            if note not in self.problem.notes:
                self.problem.notes.append(note)
            return out.x
        return smooth(self.problem, out.x, out.converged, self.problem.settings.tv, hw)


def concatenate(parts: list[SolverOutcome]) -> SolverOutcome:
    """One outcome from several, in order (with their onnxruntime checks when all have one)."""
    parts = [p for p in parts if len(p.x)] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    checks = [p.verification for p in parts]
    return SolverOutcome(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.error for p in parts]),
        np.concatenate([p.iterations for p in parts]),
        [path for p in parts for path in p.paths],
        [n for p in parts for n in p.notes],
        verification=None if None in checks else Verification.concatenate(checks),
        timed_out=any(p.timed_out for p in parts),
    )
