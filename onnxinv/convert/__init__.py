"""ONNX → PyTorch conversion (via onnx2torch) for Jacobians by autograd.

:func:`to_torch` converts a single-input, single-output model, and by default checks the result
against onnxruntime. Every failure is a :class:`~onnxinv.errors.ConversionError` whose one-line
message names the operator and node responsible.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx2torch
import torch

from ..errors import ConversionError
from . import compat
from .agreement import check as check_against_ort
from .locate import find_failing_converter, find_missing_converter
from .sample import check_single_output, graph_input, input_dtype
from .sample import sample_input as random_input
from .select_output import select_graph_output

__all__ = ["ConversionError", "compat", "to_torch"]


def _set_dtype(module: torch.nn.Module, model: onnx.ModelProto) -> torch.nn.Module:
    dtype = input_dtype(model)
    if dtype == np.float32:
        return module.float()
    if dtype == np.float64:
        return module.double()
    return module


def to_torch(
    model: onnx.ModelProto,
    *,
    check: bool = True,
    seed: int = 0,
    sample_input: np.ndarray | None = None,
    atol: float = 1e-4,
) -> torch.nn.Module:
    """Convert ``model`` to an equivalent PyTorch module in eval mode.

    Args:
        model: an ONNX model with exactly one graph input and one graph output. The input's first
            (batch) dimension may be symbolic; the others must be static.
        check: run the module and onnxruntime on the same input and compare the outputs.
        seed: seed of the uniform [0, 1) check input (batch 3 if the batch is symbolic).
        sample_input: use this check input instead of a random one.
        atol: outputs must agree within ``atol * max(1, max |onnxruntime output|)``.

    Returns:
        A :class:`torch.fx.GraphModule` with the input's float precision (float32 for float
        input); ``.double()`` works on it. Each submodule carries ``onnx_mapping``, the ONNX
        value names of its inputs and outputs.

    Raises:
        ConversionError: an operator has no converter, a converter failed, or the check failed;
            ``op_type`` and ``node`` name the node responsible when one is found.
        ModelError: the model does not have exactly one graph input and one output, or
            onnxruntime cannot run it.
    """
    compat.install()
    graph_input(model)  # exactly one input, else ModelError
    check_single_output(model)
    missing = find_missing_converter(model)
    if missing is not None:
        raise missing
    try:
        module = onnx2torch.convert(model, attach_onnx_mapping=True)
    except Exception as exc:
        raise find_failing_converter(model, exc) from exc
    module = select_graph_output(module, model)
    module = _set_dtype(module, model).eval()
    if check:
        x = random_input(model, seed) if sample_input is None else sample_input
        check_against_ort(module, model, np.asarray(x, dtype=input_dtype(model)), atol)
    return module
