"""Split-18, which adds the ``num_outputs`` attribute and allows an uneven last chunk.

Without a ``split`` input, Split-18 cuts the axis into ``num_outputs`` chunks of
``ceil(length / num_outputs)``, the last one smaller when the length does not divide evenly
(onnx2torch's Split-13 would use ``length // n`` and produce the wrong number of pieces).
"""

from __future__ import annotations

import math

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry

#: newest since_version of Split reviewed as handled here.
REVIEWED_UP_TO = 18


def chunk_sizes(length: int, num_outputs: int) -> list[int]:
    """Sizes of the ``num_outputs`` chunks Split-18 cuts ``length`` into."""
    size = math.ceil(length / num_outputs)
    sizes = [size] * (num_outputs - 1)
    return [*sizes, length - sum(sizes)]


class OnnxSplit18(nn.Module):
    """Split along ``axis`` by an explicit ``split`` input or into ``num_outputs`` chunks."""

    def __init__(self, axis: int, num_outputs: int):
        super().__init__()
        self.axis = axis
        self.num_outputs = num_outputs

    def forward(
        self, input_tensor: torch.Tensor, split: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The chunks, in order."""
        if split is not None and split.numel() > 0:
            sizes = [int(s) for s in split.reshape(-1).tolist()]
        else:
            sizes = chunk_sizes(input_tensor.shape[self.axis], self.num_outputs)
        return tuple(torch.split(input_tensor, sizes, dim=self.axis))


def convert_split18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Split-18."""
    del graph
    num_outputs = int(node.attributes.get("num_outputs", len(node.output_values)))
    module = OnnxSplit18(axis=int(node.attributes.get("axis", 0)), num_outputs=num_outputs)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def install() -> list[tuple[str, int]]:
    """Register :func:`convert_split18` for Split since_versions 18..REVIEWED_UP_TO."""
    return [
        ("Split", version)
        for version in registry.since_versions("Split")
        if 18 <= version <= REVIEWED_UP_TO and registry.register("Split", version, convert_split18)
    ]
