"""Residuals and their Jacobians for a batch of samples.

Two providers share one small interface (``value``, ``value_and_jacobian`` on (B, n) float64
tensors): :class:`TorchResidual` runs the model converted to PyTorch and takes Jacobians with
autograd; :class:`FiniteDifferenceResidual` runs onnxruntime and takes central differences, for
models that cannot be converted. torch is imported only here and in the solvers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ..objective import Objective


class DeadlineReached(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a Jacobian evaluation once ``time.monotonic()`` passes the deadline."""


class Residual(Protocol):
    """What the solvers need: residuals (B, m) and Jacobians (B, m, n) of flat inputs (B, n).

    ``index`` says which samples the rows are, for objectives with per-sample targets.
    ``deadline`` (``time.monotonic()`` value or None) is checked inside long Jacobian
    evaluations, which then raise :class:`DeadlineReached`.
    """

    m: int
    n: int
    jacobian_source: str
    deadline: float | None

    def value(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor: ...

    def value_and_jacobian(
        self, x: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def value_and_gradient(
        self, x: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals (B, m) and the gradient (B, n) of ``loss(residuals).sum()``."""
        ...


class TorchResidual:
    """Residual of a converted torch module; Jacobians by autograd.

    For m residuals, m backward passes of the batch-summed residual give every sample's Jacobian
    at once (samples do not interact in eval mode). This avoids ``torch.func.vmap``, which
    breaks on onnx2torch modules that call ``.item()`` in forward.
    """

    jacobian_source = "autograd"
    deadline: float | None = None

    def __init__(
        self,
        module: torch.nn.Module,
        objective: Objective,
        model_input_shape: tuple[int, ...],
        batched: bool,
        device: str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        self.module = module.to(device=device, dtype=dtype).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.objective = objective
        self.shape = tuple(model_input_shape)
        self.batched = batched
        self.n = int(np.prod(self.shape[1:] if batched else self.shape))
        self.m = objective.size
        self.device = device
        self.dtype = dtype

    def _forward(self, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if self.batched:
            y = self.module(x.reshape((x.shape[0], *self.shape[1:])))
        else:
            y = torch.cat([self.module(xi.reshape(self.shape)).reshape(1, -1) for xi in x])
        return self.objective.residual(y, index)

    def value(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(x.to(self.device, self.dtype), index)

    def value_and_jacobian(
        self, x: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().to(self.device, self.dtype).requires_grad_(True)
        with torch.enable_grad():
            r = self._forward(x, index)
            jac = torch.empty((x.shape[0], self.m, x.shape[1]), dtype=x.dtype, device=x.device)
            for i in range(self.m):  # filled in place: no list of rows plus a stacked copy
                _check(self.deadline)
                (g,) = torch.autograd.grad(r[:, i].sum(), x, retain_graph=i < self.m - 1)
                jac[:, i] = g
        return r.detach(), jac

    def value_and_gradient(self, x, loss):
        x = x.detach().to(self.device, self.dtype).requires_grad_(True)
        with torch.enable_grad():
            r = self._forward(x, None)
            (g,) = torch.autograd.grad(loss(r).sum(), x)
        return r.detach(), g


class FiniteDifferenceResidual:
    """Residual evaluated by onnxruntime; Jacobians by central differences.

    Slow (2n model runs per Jacobian) but needs nothing beyond onnxruntime, so it inverts
    models that no converter handles.
    """

    jacobian_source = "finite-differences"
    deadline: float | None = None

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        objective: Objective,
        input_shape: tuple[int, ...],
        step: float = 1e-3,
        rows_per_run: int = 4096,
        block_values: int = 4_000_000,
    ):
        self.run = run
        self.objective = objective
        self.shape = tuple(input_shape)
        self.n = int(np.prod(self.shape))
        self.m = objective.size
        self.step = step
        self.rows_per_run = rows_per_run
        self.block_values = block_values  # perturbed inputs held at once: block × n floats

    def _residual_np(self, x: np.ndarray, index: np.ndarray | None) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.rows_per_run):
            chunk = x[i : i + self.rows_per_run].reshape((-1, *self.shape))
            y = torch.from_numpy(np.asarray(self.run(chunk), dtype=np.float64))
            rows = None if index is None else torch.as_tensor(index[i : i + self.rows_per_run])
            out.append(self.objective.residual(y, rows).numpy())
        return np.concatenate(out)

    def value(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        idx = None if index is None else torch.as_tensor(index)
        r = self._residual_np(x.detach().cpu().numpy(), idx)
        return torch.as_tensor(r, dtype=x.dtype)

    def value_and_jacobian(
        self, x: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xn = x.detach().cpu().numpy()
        b, n = xn.shape
        idx = np.arange(b) if index is None else np.asarray(index)
        r = self._residual_np(xn, idx)
        h = self.step * np.maximum(1.0, np.abs(xn))  # (B, n)
        jac = np.empty((b, r.shape[1], n))
        # Perturb a block of coordinates at a time: never an (n × n) identity, and memory
        # bounded by ``block_values`` whatever the input size.
        width = max(1, self.block_values // max(1, 2 * b * n))
        for j0 in range(0, n, width):
            _check(self.deadline)
            cols = np.arange(j0, min(n, j0 + width))
            step = np.zeros((b, len(cols), n))
            step[:, np.arange(len(cols)), cols] = h[:, cols]
            both = np.concatenate([xn[:, None, :] + step, xn[:, None, :] - step], axis=1)
            rows = np.repeat(idx, 2 * len(cols))
            rr = self._residual_np(both.reshape(-1, n), rows).reshape(b, 2, len(cols), -1)
            jac[:, :, cols] = ((rr[:, 0] - rr[:, 1]) / (2 * h[:, cols, None])).transpose(0, 2, 1)
        return torch.as_tensor(r, dtype=x.dtype), torch.as_tensor(jac, dtype=x.dtype)

    def value_and_gradient(self, x, loss):
        """Chain rule through the finite-difference Jacobian (2n model runs per step)."""
        r, jac = self.value_and_jacobian(x)
        rr = r.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g_r,) = torch.autograd.grad(loss(rr).sum(), rr)
        return r, torch.einsum("bm,bmn->bn", g_r, jac)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineReached


def convert_or_note(onnx_model) -> tuple[torch.nn.Module | None, str | None]:
    """The model converted for autograd, or None and a note that Jacobians use differences."""
    from ..convert import to_torch
    from ..errors import ConversionError

    try:
        return to_torch(onnx_model), None
    except ConversionError as exc:
        note = str(exc)
        if "finite differences" not in note:
            note += "; Jacobians will use finite differences"
        return None, note + " through onnxruntime (slower: 2n model runs per Jacobian)"


def make_residual(
    module: torch.nn.Module | None,
    objective,
    run: Callable[[np.ndarray], np.ndarray],
    sample_shape: tuple[int, ...],
    model_input_shape: tuple[int, ...],
    batched: bool,
    device: str = "cpu",
) -> Residual:
    """Autograd on ``module`` when there is one, else finite differences through ``run``."""
    if module is None:
        return FiniteDifferenceResidual(run, objective, sample_shape)
    return TorchResidual(module, objective, model_input_shape, batched, device=device)


def build_residual(lm, objective: Objective, device: str = "cpu") -> tuple[Residual, str | None]:
    """The best residual provider for ``lm``: autograd on the converted model, else differences.

    Returns:
        The provider and, when it fell back to finite differences, a note saying why.
    """
    onnx_model = lm.logits_model if objective.solve_on == "logits" else lm.pruned
    which = "logits" if objective.solve_on == "logits" else "pruned"
    module, note = convert_or_note(onnx_model)
    shape = (-1, *lm.unit_shape) if lm.batched else lm.run_shape

    def run(x: np.ndarray) -> np.ndarray:
        return lm.run(x, which=which)

    return make_residual(module, objective, run, lm.input_shape, shape, lm.batched, device), note
