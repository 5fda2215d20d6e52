"""Gradient descent on the input: the usual "approximate inversion", as a baseline.

Adam (``torch.optim.Adam``) minimises, per sample, the mean squared difference between the
model's output and the target in the space the user's check measures (probabilities for a
class distribution), with the input projected onto ``--bounds`` after every step. A sample stops
moving once its error is within the solver tolerance. It is what most tutorials show; onnxinv's
benchmark runs it through this class to compare the other methods with it.
"""

from __future__ import annotations

import torch

from .base import Solver, SolverOutcome
from .forward.solver import concatenate


class GradientDescentSolver(Solver):
    """Adam on the input (projected onto the bounds): the usual approximate inversion."""

    name = "gd"
    summary = "Adam on the input minimising the squared output error (a baseline; slow)."

    def prepare(self) -> None:
        self.problem.residual  # noqa: B018 - converts the model now, timed as conversion

    def solve(self, k, rng, x0=None, on_progress=None) -> SolverOutcome:
        starts = self.problem.starts(rng)
        size = self.problem.settings.chunk_size
        parts = []
        for first in range(0, k, size):
            n = min(size, k - first)
            start = starts(n) if x0 is None else torch.from_numpy(x0[first : first + n])
            parts.append(self._chunk(start.to(torch.float64), on_progress))
        return concatenate(parts)

    def _chunk(self, x0: torch.Tensor, on_progress) -> SolverOutcome:
        p, s = self.problem, self.problem.settings
        residual = p.residual
        residual.deadline = p.deadline
        b = len(x0)
        x = x0.clone().requires_grad_(False)
        opt = torch.optim.Adam([x.requires_grad_(True)], lr=s.gd_lr)
        done = torch.zeros(b, dtype=torch.bool)
        steps = torch.zeros(b, dtype=torch.int64)
        error = torch.full((b,), float("inf"), dtype=torch.float64)
        timed_out = False

        def loss(r: torch.Tensor) -> torch.Tensor:
            return (p.diff(r) ** 2).mean(1)

        for step in range(s.gd_steps + 1):
            if p.expired():
                timed_out = True
                break
            r, grad = residual.value_and_gradient(x.detach(), loss)
            error = _finite(p.error(r))
            newly = (error <= p.tol) & ~done
            done |= newly
            if on_progress is not None and newly.any():
                on_progress(int(newly.sum()))
            if bool(done.all()) or step == s.gd_steps:
                break
            grad[done] = 0.0
            x.grad = grad.to(x.dtype)
            with torch.no_grad():
                keep = x.detach().clone()
            opt.step()
            with torch.no_grad():
                # Adam's momentum would still move a zero-gradient row: restore frozen rows.
                moved = x if p.bounds is None else x.clamp(*p.bounds)
                x.copy_(torch.where(done[:, None], keep, moved))
            steps += (~done).to(torch.int64)
        if on_progress is not None and (~done).any():
            on_progress(int((~done).sum()))
        return SolverOutcome(
            x.detach().numpy().copy(), error.detach().numpy(), steps.numpy(), [self.name] * b,
            timed_out=timed_out,
        )  # fmt: skip


def _finite(v: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(v), v, torch.full_like(v, float("inf")))
