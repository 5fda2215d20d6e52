"""Matrix-free Levenberg–Marquardt (``onnxinv.solvers.forward.lm`` with a linearised residual).

When the dense Jacobian does not fit the memory budget, or has more than ``DENSE_MAX_ROWS``
rows, ``auto`` takes LM's steps from Jacobian-vector products instead (:func:`matrix_free_for`).
These tests check that decision, the slice width a budget allows (:func:`matrix_free_width`),
and that matrix-free LM reaches reachable targets (the net's own output at a random point), with
and without a box, from small torch nets up to whole ONNX models through ``onnxinv.invert``.
Every solution is judged by a fresh onnxruntime session on an ONNX model, never by onnxinv.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import pytest
import torch
from helpers import one_line, ort_outputs, session
from onnx import helper, numpy_helper
from solver_suites import export_bytes
from torch import nn

from onnxinv import invert
from onnxinv.errors import MemoryBudgetError
from onnxinv.objective import Objective
from onnxinv.solvers.forward import lm as lm_mod
from onnxinv.solvers.forward.lm import (
    DENSE_MAX_ROWS,
    LMSettings,
    levenberg_marquardt,
    matrix_free_for,
    matrix_free_width,
    per_sample_bytes,
)
from onnxinv.solvers.residual import FiniteDifferenceResidual, TorchResidual

F64 = torch.float64
MIB = 2**20
NOTE = "took its steps matrix-free"


pytestmark = pytest.mark.usefixtures("forward_mode_warm")


# ------------------------------------------------------------------------------------- builders


def values_objective(t: np.ndarray) -> Objective:
    t = np.asarray(t, dtype=np.float64).ravel()
    return Objective("values", "values", "output", t, t.copy(), 1e-4)


def torch_mlp(n: int, hidden: int, m: int, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, hidden), nn.Tanh(), nn.Linear(hidden, m)).to(dtype).eval()


def torch_residual(m: int, n: int = 16, dtype=F64) -> TorchResidual:
    return TorchResidual(torch_mlp(n, 8, m, dtype), values_objective(np.zeros(m)), (-1, n), True)


def fd_residual(m: int, n: int = 16) -> FiniteDifferenceResidual:
    w = np.random.default_rng(0).normal(size=(n, m))

    def run(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ w

    return FiniteDifferenceResidual(run, values_objective(np.zeros(m)), (n,))


def onnx_mlp(n: int, hidden: int, m: int, dtype=np.float32, seed: int = 0) -> onnx.ModelProto:
    """``x[N, n] -> Gemm -> Tanh -> Gemm -> y[N, m]`` in ``dtype``, random weights."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weights = {
        "W1": rng.normal(0, 1 / np.sqrt(n), (n, hidden)),
        "b1": rng.normal(0, 0.1, hidden),
        "W2": rng.normal(0, 1 / np.sqrt(hidden), (hidden, m)),
        "b2": rng.normal(0, 0.1, m),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["z"]),
        helper.make_node("Tanh", ["z"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["y"]),
    ]
    return _model(nodes, [n], [m], elem, weights, dtype)


def onnx_conv(size: int, channels: int, seed: int = 0) -> onnx.ModelProto:
    """``x[N, 1, size, size] -> Conv(channels) -> Tanh -> Conv(1) -> y``: large activations
    (``channels`` maps of the input's size) from a few hundred weights."""
    rng = np.random.default_rng(seed)
    weights = {
        "W1": rng.normal(0, 1 / 3, (channels, 1, 3, 3)),
        "b1": np.zeros(channels),
        "W2": rng.normal(0, 1 / np.sqrt(9 * channels), (1, channels, 3, 3)),
        "b2": np.zeros(1),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["z"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["z"], ["h"]),
        helper.make_node("Conv", ["h", "W2", "b2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    shape = [1, size, size]
    return _model(nodes, shape, shape, onnx.TensorProto.FLOAT, weights, np.float32)


def _model(nodes, in_shape, out_shape, elem, weights, dtype) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "matfree",
        [helper.make_tensor_value_info("x", elem, ["N", *in_shape])],
        [helper.make_tensor_value_info("y", elem, ["N", *out_shape])],
        initializer=[numpy_helper.from_array(np.asarray(v, dtype), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def ort_run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's output by a fresh onnxruntime session, fed in the input's own dtype."""
    sess = session(model)
    inp = sess.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    shape = [len(x), *[int(d) for d in inp.shape[1:]]]
    return sess.run(None, {inp.name: np.asarray(x, dtype).reshape(shape)})[0].reshape(len(x), -1)


def reachable(model: onnx.ModelProto, n: int, seed: int) -> np.ndarray:
    """The model's own output (by onnxruntime) at a random point of [0, 1]^n."""
    x = np.random.default_rng(seed).uniform(0, 1, (1, n))
    return ort_run(model, x)[0].astype(np.float64)


def assert_verified(model, result, target, n, bounds, tol=1e-4) -> None:
    """Every returned input gives the target within ``tol`` by onnxruntime, inside the box."""
    x = result.inputs
    assert len(x) == n and np.isfinite(x).all()
    if bounds is not None:
        assert x.min() >= bounds[0] and x.max() <= bounds[1]
    errors = np.abs(ort_run(model, x) - target[None, :]).max(1)
    assert (errors <= tol).all(), errors
    assert result.verified.all()
    np.testing.assert_allclose(result.errors, errors, rtol=1e-3, atol=1e-7)


# -------------------------------------------------------------------------- matrix_free_for


def _fits(m: int) -> int:
    return per_sample_bytes(m, 16)


DECISIONS = [
    # (residual, m, budget, mode, matrix-free?)
    pytest.param("torch", 10, None, "auto", False, id="few-rows-no-budget"),
    pytest.param("torch", DENSE_MAX_ROWS, None, "auto", False, id="at-the-row-limit"),
    pytest.param("torch", DENSE_MAX_ROWS + 1, None, "auto", True, id="above-the-row-limit"),
    pytest.param("torch", 10, "fits", "auto", False, id="budget-just-fits"),
    pytest.param("torch", 10, "short", "auto", True, id="budget-one-byte-short"),
    pytest.param("torch", DENSE_MAX_ROWS + 1, "fits", "auto", True, id="fits-but-many-rows"),
    pytest.param("torch", DENSE_MAX_ROWS + 1, None, "dense", False, id="forced-dense"),
    pytest.param("torch", 10, "short", "dense", False, id="forced-dense-short-budget"),
    pytest.param("torch", 10, None, "matrix-free", True, id="forced-matrix-free"),
    pytest.param("fd", DENSE_MAX_ROWS + 1, None, "auto", False, id="fd-many-rows"),
    pytest.param("fd", 10, "short", "auto", False, id="fd-short-budget"),
    pytest.param("fd", 10, None, "matrix-free", False, id="fd-forced-matrix-free"),
]


@pytest.fixture
def small_entry_limit(monkeypatch):
    """Jacobians of these small test nets count as large (the entry limit is for real models)."""
    monkeypatch.setattr(lm_mod, "DENSE_MAX_ENTRIES", 0)


@pytest.mark.usefixtures("small_entry_limit")
@pytest.mark.parametrize(("kind", "m", "budget", "mode", "expected"), DECISIONS)
def test_matrix_free_for_decides_by_rows_budget_and_mode(kind, m, budget, mode, expected):
    """Finite differences have no ``linearise``: they stay dense whatever is asked."""
    residual = torch_residual(m) if kind == "torch" else fd_residual(m)
    assert hasattr(residual, "linearise") == (kind == "torch")
    max_memory = {None: None, "fits": _fits(m), "short": _fits(m) - 1}[budget]
    assert matrix_free_for(residual, mode, max_memory) is expected


def test_many_rows_of_a_small_jacobian_stay_dense():
    """Past DENSE_MAX_ROWS but under DENSE_MAX_ENTRIES (16 inputs) the dense step is cheap."""
    residual = torch_residual(DENSE_MAX_ROWS + 1)
    assert residual.m * residual.n <= lm_mod.DENSE_MAX_ENTRIES
    assert matrix_free_for(residual, "auto", None) is False


def test_an_unknown_jacobian_mode_is_refused():
    with pytest.raises(ValueError, match="jacobian mode must be one of"):
        matrix_free_for(torch_residual(4), "sparse", None)


# ---------------------------------------------------------------------- matrix_free_width


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_matrix_free_width_is_the_budget_over_one_samples_linearisation(dtype):
    res = TorchResidual(torch_mlp(64, 32, 5, dtype), values_objective(np.zeros(5)), (-1, 64), True)
    need = res.linearisation_bytes() + 8 * 16 * (res.m + res.n)
    assert matrix_free_width(res, None) is None
    assert matrix_free_width(res, need) == 1
    assert matrix_free_width(res, 10 * need + need // 2) == 10
    with pytest.raises(MemoryBudgetError) as info:
        matrix_free_width(res, need - 1)
    assert "--max-memory" in one_line(info.value)


def test_a_float32_model_linearises_in_float32():
    """The products of a float32 model run on its float32 copy: about half the bytes of the
    same net in float64."""
    f32, f64 = (
        TorchResidual(torch_mlp(64, 32, 5, dt), values_objective(np.zeros(5)), (-1, 64), True)
        for dt in (torch.float32, F64)
    )
    inputs = 8 * 4 * 64  # (the input-sized vectors, float64 in both)
    ratio = (f32.linearisation_bytes() - inputs) / (f64.linearisation_bytes() - inputs)
    assert ratio == pytest.approx(0.5, abs=0.05)


def test_the_memory_one_sample_adds_does_not_count_the_shared_weights():
    """A 64 -> 4096 -> 4 MLP: one sample's activations take 33 kB in float64 (x and the 4096
    hidden values), its 264,000 weights 2.1 MB, held once for every sample: a 4 MiB budget
    holds dozens of samples' linearisations."""
    res = TorchResidual(torch_mlp(64, 4096, 4, F64), values_objective(np.zeros(4)), (-1, 64), True)
    activations = 8 * (64 + 4096 + 4)
    assert res.linearisation_bytes() < 4 * activations + 8 * 4 * 64
    assert matrix_free_width(res, 4 * MIB) >= 16


def test_matrix_free_lm_solves_a_batch_in_slices_the_budget_allows():
    """A budget of two samples' linearisations: five samples are solved two at a time, each
    slice reaching the target, the outcomes in the samples' order."""
    n, m = 20, 6
    model = exported(n, m, F64)
    net = torch_mlp(n, 24, m, F64)
    x_star = torch.from_numpy(np.random.default_rng(9).uniform(0, 1, (1, n)))
    with torch.no_grad():
        target = net(x_star)[0].numpy()
    res = TorchResidual(net, values_objective(target), (-1, n), True)
    need = res.linearisation_bytes() + 8 * 16 * (m + n)
    sizes: list[int] = []
    original = res.linearise

    def recording(x, index=None):
        sizes.append(len(x))
        return original(x, index)

    res.linearise = recording
    gen = torch.Generator().manual_seed(10)
    x0 = torch.rand(5, n, generator=gen, dtype=F64)
    x0[3] = x_star[0]  # already a solution: it must come back in its own row, unmoved

    def starts(k):
        return torch.rand(k, n, generator=gen, dtype=F64)

    settings = LMSettings(tol=1e-7, max_iter=40, restarts=3, max_memory=2 * need + 1,
                          jacobian="matrix-free")  # fmt: skip
    out = levenberg_marquardt(res, x0, settings, starts, 0.0, 1.0)
    assert out.matrix_free and out.converged.all() and out.x.shape == (5, n)
    assert max(sizes) == 2  # slices [0, 1], [2, 3], [4]
    assert torch.equal(out.x[3], x_star[0]) and int(out.iterations[3]) == 0
    errors = np.abs(ort_outputs(model, out.x.numpy()) - target[None, :]).max(1)
    assert (errors <= 1e-4).all(), errors


# ------------------------------------------------------------------- LM on small torch nets

SHAPES = [pytest.param(20, 6, id="m<n"), pytest.param(6, 20, id="m>n")]
BOUNDS = [pytest.param(None, id="unbounded"), pytest.param((0.0, 1.0), id="bounded")]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(F64, id="float64")]


@functools.cache
def exported(n: int, m: int, dtype: torch.dtype) -> bytes:
    """The net of :func:`torch_mlp` as ONNX (float32), for the onnxruntime judge."""
    return export_bytes(copy.deepcopy(torch_mlp(n, 24, m, dtype)), n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_matrix_free_lm_reaches_a_reachable_target(n, m, bounds, dtype):
    rng = np.random.default_rng(n * m)
    x_star = rng.uniform(0, 1, (1, n))
    model = exported(n, m, dtype)
    target = ort_outputs(model, x_star)[0].astype(np.float64)
    res = TorchResidual(torch_mlp(n, 24, m, dtype), values_objective(target), (-1, n), True)
    gen = torch.Generator().manual_seed(m)

    def starts(k: int) -> torch.Tensor:
        if bounds is None:
            return torch.randn(k, n, generator=gen, dtype=F64)
        return torch.rand(k, n, generator=gen, dtype=F64)

    lo, hi = bounds if bounds is not None else (None, None)
    settings = LMSettings(tol=1e-7, max_iter=40, restarts=3, jacobian="matrix-free")
    out = levenberg_marquardt(res, starts(4), settings, starts, lo, hi)
    assert out.matrix_free and not out.timed_out
    assert out.converged.all(), out.residual
    x = out.x.numpy()
    if bounds is not None:
        assert x.min() >= 0.0 and x.max() <= 1.0
    errors = np.abs(ort_outputs(model, x) - target[None, :]).max(1)
    assert (errors <= 1e-4).all(), errors
    if m < n:  # underdetermined: four different preimages
        gaps = np.abs(x[:, None, :] - x[None, :, :]).max(-1) + np.eye(len(x))
        assert gaps.min() > 1e-3


# ---------------------------------------------------------------- end to end, onnxinv.invert


@pytest.mark.usefixtures("small_entry_limit")
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bounds", BOUNDS)
def test_a_model_with_many_outputs_is_inverted_matrix_free(dtype, bounds):
    """96 outputs (more than DENSE_MAX_ROWS): auto takes the steps matrix-free, says so in a
    note, and onnxruntime confirms every sample."""
    n, m = 256, 96
    assert m > DENSE_MAX_ROWS
    model = onnx_mlp(n, 256, m, dtype)
    target = reachable(model, n, seed=1)
    result = invert(model, {"values": target.tolist()}, method="forward", samples=4, seed=0,
                    bounds=bounds)  # fmt: skip
    assert result.inputs.dtype == dtype
    assert_verified(model, result, target, 4, bounds)
    assert any(NOTE in note and f"{m} residuals x {n} inputs" in note for note in result.notes)


@pytest.mark.parametrize("bounds", BOUNDS)
def test_a_budget_too_small_for_the_dense_jacobian_goes_matrix_free(bounds):
    """80 outputs (dense by the row count), but one sample's dense Jacobian needs 1.1 MB,
    more than the smallest budget (1M); one sample's forward and backward pass fits, so LM
    runs matrix-free where it used to raise MemoryBudgetError."""
    n, m = 400, 80
    assert m <= DENSE_MAX_ROWS and per_sample_bytes(m, n) > MIB
    model = onnx_mlp(n, 128, m)
    target = reachable(model, n, seed=2)
    result = invert(model, {"values": target.tolist()}, method="forward", samples=4, seed=0,
                    bounds=bounds, max_memory="1M")  # fmt: skip
    assert_verified(model, result, target, 4, bounds)
    assert any(NOTE in note for note in result.notes)


def test_a_budget_below_one_forward_pass_is_a_one_line_memory_error():
    """32 feature maps of 64×64 (half a MiB per sample in float32, kept for the backward
    pass): not even one sample's linearisation fits 1M."""
    model = onnx_conv(64, 32)
    target = reachable(model, 64 * 64, seed=3)
    with pytest.raises(MemoryBudgetError) as info:
        invert(model, {"values": target.reshape(1, 1, 64, 64).tolist()}, method="forward",
               samples=2, seed=0, max_memory="1M")  # fmt: skip
    text = one_line(info.value)
    assert "forward and backward pass" in text and "--max-memory" in text and "1.0 MiB" in text
