"""The paper's ForwardPassInv, as published, for comparison with onnxinv's forward pass.

A random input, then Levenberg–Marquardt root finding on the residual the paper names: the
model's output probabilities minus the target distribution, with the Jacobian with respect to
the input from autograd on the model converted to torch, up to 30 iterations, converged
samples stopping. There are fewer equations than unknowns, so the damped step is the
minimum-norm one, ``dx = -Jᵀ(JJᵀ + μI)⁻¹ r`` (MINPACK refuses such systems), with the usual
accept/reject damping. Nothing keeps the input in the box while solving; the result is
clipped to it at the end, as an image would be. Samples are solved side by side (each with
its own damping), which changes nothing but the speed.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import onnx
import torch

from onnxinv.convert import to_torch


@functools.cache
def torch_model(model_path: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model converted by onnxinv's converter (onnx2torch, checked against onnxruntime),
    in float64, and one sample's shape."""
    proto = onnx.load(model_path)
    dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
    return to_torch(proto).double(), tuple(int(d.dim_value) for d in dims)


def jacobian(module: torch.nn.Module, x: torch.Tensor, shape: tuple[int, ...]):
    """(outputs (N, m), Jacobians (N, m, n)) of ``module`` at the flat inputs ``x`` (N, n):
    one forward pass and one backward pass of the batch-summed output per output."""
    x = x.detach().requires_grad_(True)
    y = module(x.reshape(len(x), *shape)).reshape(len(x), -1)
    rows = [
        torch.autograd.grad(y[:, j].sum(), x, retain_graph=j + 1 < y.shape[1])[0]
        for j in range(y.shape[1])
    ]
    return y.detach(), torch.stack(rows, 1)


def paper_forward(
    model_path: str,
    target: np.ndarray,
    samples: int,
    seed: int,
    bounds: tuple[float, float] = (0.0, 1.0),
    tol: float = 1e-4,
    max_iter: int = 30,
    deadline: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N, n) clipped to ``bounds``, iterations (N,)): LM from uniform random starts.

    A sample stops once max |p(x) - target| <= ``tol / 2``; ``deadline`` (time.monotonic())
    stops every sample where it is.
    """
    module, shape = torch_model(str(model_path))
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    x = torch.from_numpy(rng.uniform(bounds[0], bounds[1], (samples, n)))
    want = torch.as_tensor(np.asarray(target, dtype=np.float64).reshape(1, -1))
    iterations = torch.zeros(samples, dtype=torch.int64)
    mu = torch.full((samples,), float("nan"), dtype=torch.float64)
    with torch.no_grad():
        r = module(x.reshape(samples, *shape)).reshape(samples, -1) - want
    for _ in range(max_iter):
        active = r.abs().amax(1) > tol / 2
        if not active.any() or (deadline is not None and time.monotonic() > deadline):
            break
        idx = active.nonzero().squeeze(1)
        _, jac = jacobian(module, x[idx], shape)
        jjt = jac @ jac.transpose(1, 2)
        m = jjt.diagonal(dim1=1, dim2=2)
        scale = m.mean(1)  # J Jᵀ is singular (probabilities sum to 1): μ stays above 0
        mu[idx] = torch.where(mu[idx].isnan(), scale, mu[idx].clamp(min=1e-12 * scale))
        eye = torch.eye(jjt.shape[1], dtype=torch.float64)
        step = torch.linalg.solve(jjt + mu[idx, None, None] * eye, r[idx].unsqueeze(2))
        trial = x[idx] - (jac.transpose(1, 2) @ step).squeeze(2)
        with torch.no_grad():
            r_trial = module(trial.reshape(len(idx), *shape)).reshape(len(idx), -1) - want
        better = r_trial.norm(dim=1) < r[idx].norm(dim=1)
        x[idx[better]], r[idx[better]] = trial[better], r_trial[better]
        mu[idx] = torch.where(better, mu[idx] / 3, mu[idx] * 2)
        iterations[idx] += 1
    return x.clamp(bounds[0], bounds[1]).numpy(), iterations.numpy()
