"""Operator versions older than onnx2torch's first converter (models exported at opset < 9).

:data:`OLD_ALIASES` reuses a newer converter for an older version whose changelog up to that
version only adds types (each entry reviewed). Slice-1 takes ``starts``, ``ends`` and ``axes``
as attributes; onnx2torch's attribute-based Slice converter is registered at the non-existent
version 9 and its module fails when run, so :class:`Slice1` replaces it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry

#: op_type -> (old since_version, newer since_version whose converter is exact for it, why).
OLD_ALIASES: dict[str, tuple[int, int, str]] = {
    "Constant": (1, 9, "9 adds types; the tensor is still the 'value' attribute"),
}


class Slice1(nn.Module):
    """Slice-1: ``x[starts:ends]`` along ``axes`` (all leading axes by default), step 1."""

    def __init__(self, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] | None):
        super().__init__()
        self.starts, self.ends = list(starts), list(ends)
        self.axes = list(range(len(starts))) if axes is None else list(axes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The slice; out-of-range bounds are clamped and negative ones count from the end."""
        index = [slice(None)] * x.dim()
        for axis, start, end in zip(self.axes, self.starts, self.ends, strict=True):
            index[axis] = slice(start, end)
        return x[tuple(index)]


def convert_slice1(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Slice-1."""
    del graph
    attrs = node.attributes
    module = Slice1(attrs["starts"], attrs["ends"], attrs.get("axes"))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def install() -> list[tuple[str, int]]:
    """Register the old-version aliases and Slice-1 where nothing is registered yet."""
    added = []
    for op_type, (old, new, _why) in OLD_ALIASES.items():
        converter = registry.lookup(op_type, new)
        if converter is not None and registry.register(op_type, old, converter):
            added.append((op_type, old))
    if registry.register("Slice", 1, convert_slice1):
        added.append(("Slice", 1))
    return added
