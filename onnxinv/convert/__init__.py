"""ONNX → PyTorch conversion (via onnx2torch) for Jacobians by autograd.

:func:`to_torch` converts a single-input, single-output model, and by default checks the result
against onnxruntime. Every failure is a :class:`~onnxinv.errors.ConversionError` whose one-line
message names the operator and node responsible.

The model is normalised first (:func:`normalise`: Constant weights, initializers listed as
inputs, unsorted nodes, Identity chains, values folded from constants). A node that still does
not convert (no converter, a converter that fails, or a converted module that disagrees with
onnxruntime) runs alone in onnxruntime inside the module, its gradient taken by central
differences of that node alone (:mod:`.fallback`); the rest of the model stays autograd.
:func:`fallback_nodes` lists those nodes as ``"name (OpType)"``, and is empty when every node
converted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx2torch
import torch

from ..errors import ConversionError
from . import compat
from .agreement import check as check_against_ort
from .fallback import ATTRIBUTE, Fallbacks, fallback_nodes
from .locate import (
    FALLBACK,
    failed_converter_error,
    failing_node,
    missing_converter_error,
    missing_converters,
    one_line,
)
from .normalise import normalise
from .sample import check_single_output, graph_input, input_dtype
from .sample import sample_input as random_input
from .select_output import select_graph_output

__all__ = ["ConversionError", "compat", "fallback_nodes", "normalise", "to_torch"]

#: Nodes that may fall back because their converted module disagrees with onnxruntime.
MAX_DISAGREEING_NODES = 4


def _set_dtype(module: torch.nn.Module, model: onnx.ModelProto) -> torch.nn.Module:
    dtype = input_dtype(model)
    if dtype == np.float32:
        return module.float()
    if dtype == np.float64:
        return module.double()
    return module


def _convert(model: onnx.ModelProto, fallbacks: Fallbacks) -> torch.fx.GraphModule:
    """onnx2torch's conversion, each node whose converter fails falling back in turn."""
    for _ in range(len(model.graph.node) + 1):
        with fallbacks.installed():
            try:
                return onnx2torch.convert(model, attach_onnx_mapping=True)
            except ConversionError:
                raise
            except Exception as exc:
                found, error = failing_node(model), exc
        if found is None:
            raise ConversionError(
                f"conversion to PyTorch failed: {one_line(error)}; {FALLBACK}"
            ) from error
        reason = failed_converter_error(*found)
        if not fallbacks.add(found[0], reason):
            raise reason from error
    raise AssertionError("unreachable: every node has fallen back")


def _finish(module: torch.fx.GraphModule, model: onnx.ModelProto) -> torch.fx.GraphModule:
    return _set_dtype(select_graph_output(module, model), model).eval()


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
        value names of its inputs and outputs. Its ``onnxinv_fallback_nodes`` attribute (see
        :func:`fallback_nodes`) lists the nodes that run in onnxruntime.

    Raises:
        ConversionError: a node can neither be converted nor fall back (its Jacobian by
            differences would be too costly, or it reads sequences), or the check failed;
            ``op_type`` and ``node`` name the node responsible when one is found.
        ModelError: the model does not have exactly one graph input and one output, or
            onnxruntime cannot run it.
    """
    compat.install()
    graph_input(model)  # exactly one input, else ModelError
    check_single_output(model)
    converted = normalise(model)
    fallbacks = Fallbacks(converted)
    for info in missing_converters(converted):
        reason = missing_converter_error(info)
        if not fallbacks.add(info, reason):
            raise reason
    module = _finish(_convert(converted, fallbacks), converted)
    if check:
        x = random_input(model, seed) if sample_input is None else sample_input
        x = np.asarray(x, dtype=input_dtype(model))
        for attempt in range(MAX_DISAGREEING_NODES + 1):
            try:
                check_against_ort(module, converted, x, atol, reference=model)
                break
            except ConversionError as error:
                info = fallbacks.named(error.node)
                last = attempt == MAX_DISAGREEING_NODES
                if last or info is None or not fallbacks.add(info, error):
                    raise
            module = _finish(_convert(converted, fallbacks), converted)
    setattr(module, ATTRIBUTE, fallbacks.labels())
    return module
