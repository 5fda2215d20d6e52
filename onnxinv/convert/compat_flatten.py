"""Flatten at every version, for every ``axis`` from ``-rank`` to ``rank``.

Flatten reshapes its input to 2-D ``[prod(shape[:axis]), prod(shape[axis:])]``. onnx2torch's
module flattens ``end_dim=axis - 1`` and then ``start_dim=1``, which fails for ``axis=0``, for
``axis=rank`` and for 1-D inputs (a torch-exported ``x.view(1, -1)`` of a vector is such a
Flatten). Flatten-1 is Flatten-9 without the extra types; 11 allows a negative axis; 13, 21 and
later only add types.
"""

from __future__ import annotations

import math

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry

#: newest since_version of Flatten reviewed as handled here.
REVIEWED_UP_TO = 25

_ONNX2TORCH_MODULE = "onnx2torch.node_converters.flatten"


class OnnxFlatten(nn.Module):
    """``x`` as a matrix: the axes before ``axis`` make the rows, the rest the columns."""

    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 2-D reshape of ``x``."""
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        if not 0 <= axis <= x.dim():
            raise RuntimeError(f"Flatten axis {self.axis} is out of range for rank {x.dim()}")
        return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def convert_flatten(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for every Flatten version."""
    del graph
    module = OnnxFlatten(int(node.attributes.get("axis", 1)))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def install() -> list[tuple[str, int]]:
    """Use :func:`convert_flatten` for every Flatten since_version up to REVIEWED_UP_TO."""
    return [
        ("Flatten", version)
        for version in registry.since_versions("Flatten")
        if version <= REVIEWED_UP_TO
        and registry.supersede("Flatten", version, convert_flatten, _ONNX2TORCH_MODULE)
    ]
