"""Reshape-14 and later with ``allowzero=1``.

``allowzero=1`` changes the meaning of a 0 in the target shape: it is a real zero-size dimension
instead of "copy this dimension from the input". When the target has no 0 the two readings agree,
so onnx2torch's reshape module is exact. A 0 with ``allowzero=1`` would build an empty tensor,
which an inverted network never has, so it is rejected: at conversion time when the target shape
is a constant, otherwise when the module runs.
"""

from __future__ import annotations

import torch
from onnx2torch.node_converters.reshape import OnnxReshape
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import nn

from . import registry

_ONNX2TORCH_MODULE = OnnxReshape.__module__

#: since_versions of Reshape reviewed as identical to Reshape-14 apart from added types.
REVIEWED_UP_TO = 25


def _zero_error(node_name: str) -> str:
    return (
        f"Reshape node '{node_name}' has allowzero=1 and a 0 in its target shape (a zero-size "
        "dimension), which is not supported"
    )


class ReshapeAllowZero(nn.Module):
    """Reshape whose target shape is computed at run time, with ``allowzero=1``."""

    def __init__(self, node_name: str):
        super().__init__()
        self.node_name = node_name

    def forward(self, input_tensor: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """Reshape ``input_tensor`` to ``shape``; a 0 in ``shape`` raises RuntimeError."""
        target = [int(d) for d in shape.tolist()]
        if 0 in target:
            raise RuntimeError(_zero_error(self.node_name))
        return torch.reshape(input_tensor, target)


def convert_reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Reshape with or without ``allowzero``."""
    mapping = onnx_mapping_from_node(node=node)
    if node.attributes.get("allowzero", 0) != 1:
        return OperationConverterResult(torch_module=OnnxReshape(), onnx_mapping=mapping)
    try:
        target = get_const_value(node.input_values[1], graph)
    except KeyError:
        return OperationConverterResult(
            torch_module=ReshapeAllowZero(node.name or node.unique_name), onnx_mapping=mapping
        )
    if 0 in torch.as_tensor(target).reshape(-1).tolist():
        raise NotImplementedError(_zero_error(node.name or node.unique_name))
    # No 0 in a constant target: allowzero makes no difference.
    return OperationConverterResult(torch_module=OnnxReshape(), onnx_mapping=mapping)


def install() -> list[tuple[str, int]]:
    """Use :func:`convert_reshape` for Reshape-14 and every newer reviewed since_version."""
    added = []
    for version in registry.since_versions("Reshape"):
        if version < 14 or version > REVIEWED_UP_TO:
            continue
        if registry.supersede("Reshape", version, convert_reshape, _ONNX2TORCH_MODULE):
            added.append(("Reshape", version))
    return added
