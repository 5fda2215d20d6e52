"""The sequence operators that cut a tensor into parts and take parts back (opset 11+).

A sequence is a Python list of tensors between modules: SplitToSequence makes it,
SequenceAt, SequenceLength and ConcatFromSequence consume it. onnx2torch has none of them.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry

#: op_type -> newest since_version reviewed.
REVIEWED_UP_TO = {
    "ConcatFromSequence": 11,
    "SequenceAt": 11,
    "SequenceLength": 11,
    "SplitToSequence": 24,  # 24 only adds types
}


class SplitToSequence(nn.Module):
    """Split along ``axis`` by a ``split`` input (scalar: chunk length; 1-D: lengths) or into
    length-1 parts, squeezed unless ``keepdims`` (only without ``split``)."""

    def __init__(self, axis: int, keepdims: bool):
        super().__init__()
        self.axis = axis
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The parts, in order."""
        length = x.shape[self.axis]
        if split is None:
            parts = list(torch.split(x, 1, dim=self.axis))
            return parts if self.keepdims else [p.squeeze(self.axis) for p in parts]
        if split.dim() == 0:
            size = int(split)
            sizes = [size] * (length // size) + ([length % size] if length % size else [])
        else:
            sizes = [int(s) for s in split.tolist()]
        if sum(sizes) != length:
            raise RuntimeError(f"SplitToSequence split {sizes} does not cover length {length}")
        return list(torch.split(x, sizes, dim=self.axis))


class SequenceAt(nn.Module):
    """The sequence element at a (possibly negative) position."""

    def forward(self, sequence: list[torch.Tensor], position: torch.Tensor) -> torch.Tensor:
        """``sequence[position]``."""
        return sequence[int(position)]


class SequenceLength(nn.Module):
    """The number of tensors in a sequence, as an int64 scalar."""

    def forward(self, sequence: list[torch.Tensor]) -> torch.Tensor:
        """``len(sequence)``."""
        return torch.tensor(len(sequence), dtype=torch.int64)


class ConcatFromSequence(nn.Module):
    """Concatenate a sequence along ``axis``, or stack it along a new one (``new_axis=1``)."""

    def __init__(self, axis: int, new_axis: bool):
        super().__init__()
        self.axis = axis
        self.new_axis = new_axis

    def forward(self, sequence: list[torch.Tensor]) -> torch.Tensor:
        """The concatenation."""
        if self.new_axis:
            return torch.stack(sequence, dim=self.axis)
        return torch.cat(sequence, dim=self.axis)


def _result(module: nn.Module, node: OnnxNode) -> OperationConverterResult:
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def convert_split_to_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for SplitToSequence."""
    del graph
    attrs = node.attributes
    return _result(SplitToSequence(int(attrs.get("axis", 0)), bool(attrs.get("keepdims", 1))), node)


def convert_sequence_at(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for SequenceAt."""
    del graph
    return _result(SequenceAt(), node)


def convert_sequence_length(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for SequenceLength."""
    del graph
    return _result(SequenceLength(), node)


def convert_concat_from_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for ConcatFromSequence."""
    del graph
    attrs = node.attributes
    return _result(ConcatFromSequence(int(attrs["axis"]), bool(attrs.get("new_axis", 0))), node)


CONVERTERS: dict[str, registry.Converter] = {
    "ConcatFromSequence": convert_concat_from_sequence,
    "SequenceAt": convert_sequence_at,
    "SequenceLength": convert_sequence_length,
    "SplitToSequence": convert_split_to_sequence,
}


def install() -> list[tuple[str, int]]:
    """Register the converters for every reviewed since_version still missing."""
    return [
        (op_type, version)
        for op_type, converter in CONVERTERS.items()
        for version in registry.since_versions(op_type)
        if version <= REVIEWED_UP_TO[op_type] and registry.register(op_type, version, converter)
    ]
