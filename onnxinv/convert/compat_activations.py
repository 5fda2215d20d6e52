"""Activations that current exporters emit as single operators and onnx2torch lacks entirely.

``torch.onnx.export`` at opset 20 writes ``nn.GELU`` as Gelu-20, and the dynamo exporter writes
``nn.Mish`` as Mish-18; both have exact torch counterparts. Mish-22 only adds bfloat16. Shrink-9
(``nn.Hardshrink``/``nn.Softshrink`` exported by hand, or written by other converters) is
``x - bias`` above ``lambd``, ``x + bias`` below ``-lambd`` and 0 in between.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry


class Gelu(nn.Module):
    """ONNX Gelu: exact (erf) or tanh approximation."""

    def __init__(self, approximate: str):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``gelu(x)``."""
        return F.gelu(x, approximate=self.approximate)


def convert_gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Gelu-20."""
    del graph
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r} is not supported")
    return OperationConverterResult(
        torch_module=Gelu(approximate), onnx_mapping=onnx_mapping_from_node(node)
    )


def convert_mish(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Mish-18 and Mish-22."""
    del graph
    return OperationConverterResult(
        torch_module=nn.Mish(), onnx_mapping=onnx_mapping_from_node(node)
    )


class Shrink(nn.Module):
    """ONNX Shrink."""

    def __init__(self, bias: float, lambd: float):
        super().__init__()
        self.bias = bias
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x - bias`` where ``x > lambd``, ``x + bias`` where ``x < -lambd``, else 0."""
        zero = torch.zeros_like(x)
        return torch.where(
            x > self.lambd, x - self.bias, torch.where(x < -self.lambd, x + self.bias, zero)
        )


def convert_shrink(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Shrink-9."""
    del graph
    module = Shrink(
        bias=float(node.attributes.get("bias", 0.0)),
        lambd=float(node.attributes.get("lambd", 0.5)),
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


#: op_type -> (converter, newest since_version reviewed).
CONVERTERS: dict[str, tuple[registry.Converter, int]] = {
    "Gelu": (convert_gelu, 20),
    "Mish": (convert_mish, 22),
    "Shrink": (convert_shrink, 9),
}


def install() -> list[tuple[str, int]]:
    """Register the converters for every reviewed since_version still missing."""
    return [
        (op_type, version)
        for op_type, (converter, up_to) in CONVERTERS.items()
        for version in registry.since_versions(op_type)
        if version <= up_to and registry.register(op_type, version, converter)
    ]
