"""Residual providers (``onnxinv.solvers.residual``): batching fixed-batch modules, and when
finite differences are refused.

A model exported with a fixed batch of one runs one sample per call; :class:`TorchResidual`
batches those calls with ``torch.func.vmap`` when a check on two samples shows it gives the same
values, else loops. Whatever path it takes, values, Jacobians and Jacobian products must equal
those of the same network run as a batched module. Without a converted module, Jacobians come
from central differences through onnxruntime, 2n runs each: :func:`make_residual` refuses that
beyond ``FD_MAX_RUNS`` runs with a one-line :class:`ConversionError` naming the count.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import one_line
from torch import nn

from onnxinv.errors import ConversionError
from onnxinv.objective import Objective
from onnxinv.solvers.residual import (
    FD_MAX_RUNS,
    FiniteDifferenceResidual,
    TorchResidual,
    make_residual,
)

F64 = torch.float64
BATCH = 4


pytestmark = pytest.mark.usefixtures("forward_mode_warm")


def values_objective(m: int, seed: int = 0) -> Objective:
    t = np.random.default_rng(seed).normal(size=m)
    return Objective("values", "values", "output", t, t.copy(), 1e-4)


# ------------------------------------------------------------------ fixed-batch modules and vmap


def net(kind: str, dtype: torch.dtype) -> tuple[nn.Module, tuple[int, ...]]:
    """A net and the one-sample input shape it was "exported" with (batch fixed at 1)."""
    torch.manual_seed(0)
    if kind == "mlp":
        module = nn.Sequential(nn.Linear(12, 10), nn.Tanh(), nn.Linear(10, 5))
        shape = (1, 12)
    else:
        module = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 5)
        )
        shape = (1, 1, 4, 4)
    return module.to(dtype).eval(), shape


class Calls:
    """Counts the calls of a module (a forward pre-hook)."""

    def __init__(self, module: nn.Module):
        self.count = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.count += 1


def three(kind: str, dtype: torch.dtype):
    """The same net as a batched residual (the reference), a fixed-batch one that may vmap, and
    a fixed-batch one held to the loop."""
    module, shape = net(kind, dtype)
    obj = values_objective(5)
    batched = TorchResidual(copy.deepcopy(module), obj, (-1, *shape[1:]), batched=True)
    vmapped = TorchResidual(copy.deepcopy(module), obj, shape, batched=False)
    looped = TorchResidual(copy.deepcopy(module), obj, shape, batched=False)
    looped.vmap_ok = False
    return batched, vmapped, looped


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    rel = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * float(want.abs().max()))


KINDS = ["mlp", "conv"]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(F64, id="float64")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_vmap_batches_a_fixed_batch_module_with_the_loops_values(kind, dtype):
    batched, vmapped, looped = three(kind, dtype)
    calls = Calls(vmapped.module)
    loop_calls = Calls(looped.module)
    x = torch.randn(BATCH, batched.n, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = batched.value(x)
    assert vmapped.vmap_ok is None  # (checked on first use)
    got = vmapped.value(x)
    assert vmapped.vmap_ok is True
    close(got, want, F64)
    close(looped.value(x), want, F64)
    # The check ran the module on two samples, both ways; then one call for the batch.
    before = calls.count
    vmapped.value(x)
    assert calls.count == before + 1
    before = loop_calls.count
    looped.value(x)
    assert loop_calls.count == before + BATCH

    r_b, jac_b = batched.value_and_jacobian(x)
    for res in (vmapped, looped):
        r, jac = res.value_and_jacobian(x)
        close(r, r_b, F64)
        close(jac, jac_b, F64)


@pytest.mark.parametrize("forward_mode", [True, False], ids=["forward-mode", "double-vjp"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_vmap_linearisation_gives_the_batched_products(kind, dtype, forward_mode):
    batched, vmapped, looped = three(kind, dtype)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, batched.n, generator=gen, dtype=F64)
    v = torch.randn(BATCH, batched.n, generator=gen, dtype=F64)
    u = torch.randn(BATCH, batched.m, generator=gen, dtype=F64)
    vmapped.value(x)  # (as in LM: values first, then products)
    assert vmapped.vmap_ok is True
    ref = batched.linearise(x)
    jv, jtu = ref.matvec(v), ref.rmatvec(u)
    for res in (vmapped, looped):
        res.forward_mode = forward_mode
        op = res.linearise(x)
        close(op.matvec(v), jv, dtype)
        close(op.rmatvec(u), jtu, dtype)


class ItemCalling(nn.Module):
    """A module that calls ``.item()`` in forward, as some onnx2torch modules do: vmap refuses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        scale = 1.0 + 0.0 * float(x.sum().item())
        return torch.tanh(self.lin(x)) * scale


def test_a_module_vmap_cannot_batch_falls_back_to_the_loop():
    module = ItemCalling().double().eval()
    res = TorchResidual(copy.deepcopy(module), values_objective(3), (1, 6), batched=False)
    x = torch.randn(BATCH, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    r, jac = res.value_and_jacobian(x)
    assert res.vmap_ok is False
    with torch.no_grad():
        y = torch.tanh(module.lin(x))
        close(r, y - torch.as_tensor(res.objective.residual_target), F64)
        # Jacobian of tanh(W x + b): diag(1 − y²) W, per sample.
        close(jac, (1 - y * y)[:, :, None] * module.lin.weight[None], F64)


def test_the_vmap_check_does_not_depend_on_which_call_comes_first():
    _, vmapped, _ = three("mlp", torch.float32)
    x = torch.randn(BATCH, vmapped.n, generator=torch.Generator().manual_seed(5), dtype=F64)
    vmapped.linearise(x)
    assert vmapped.vmap_ok is True


# ------------------------------------------------------------------- finite differences: refusal


def linear_run(w: np.ndarray):
    """An "onnxruntime" that computes ``x W`` on flat samples."""

    def run(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ w

    return run


@pytest.mark.parametrize(
    ("shape", "why", "reason"),
    [
        ((3, 40, 40), None, "the model could not be converted to torch"),
        (
            (3, 40, 40),
            "Foo has no converter; Jacobians will use differences",
            "Foo has no converter",
        ),
        ((FD_MAX_RUNS // 2 + 1,), "Bar failed", "Bar failed"),
    ],
)
def test_finite_differences_beyond_the_run_limit_are_refused(shape, why, reason):
    n = int(np.prod(shape))
    obj = values_objective(4)
    run = linear_run(np.zeros((n, 4)))
    with pytest.raises(ConversionError) as info:
        make_residual(None, obj, run, shape, (-1, *shape), True, why=why)
    text = one_line(info.value)
    assert f"{2 * n:,} model runs" in text
    assert text.startswith(reason + ";")
    assert f"{FD_MAX_RUNS:,}" in text


@pytest.mark.parametrize("shape", [(4,), (2, 3), (FD_MAX_RUNS // 2,)])
def test_finite_differences_within_the_run_limit_give_the_jacobian(shape):
    n = int(np.prod(shape))
    w = np.random.default_rng(6).normal(size=(n, 3))
    res = make_residual(None, values_objective(3), linear_run(w), shape, (-1, *shape), True)
    assert isinstance(res, FiniteDifferenceResidual)
    assert res.jacobian_source == "finite-differences" and (res.m, res.n) == (3, n)
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(7), dtype=F64)
    r, jac = res.value_and_jacobian(x)
    close(r, x @ torch.from_numpy(w) - torch.as_tensor(res.objective.residual_target), F64)
    want = torch.from_numpy(w.T).expand(2, 3, n)
    torch.testing.assert_close(jac, want, rtol=1e-8, atol=1e-8)


def test_a_converted_module_is_never_refused():
    """Autograd needs no model runs per input: a large input keeps its torch residual."""
    shape = (3, 40, 40)
    module = nn.Sequential(nn.Flatten(), nn.Linear(4800, 2)).double().eval()
    res = make_residual(module, values_objective(2), linear_run(np.zeros((4800, 2))), shape,
                        (-1, *shape), True)  # fmt: skip
    assert isinstance(res, TorchResidual) and (res.m, res.n) == (2, 4800)
