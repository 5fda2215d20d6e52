"""Pad-18 and later: an optional ``axes`` input (18) and the ``wrap`` mode (19).

onnx2torch stops at Pad-13, whose module would receive the new ``axes`` input as an unexpected
argument. This module accepts it and pads only the listed axes. Pad-21 and later only add types.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import _registry

#: newest since_version of Pad reviewed as handled here.
REVIEWED_UP_TO = 25

#: ONNX pad mode -> torch.nn.functional.pad mode.
MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def torch_pads(rank: int, pads: list[int], axes: list[int] | None) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends, over ``axes``) in torch's last-dim-first order.

    Trailing all-zero pairs (leading tensor dims) are dropped, since torch's non-constant modes
    only pad the last few dimensions.
    """
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis] = pads[i]
        end[axis] = pads[i + len(axes)]
    flat: list[int] = []
    for axis in reversed(range(rank)):
        flat += [begin[axis], end[axis]]
    while flat and flat[-2:] == [0, 0]:
        del flat[-2:]
    return flat


class OnnxPad18(nn.Module):
    """Pad-18+ with run-time ``pads``, ``constant_value`` and ``axes`` inputs."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode

    def forward(
        self,
        data: torch.Tensor,
        pads: torch.Tensor,
        constant_value: torch.Tensor | None = None,
        axes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``data`` padded as ONNX Pad describes."""
        axes_list = None if axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        flat = torch_pads(data.dim(), [int(p) for p in pads.reshape(-1).tolist()], axes_list)
        if not flat:
            return data
        if self.mode != "constant":
            return F.pad(data, flat, mode=self.mode)
        value = 0.0 if constant_value is None else constant_value.reshape(-1)[0].item()
        return F.pad(data, flat, mode="constant", value=value)


def convert_pad18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Pad-18 and later."""
    del graph
    mode = node.attributes.get("mode", "constant")
    if mode not in MODES:
        raise NotImplementedError(f"Pad mode {mode!r} is not supported")
    return OperationConverterResult(
        torch_module=OnnxPad18(MODES[mode]), onnx_mapping=onnx_mapping_from_node(node)
    )


def install() -> list[tuple[str, int]]:
    """Register :func:`convert_pad18` for Pad since_versions 18..REVIEWED_UP_TO still missing."""
    return [
        ("Pad", version)
        for version in _registry.since_versions("Pad")
        if 18 <= version <= REVIEWED_UP_TO and _registry.register("Pad", version, convert_pad18)
    ]
