"""Clip-11 and later with either bound omitted, or given by a computed tensor.

From Clip-11 the bounds are optional inputs. Both exporters write ``torch.clamp(x, max=m)`` as
``Clip(x, '', m)`` (TorchScript also ``Clip(x, m, '')``), and onnx2torch's converter fails on an
omitted bound and on a bound that is not a constant. Here a constant bound is baked in, and a
computed one is an input of the module; the result is ``min(max(x, min), max)`` as in ONNX.
"""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult
from torch import nn

from . import registry

#: newest since_version of Clip reviewed as handled here.
REVIEWED_UP_TO = 13

_ONNX2TORCH_MODULE = "onnx2torch.node_converters.clip"

Bound = float | int | None


class OnnxClipBounds(nn.Module):
    """``min(max(x, low), high)``; a bound is baked in, omitted, or the next input."""

    def __init__(self, low: Bound, high: Bound, low_is_input: bool, high_is_input: bool):
        super().__init__()
        self.low, self.high = low, high
        self.low_is_input, self.high_is_input = low_is_input, high_is_input

    def forward(self, x: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        """``x`` clipped to the bounds."""
        given = iter(bounds)
        low = next(given) if self.low_is_input else self.low
        high = next(given) if self.high_is_input else self.high
        if low is not None:
            x = torch.clamp(x, min=low)
        if high is not None:
            x = torch.clamp(x, max=high)
        return x


def _bound(name: str, graph: OnnxGraph) -> tuple[Bound, bool]:
    """(baked value, is an input) of the bound read from ``name`` ('' when omitted)."""
    if not name:
        return None, False
    if name in graph.initializers:
        value = graph.initializers[name].to_numpy()
        if value.size != 1:
            raise NotImplementedError(f"Clip bound '{name}' is not a scalar")
        return value.reshape(()).item(), False
    return None, True


def convert_clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Clip-11 and later."""
    names = list(node.input_values) + ["", ""]
    (low, low_in), (high, high_in) = _bound(names[1], graph), _bound(names[2], graph)
    inputs = [names[0]] + [n for n, fed in ((names[1], low_in), (names[2], high_in)) if fed]
    module = OnnxClipBounds(low, high, low_in, high_in)
    return OperationConverterResult(module, OnnxMapping(tuple(inputs), node.output_values))


def install() -> list[tuple[str, int]]:
    """Use :func:`convert_clip` for Clip since_versions 11 to REVIEWED_UP_TO."""
    return [
        ("Clip", version)
        for version in registry.since_versions("Clip")
        if 11 <= version <= REVIEWED_UP_TO
        and registry.supersede("Clip", version, convert_clip, _ONNX2TORCH_MODULE)
    ]
