"""Residuals and their Jacobians for a batch of samples.

Two providers share one small interface (``value``, ``value_and_jacobian`` on (B, n) float64
tensors): :class:`TorchResidual` runs the model converted to PyTorch and takes Jacobians with
autograd; :class:`FiniteDifferenceResidual` runs onnxruntime and takes central differences, for
models that cannot be converted. torch is imported only here and in the solvers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from ..errors import DeadlineReached
from ..objective import Objective
from .surrogate import surrogate_relus


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
        native = _native(module) or dtype
        # Matrix-free products need only a few digits (they feed a CG solve to 5%): a float32
        # model gets a float32 copy for them, several times faster than float64 on the CPU.
        self.fast = None
        if native == torch.float32 and dtype == torch.float64:
            self.fast = copy.deepcopy(module).to(device=device, dtype=torch.float32).eval()
            for p in self.fast.parameters():
                p.requires_grad_(False)
        self.module = module.to(device=device, dtype=dtype).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        for m in (self.module, self.fast):  # (values exact, derivatives see dead units)
            if m is not None:
                surrogate_relus(m)
        self.objective = objective
        self.shape = tuple(model_input_shape)
        self.batched = batched
        self.n = int(np.prod(self.shape[1:] if batched else self.shape))
        self.m = objective.size
        self.device = device
        self.dtype = dtype
        self.rng = torch.Generator().manual_seed(0)  # the norm probes of matrix-free steps
        self._linearisation_bytes: int | None = None

    def _forward(
        self, x: torch.Tensor, index: torch.Tensor | None, module: torch.nn.Module | None = None
    ) -> torch.Tensor:
        module = self.module if module is None else module
        if self.batched:
            y = module(x.reshape((x.shape[0], *self.shape[1:])))
        elif len(x) > 1 and self._vmap_works(x):
            y = torch.func.vmap(lambda xi: self._one(xi, module))(x)
        else:
            y = torch.cat([self._one(xi, module).reshape(1, -1) for xi in x])
        return self.objective.residual(y, index)

    def _one(self, xi: torch.Tensor, module: torch.nn.Module | None = None) -> torch.Tensor:
        return (self.module if module is None else module)(xi.reshape(self.shape)).reshape(-1)

    vmap_ok: bool | None = None  # whether torch.func.vmap batches a fixed-batch module

    def _vmap_works(self, x: torch.Tensor) -> bool:
        """A model exported with a fixed batch of one (torch's dynamo exporter) runs one sample
        per call; ``torch.func.vmap`` batches those calls when every operator of the converted
        module supports it (checked once, on two samples, against the one-by-one loop)."""
        if self.vmap_ok is None:
            try:
                with torch.no_grad():
                    pair = x[:2].detach().to(self.device, self.dtype)  # (the module's own)
                    got = torch.func.vmap(self._one)(pair)
                    want = torch.stack([self._one(xi) for xi in pair])
                self.vmap_ok = bool(torch.allclose(got, want, rtol=1e-6, atol=1e-9))
            except Exception:  # noqa: BLE001 - any operator vmap cannot batch: loop instead
                self.vmap_ok = False
        return self.vmap_ok

    def value(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(x.to(self.device, self.dtype), index).to(x.dtype)

    def value_and_jacobian(
        self, x: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = x.dtype
        x = x.detach().to(self.device, self.dtype).requires_grad_(True)
        with torch.enable_grad():
            r = self._forward(x, index)
            jac = torch.empty((x.shape[0], self.m, x.shape[1]), dtype=out, device=x.device)
            for i in range(self.m):  # filled in place: no list of rows plus a stacked copy
                _check(self.deadline)
                (g,) = torch.autograd.grad(r[:, i].sum(), x, retain_graph=i < self.m - 1)
                jac[:, i] = g
        return r.detach().to(out), jac

    def value_and_gradient(self, x, loss):
        out = x.dtype
        x = x.detach().to(self.device, self.dtype).requires_grad_(True)
        with torch.enable_grad():
            r = self._forward(x, None)
            (g,) = torch.autograd.grad(loss(r).sum(), x)
        return r.detach().to(out), g.to(out)

    def linearise(self, x: torch.Tensor, index: torch.Tensor | None = None):
        """The Jacobians at ``x`` (B, n) as a matrix-free operator (see
        :class:`~onnxinv.solvers.forward.operators.MatrixFreeOperator`).

        ``Jᵀu`` is one backward pass through the kept graph; ``J v`` one forward pass in
        forward-mode AD, or, where an operator has no forward-mode rule, a backward pass of
        the backward pass (the "double-vjp" trick).
        """
        from .forward.operators import MatrixFreeOperator

        module = self.module if self.fast is None else self.fast
        dtype = self.dtype if self.fast is None else torch.float32
        x = x.detach().to(self.device, dtype).requires_grad_(True)
        with torch.enable_grad():
            r = self._forward(x, index, module)

        def vjp(u: torch.Tensor) -> torch.Tensor:
            _check(self.deadline)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(
                    r, x, grad_outputs=u.to(self.device, dtype), retain_graph=True
                )
            return g.to("cpu", torch.float64)

        double: list = []  # the backward graph, built on the first double-vjp product

        def jvp(v: torch.Tensor) -> torch.Tensor:
            _check(self.deadline)
            if self.forward_mode:
                try:
                    return self._forward_ad(x.detach(), v.to(self.device, dtype), index, module)
                except (RuntimeError, NotImplementedError):
                    self.forward_mode = False  # an operator without a forward-mode rule
            with torch.enable_grad():
                if not double:
                    u0 = torch.zeros_like(r, requires_grad=True)
                    (g,) = torch.autograd.grad(r, x, grad_outputs=u0, create_graph=True)
                    double.extend([u0, g])
                u0, g = double
                (jv,) = torch.autograd.grad(
                    g, u0, grad_outputs=v.to(self.device, dtype), retain_graph=True
                )
            return jv.to("cpu", torch.float64)

        return MatrixFreeOperator(jvp, vjp, self.m, self.n, x.shape[0], self.rng)

    forward_mode = True  # J·v by forward-mode AD until an operator refuses it

    def _forward_ad(self, x, v, index, module):
        import torch.autograd.forward_ad as fwad

        with torch.no_grad(), fwad.dual_level():
            out = self._forward(fwad.make_dual(x, v), index, module)
            tangent = fwad.unpack_dual(out).tangent
        return (torch.zeros_like(out) if tangent is None else tangent).to("cpu", torch.float64)

    def linearisation_bytes(self) -> int:
        """Bytes one sample's linearisation holds: the tensors autograd saves in one forward
        pass, three times (the kept graph, a forward-mode pass's tangents, the backward's
        buffers); measured once, on one sample."""
        if self._linearisation_bytes is None:
            seen: dict[int, int] = {}
            module = self.module if self.fast is None else self.fast
            weights = {t.data_ptr() for t in [*module.parameters(), *module.buffers()]}

            def pack(t):
                if t.data_ptr() not in weights:  # (weights are shared, not per sample)
                    seen[t.data_ptr()] = t.numel() * t.element_size()
                return t

            dtype = self.dtype if self.fast is None else torch.float32
            x = torch.zeros((1, self.n), dtype=dtype, device=self.device)
            x.requires_grad_(True)
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self._forward(x, None, module)
            self._linearisation_bytes = 3 * sum(seen.values()) + 8 * 4 * self.n
        return self._linearisation_bytes


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
    from ..convert import fallback_nodes, to_torch
    from ..errors import ConversionError

    try:
        module = to_torch(onnx_model)
    except ConversionError as exc:
        note = str(exc)
        if "finite differences" not in note:
            note += "; Jacobians will use finite differences"
        return None, note + " through onnxruntime (slower: 2n model runs per Jacobian)"
    nodes = fallback_nodes(module)
    if not nodes:
        return module, None
    return module, (
        f"{len(nodes)} node{'s' * (len(nodes) > 1)} with no working PyTorch conversion run in "
        f"onnxruntime, each differentiated alone by central differences: {', '.join(nodes)}"
    )


#: Model runs per Jacobian above which finite differences through onnxruntime are refused: a
#: 3×48×192 image would need 55,296 runs per LM iteration.
FD_MAX_RUNS = 4096


def make_residual(
    module: torch.nn.Module | None,
    objective,
    run: Callable[[np.ndarray], np.ndarray],
    sample_shape: tuple[int, ...],
    model_input_shape: tuple[int, ...],
    batched: bool,
    device: str = "cpu",
    why: str | None = None,
) -> Residual:
    """Autograd on ``module`` when there is one, else finite differences through ``run``.

    Raises:
        ConversionError: there is no module and differences would need more than
            :data:`FD_MAX_RUNS` model runs per Jacobian (``why`` says why there is none).
    """
    if module is None:
        runs = 2 * int(np.prod(sample_shape))
        if runs > FD_MAX_RUNS:
            from ..errors import ConversionError

            reason = (why or "the model could not be converted to torch").split(";")[0]
            raise ConversionError(
                f"{reason}; finite differences through onnxruntime would need {runs:,} model "
                f"runs per Jacobian (more than {FD_MAX_RUNS:,}), so Jacobians are refused"
            )
        return FiniteDifferenceResidual(run, objective, sample_shape)
    return TorchResidual(module, objective, model_input_shape, batched, device=device)


#: A float32 model is run in float32 for the whole-model residual when the check's tolerance is
#: at least this share of the target's scale (float32 keeps about 1e-6 of it through a deep
#: net; the check itself runs the model in float32). Float64 convolutions on the CPU, depthwise
#: ones above all, can be 10-100x slower.
FLOAT32_SHARE = 3e-5


def float32_enough(objective: Objective) -> bool:
    """Whether the objective's check is loose enough for residuals computed in float32."""
    scale = 1.0 if objective.kind != "values" else max(1.0, float(np.abs(objective.target).max()))
    return objective.tolerance >= FLOAT32_SHARE * scale


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

    if module is not None and _native(module) == torch.float32 and float32_enough(objective):
        residual = TorchResidual(module, objective, shape, lm.batched, device, torch.float32)
        return residual, note
    residual = make_residual(
        module, objective, run, lm.input_shape, shape, lm.batched, device, why=note
    )
    return residual, note


def _native(module: torch.nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
