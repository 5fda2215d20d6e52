"""Reduce* operators from opset 18, where ``axes`` moved from an attribute to an input.

onnx2torch stops at Reduce*-13 (except ReduceSum, whose axes became an input already at 13). From
18 on, ``axes`` is an optional second input and ``noop_with_empty_axes`` says what an empty or
missing ``axes`` means. Later versions (ReduceMax/ReduceMin-20 add bool, ReduceLogSum and
ReduceLogSumExp-28 drop integer types) only change types and reuse the same converter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import nn

from . import registry

Reducer = Callable[[torch.Tensor, list[int], bool], torch.Tensor]


def _max(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    if x.dtype == torch.bool:
        return torch.any(x, dim=tuple(dims), keepdim=keep)
    return torch.amax(x, dim=dims, keepdim=keep)


def _min(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    if x.dtype == torch.bool:
        return torch.all(x, dim=tuple(dims), keepdim=keep)
    return torch.amin(x, dim=dims, keepdim=keep)


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    # torch.prod takes one dim at a time; going from the last dim keeps the others' indices valid.
    for dim in sorted(dims, reverse=True):
        x = torch.prod(x, dim=dim, keepdim=keep)
    return x


#: ONNX reduction -> torch implementation on normalised (non-negative, sorted, unique) dims.
REDUCERS: dict[str, Reducer] = {
    "ReduceL1": lambda x, d, k: torch.sum(torch.abs(x), dim=d, keepdim=k),
    "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, ord=2, dim=d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: torch.log(torch.sum(x, dim=d, keepdim=k)),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
    "ReduceMax": _max,
    "ReduceMean": lambda x, d, k: torch.mean(x, dim=d, keepdim=k),
    "ReduceMin": _min,
    "ReduceProd": _prod,
    "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, dim=d, keepdim=k),
}

#: What a reduction does with ``noop_with_empty_axes=1`` and no axes: its elementwise part only
#: (ReduceL1 is ReduceSum(Abs(x)), so it becomes Abs(x)); the others return the input.
NO_AXES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "ReduceL1": torch.abs,
    "ReduceL2": torch.abs,
    "ReduceLogSum": torch.log,
    "ReduceSumSquare": lambda x: x * x,
}

#: op_type -> newest since_version reviewed as "same as 18 apart from types".
REVIEWED_UP_TO: dict[str, int] = {
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceLogSum": 28,
    "ReduceLogSumExp": 28,
    "ReduceMax": 20,
    "ReduceMean": 18,
    "ReduceMin": 20,
    "ReduceProd": 18,
    "ReduceSumSquare": 18,
}


class OnnxReduce18(nn.Module):
    """An opset-18 reduction; ``axes`` is fixed at conversion time or passed to ``forward``.

    Args:
        op_type: the ONNX operator, a key of :data:`REDUCERS`.
        axes: constant axes, or None when they arrive as the second ``forward`` argument.
        keepdims: keep reduced dimensions with size 1.
        noop_with_empty_axes: with no (or empty) axes, reduce nothing (see :data:`NO_AXES`)
            instead of reducing all.
    """

    def __init__(
        self,
        op_type: str,
        axes: Sequence[int] | None,
        keepdims: bool,
        noop_with_empty_axes: bool,
    ):
        super().__init__()
        self.op_type = op_type
        self.axes = None if axes is None else [int(a) for a in axes]
        self.keepdims = keepdims
        self.noop_with_empty_axes = noop_with_empty_axes

    def forward(self, data: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        """Reduce ``data`` over the constant axes, else over ``axes``, else as ONNX says."""
        if self.axes is not None:
            dims = self.axes
        elif axes is not None:
            dims = [int(a) for a in axes.reshape(-1).tolist()]
        else:
            dims = []
        if not dims:
            if self.noop_with_empty_axes:
                return NO_AXES.get(self.op_type, lambda x: x)(data)
            dims = list(range(data.dim()))
        rank = max(data.dim(), 1)
        dims = sorted({d % rank for d in dims})
        return REDUCERS[self.op_type](data, dims, self.keepdims)


def convert_reduce18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Reduce*-18 and the type-only bumps after it."""
    keepdims = bool(node.attributes.get("keepdims", 1))
    noop = bool(node.attributes.get("noop_with_empty_axes", 0))
    inputs = node.input_values
    if len(inputs) < 2 or not inputs[1]:
        axes: list[int] | None = []
        mapping = OnnxMapping(inputs=(inputs[0],), outputs=node.output_values)
    else:
        try:
            constant = get_const_value(inputs[1], graph)
            axes = torch.as_tensor(constant).reshape(-1).tolist()
            mapping = OnnxMapping(inputs=(inputs[0],), outputs=node.output_values)
        except KeyError:
            axes = None  # computed at run time
            mapping = onnx_mapping_from_node(node=node)
    module = OnnxReduce18(node.operation_type, axes, keepdims, noop)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def install() -> list[tuple[str, int]]:
    """Register :func:`convert_reduce18` for every reviewed since_version >= 18 still missing."""
    added = []
    for op_type, up_to in REVIEWED_UP_TO.items():
        for version in registry.since_versions(op_type):
            if 18 <= version <= up_to and registry.register(op_type, version, convert_reduce18):
                added.append((op_type, version))
    return added
