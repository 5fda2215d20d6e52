"""Pad at every version, at any rank, along any axes, in every mode.

Pad-1 takes ``paddings`` and ``value`` attributes, Pad-2 ``pads`` and ``value``; Pad-11 moved both
to inputs (``pads``, ``constant_value``), Pad-18 added an optional ``axes`` input and Pad-19 the
``wrap`` mode; 13, 21 and later only add types. onnx2torch's own converters (2, 11, 13) read
Pad-2's fill value from a ``constant_value`` attribute that does not exist (so ``value`` is
ignored), and pass ``reflect``/``edge`` to ``F.pad``, which pads only the last one to three axes
of a 2-D to 5-D tensor. :class:`OnnxPad` replaces them all: constant padding (and cropping, for
negative pads) goes through ``F.pad``, which takes any rank; ``reflect``, ``edge`` and ``wrap``
gather each padded axis with an index, so any rank and any set of axes work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry

#: newest since_version of Pad reviewed as handled here.
REVIEWED_UP_TO = 25

#: onnx2torch's module, whose Pad converters ours supersede.
_ONNX2TORCH_MODULE = "onnx2torch.node_converters.pad"

MODES = ("constant", "reflect", "edge", "wrap")


def torch_pads(rank: int, pads: list[int], axes: list[int] | None) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends, over ``axes``) in torch's last-dim-first order.

    Trailing all-zero pairs (leading tensor dims) are dropped.
    """
    begin, end = per_axis(rank, pads, axes)
    flat: list[int] = []
    for axis in reversed(range(rank)):
        flat += [begin[axis], end[axis]]
    while flat and flat[-2:] == [0, 0]:
        del flat[-2:]
    return flat


def per_axis(rank: int, pads: list[int], axes: list[int] | None) -> tuple[list[int], list[int]]:
    """ONNX ``pads`` over ``axes`` (all axes when None) as begin and end pads of every axis."""
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"Pad got {len(pads)} pads for {len(axes)} axes")
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis] = pads[i]
        end[axis] = pads[i + len(axes)]
    return begin, end


def source_index(size: int, begin: int, end: int, mode: str) -> torch.Tensor:
    """For each output position along one axis, the input position it copies.

    Positions ``-begin .. size + end - 1`` of the input are mapped back inside it: mirrored
    without repeating the edge (``reflect``), clamped (``edge``) or taken modulo ``size``
    (``wrap``). A negative ``begin`` or ``end`` crops.
    """
    index = torch.arange(-begin, size + end)
    if mode == "edge" or (mode == "reflect" and size == 1):
        return index.clamp(0, size - 1)
    if mode == "wrap":
        return index.remainder(size)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


class OnnxPad(nn.Module):
    """ONNX Pad with pads from attributes (Pad-1/2) or inputs (Pad-11+), optional ``axes``."""

    def __init__(self, mode: str, pads: list[int] | None = None, value: float = 0.0):
        super().__init__()
        self.mode = mode
        self.pads = pads
        self.value = value

    def forward(
        self,
        data: torch.Tensor,
        pads: torch.Tensor | None = None,
        constant_value: torch.Tensor | None = None,
        axes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``data`` padded as ONNX Pad describes."""
        if self.pads is not None:
            pad_list = self.pads
        elif pads is not None:
            pad_list = [int(p) for p in pads.reshape(-1).tolist()]
        else:
            raise RuntimeError("Pad needs pads")
        axes_list = None if axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        if self.mode == "constant":
            flat = torch_pads(data.dim(), pad_list, axes_list)
            if not flat:
                return data
            value = self.value
            if constant_value is not None and constant_value.numel() > 0:
                value = constant_value.reshape(-1)[0].item()
            return F.pad(data, flat, mode="constant", value=value)
        begin, end = per_axis(data.dim(), pad_list, axes_list)
        for axis, (b, e) in enumerate(zip(begin, end, strict=True)):
            if b or e:
                index = source_index(data.shape[axis], b, e, self.mode).to(data.device)
                data = data.index_select(axis, index)
        return data


def convert_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for every Pad version: attributes (1, 2) or inputs (11 and later)."""
    del graph
    attrs = node.attributes
    mode = attrs.get("mode", "constant")
    if mode not in MODES:
        raise NotImplementedError(f"Pad mode {mode!r} is not supported")
    pads = attrs.get("pads", attrs.get("paddings"))  # Pad-2, Pad-1
    module = OnnxPad(
        mode,
        pads=None if pads is None else [int(p) for p in pads],
        value=float(attrs.get("value", 0.0)),
    )
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def install() -> list[tuple[str, int]]:
    """Use :func:`convert_pad` for every Pad since_version up to REVIEWED_UP_TO.

    onnx2torch's own Pad converters are replaced; an entry anyone else put there is kept.
    """
    return [
        ("Pad", version)
        for version in registry.since_versions("Pad")
        if version <= REVIEWED_UP_TO
        and registry.supersede("Pad", version, convert_pad, _ONNX2TORCH_MODULE)
    ]
