"""Pooling and convolution with ``auto_pad``, asymmetric pads and the versions onnx2torch lacks.

onnx2torch refuses ``auto_pad=SAME_UPPER/SAME_LOWER`` (which Keras/tf2onnx exporters write),
refuses asymmetric ``pads`` on AveragePool and ConvTranspose, ignores ConvTranspose's
``output_shape``, pads MaxPool asymmetrically in a way that changes the ``ceil_mode`` output size,
and has no converter for MaxPool-1, AveragePool-1, LpPool, GlobalMaxPool or GlobalLpPool.

The converters here delegate to onnx2torch's whenever the node is *plain* (explicit symmetric
pads that torch accepts, no ``ceil_mode``, no AveragePool dilations), so what already converted
keeps its module. Everything else gets an explicit implementation:

* :class:`OnnxPool` computes the begin/end pads from the actual input shape (so ``SAME_*`` works
  with any static or run-time spatial size), pads explicitly (-inf for MaxPool, 0 otherwise) and
  pools without implicit padding. ``ceil_mode`` becomes extra end padding, so the output size is
  ONNX's: ``ceil((in + pads - eff_kernel) / stride) + 1``, minus one when the last window would
  start past the input and its begin padding. AveragePool divides by the count of positions
  inside the input (``count_include_pad=0``) or inside input plus declared pads (``=1``), never
  counting the extra ``ceil_mode`` padding; it and LpPool sum windows with a ones-kernel
  convolution, so dilations work.
* Conv with ``SAME_*`` is onnx2torch's unpadded convolution behind :class:`SamePad`.
* :class:`OnnxConvTranspose` runs an unpadded transposed convolution and crops (or extends) each
  spatial axis by the begin/end pads, from ``pads``, ``auto_pad`` or ``output_shape``.

Spatial rank 1 to 3 is supported (torch has no 4-D pooling or convolution).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from onnx import helper
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult
from torch import nn

from ..shapes import Pads, effective_kernel, same_pads, split_padding
from . import registry

#: op_type -> newest since_version reviewed (22 only adds bfloat16 to each of them).
REVIEWED_UP_TO: dict[str, int] = {
    "AveragePool": 22,
    "Conv": 22,
    "ConvTranspose": 22,
    "GlobalLpPool": 22,
    "GlobalMaxPool": 22,
    "LpPool": 22,
    "MaxPool": 22,
}

SAME = ("SAME_UPPER", "SAME_LOWER")
AUTO_PADS = ("NOTSET", "VALID", *SAME)

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

# ------------------------------------------------------------------------------------- padding


def split_pads(pads: Sequence[int] | None, rank: int) -> Pads:
    """ONNX ``pads`` ``[b1, b2, ..., e1, e2, ...]`` as (begins, ends); zeros when absent."""
    if not pads:
        return [0] * rank, [0] * rank
    if len(pads) != 2 * rank:
        raise ValueError(f"pads {list(pads)} do not match {rank} spatial axes")
    return list(pads[:rank]), list(pads[rank:])


def torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """Per-axis begin/end pads of the trailing axes in F.pad's last-axis-first order."""
    flat: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        flat += [b, e]
    return flat


class SamePad(nn.Module):
    """Zero-pad the trailing spatial axes as ``auto_pad=SAME_*`` asks, from the input's shape."""

    def __init__(
        self,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
        auto_pad: str,
    ):
        super().__init__()
        self.kernel, self.strides, self.dilations = list(kernel), list(strides), list(dilations)
        self.auto_pad = auto_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded."""
        sizes = list(x.shape[x.dim() - len(self.kernel) :])
        extents = effective_kernel(self.kernel, self.dilations)
        begin, end = same_pads(sizes, extents, self.strides, self.auto_pad)
        return F.pad(x, torch_pad(begin, end)) if any(begin) or any(end) else x


# ------------------------------------------------------------------------------------- pooling


def _window_sums(
    x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]
) -> torch.Tensor:
    """Sum of every (dilated) window over the trailing ``len(kernel)`` axes, no padding."""
    n = len(kernel)
    lead, spatial = x.shape[: x.dim() - n], x.shape[x.dim() - n :]
    ones = torch.ones((1, 1, *kernel), dtype=x.dtype, device=x.device)
    sums = _CONV[n](x.reshape(-1, 1, *spatial), ones, stride=strides, dilation=dilations)
    return sums.reshape(*lead, *sums.shape[2:])


def _window_max(
    x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]
) -> torch.Tensor:
    n = len(kernel)
    lead, spatial = x.shape[: x.dim() - n], x.shape[x.dim() - n :]
    out = _MAX_POOL[n](x.reshape(-1, 1, *spatial), kernel, strides, 0, dilations)
    return out.reshape(*lead, *out.shape[2:])


class OnnxPool(nn.Module):
    """MaxPool, AveragePool or LpPool over the trailing spatial axes, padded explicitly."""

    def __init__(
        self,
        kind: str,
        kernel: Sequence[int],
        strides: Sequence[int],
        dilations: Sequence[int],
        pads: Sequence[int] | None,
        auto_pad: str = "NOTSET",
        ceil_mode: bool = False,
        count_include_pad: bool = False,
        p: float = 2.0,
    ):
        super().__init__()
        if kind not in ("max", "avg", "lp"):
            raise ValueError(f"unknown pooling {kind!r}")
        self.kind = kind
        self.kernel, self.strides, self.dilations = list(kernel), list(strides), list(dilations)
        self.pads = None if pads is None else list(pads)
        self.auto_pad = auto_pad
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.p = p

    def padding(self, sizes: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Declared begin pads, declared end pads, and the extra end pads ``ceil_mode`` needs."""
        n = len(self.kernel)
        if self.auto_pad in SAME:
            extents = effective_kernel(self.kernel, self.dilations)
            begin, end = same_pads(sizes, extents, self.strides, self.auto_pad)
        elif self.auto_pad == "VALID":
            begin, end = [0] * n, [0] * n
        else:
            begin, end = split_pads(self.pads, n)
        extra = []
        effective = effective_kernel(self.kernel, self.dilations)
        for size, b, e, eff, s in zip(sizes, begin, end, effective, self.strides, strict=True):
            span = size + b + e - eff
            if span < 0:
                raise RuntimeError(f"pooling window {eff} is larger than the padded input")
            out = span // s + 1
            if self.ceil_mode and self.auto_pad not in SAME:
                out = math.ceil(span / s) + 1
                if (out - 1) * s >= size + b:  # the last window would start in the end padding
                    out -= 1
            extra.append(max(0, (out - 1) * s + eff - (size + b + e)))
        return begin, end, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled tensor."""
        n = len(self.kernel)
        sizes = list(x.shape[x.dim() - n :])
        begin, end, extra = self.padding(sizes)
        full_end = [e + x_ for e, x_ in zip(end, extra, strict=True)]
        pool_args = (self.kernel, self.strides, self.dilations)
        if self.kind == "max":
            padded = F.pad(x, torch_pad(begin, full_end), value=float("-inf"))
            return _window_max(padded, *pool_args)
        values = x if self.kind == "avg" else x.abs().pow(self.p)
        sums = _window_sums(F.pad(values, torch_pad(begin, full_end)), *pool_args)
        if self.kind == "lp":
            return sums.pow(1.0 / self.p)
        ones = torch.ones((1, 1, *sizes), dtype=x.dtype, device=x.device)
        mask = F.pad(ones, torch_pad(begin, end), value=1.0 if self.count_include_pad else 0.0)
        counts = _window_sums(F.pad(mask, torch_pad([0] * n, extra)), *pool_args)
        return sums / counts[0, 0]


class GlobalPool(nn.Module):
    """GlobalMaxPool or GlobalLpPool: reduce every axis after the first two, keeping them."""

    def __init__(self, kind: str, p: float = 2.0):
        super().__init__()
        self.kind = kind
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled tensor, shape ``[N, C, 1, ..., 1]``."""
        dims = list(range(2, x.dim()))
        if self.kind == "max":
            return torch.amax(x, dim=dims, keepdim=True)
        return torch.linalg.vector_norm(x, ord=self.p, dim=dims, keepdim=True)


# ------------------------------------------------------------------------------- conv transpose


class OnnxConvTranspose(nn.Module):
    """ConvTranspose whose begin/end pads may differ, come from ``auto_pad`` or ``output_shape``."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        strides: Sequence[int],
        dilations: Sequence[int],
        group: int,
        output_padding: Sequence[int],
        pads: Sequence[int] | None,
        auto_pad: str,
        output_shape: Sequence[int] | None,
    ):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.strides, self.dilations = list(strides), list(dilations)
        self.group = group
        self.output_padding = list(output_padding)
        self.pads = None if pads is None else list(pads)
        self.auto_pad = auto_pad
        self.output_shape = None if output_shape is None else list(output_shape)

    def padding(self, sizes: Sequence[int]) -> Pads:
        """Begin and end pads (negative: the output is extended) for spatial input ``sizes``."""
        n = len(sizes)
        kernel = list(self.weight.shape[2:])
        if self.output_shape is None and self.auto_pad not in SAME:
            return split_pads(None if self.auto_pad == "VALID" else self.pads, n)
        if self.output_shape is not None:
            target = self.output_shape[-n:]
        else:
            target = [size * s for size, s in zip(sizes, self.strides, strict=True)]
        begin, end = [], []
        for i, eff in enumerate(effective_kernel(kernel, self.dilations)):
            full = self.strides[i] * (sizes[i] - 1) + self.output_padding[i] + eff
            # As onnxruntime does: a target larger than the full output is not reached by
            # negative pads; an explicit output_shape is then filled up with zeros at the end.
            total = max(0, full - target[i])
            b, e = split_padding(total, self.auto_pad)
            begin.append(b)
            short = target[i] - (full - total) if self.output_shape is not None else 0
            end.append(e - max(0, short))
        return begin, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The transposed convolution."""
        n = self.weight.dim() - 2
        begin, end = self.padding(list(x.shape[2:]))
        y = _CONV_TRANSPOSE[n](
            x, self.weight, None, stride=self.strides, groups=self.group, dilation=self.dilations
        )
        # Output padding adds zero-input positions at the end; pads crop (or, negative, extend).
        ends = [op - e for op, e in zip(self.output_padding, end, strict=True)]
        y = F.pad(y, torch_pad([-b for b in begin], ends))
        if self.bias is not None:
            y = y + self.bias.reshape(1, -1, *([1] * n))
        return y


# ------------------------------------------------------------------------------------ converters


def _ints(node: OnnxNode, name: str, n: int, default: int) -> list[int]:
    value = node.attributes.get(name)
    return [default] * n if value is None else [int(v) for v in value]


def _auto_pad(node: OnnxNode) -> str:
    auto_pad = node.attributes.get("auto_pad", "NOTSET")
    if auto_pad not in AUTO_PADS:
        raise NotImplementedError(f"auto_pad {auto_pad!r} is not supported")
    return auto_pad


def _single_output(node: OnnxNode, graph: OnnxGraph) -> OnnxMapping:
    """Mapping of the node's first input and output; a used second output (Indices) is refused."""
    extra = [o for o in node.output_values[1:] if o]
    used = {v for other in graph.nodes.values() for v in other.input_values}
    used.update(graph.output_values)
    if any(o in used for o in extra):
        raise NotImplementedError(f"{node.operation_type}'s Indices output is not supported")
    return OnnxMapping(inputs=(node.input_values[0],), outputs=(node.output_values[0],))


def _is_plain(kernel: list[int], pads: list[int] | None, auto_pad: str) -> bool:
    """Whether torch's own symmetric padding can express the node's padding."""
    if auto_pad in SAME:
        return False
    if auto_pad == "VALID" or not pads:
        return True
    begin, end = split_pads(pads, len(kernel))
    return begin == end and all(2 * b <= k for b, k in zip(begin, kernel, strict=True))


def _pool_converter(op_type: str) -> Callable[[OnnxNode, OnnxGraph, Callable | None], object]:
    kind = {"MaxPool": "max", "AveragePool": "avg", "LpPool": "lp"}[op_type]

    def convert(
        node: OnnxNode, graph: OnnxGraph, base: registry.Converter | None
    ) -> OperationConverterResult:
        attrs = node.attributes
        if "kernel_shape" not in attrs:
            raise NotImplementedError(f"{op_type} without kernel_shape is not supported")
        kernel = [int(k) for k in attrs["kernel_shape"]]
        n = len(kernel)
        if n not in _CONV:
            raise NotImplementedError(f"{op_type} over {n} spatial axes is not supported")
        auto_pad = _auto_pad(node)
        dilations = _ints(node, "dilations", n, 1)
        if auto_pad in SAME and any(d != 1 for d in dilations):
            # onnxruntime sizes SAME padding from the undilated kernel, onnx's reference
            # implementation from the dilated one: there is no single meaning to convert to.
            raise NotImplementedError(f"{op_type} with auto_pad={auto_pad} and dilations")
        ceil_mode = bool(attrs.get("ceil_mode", 0))
        pads = attrs.get("pads")
        mapping = _single_output(node, graph)
        plain = (
            _is_plain(kernel, pads, auto_pad)
            and not ceil_mode
            and attrs.get("storage_order", 0) == 0  # onnx2torch refuses it, even without Indices
            and (kind != "avg" or all(d == 1 for d in dilations))
        )
        if base is not None and plain and kind != "lp":
            result = base(node, graph)
            return OperationConverterResult(torch_module=result.torch_module, onnx_mapping=mapping)
        module = OnnxPool(
            kind,
            kernel,
            _ints(node, "strides", n, 1),
            dilations,
            pads,
            auto_pad=auto_pad,
            ceil_mode=ceil_mode,
            count_include_pad=bool(attrs.get("count_include_pad", 0)),
            p=float(attrs.get("p", 2)),
        )
        return OperationConverterResult(torch_module=module, onnx_mapping=mapping)

    return convert


def _global_converter(op_type: str) -> Callable[[OnnxNode, OnnxGraph, Callable | None], object]:
    kind = "max" if op_type == "GlobalMaxPool" else "lp"

    def convert(
        node: OnnxNode, graph: OnnxGraph, base: registry.Converter | None
    ) -> OperationConverterResult:
        del graph, base
        module = GlobalPool(kind, float(node.attributes.get("p", 2)))
        return OperationConverterResult(
            torch_module=module,
            onnx_mapping=OnnxMapping(inputs=node.input_values, outputs=node.output_values),
        )

    return convert


def _without_padding(node: OnnxNode) -> OnnxNode:
    """A copy of ``node`` with ``auto_pad`` and ``pads`` removed (torch pads of 0)."""
    proto = helper.make_node(
        node.operation_type, list(node.input_values), list(node.output_values), name=node.name
    )
    proto.domain = node.domain
    proto.attribute.extend(a for a in node.proto.attribute if a.name not in ("auto_pad", "pads"))
    return OnnxNode(proto, node.unique_name)


def convert_conv(
    node: OnnxNode, graph: OnnxGraph, base: registry.Converter | None
) -> OperationConverterResult:
    """Conv: onnx2torch's, behind :class:`SamePad` when ``auto_pad`` is SAME_*."""
    if base is None:
        raise NotImplementedError("no onnx2torch Conv converter to build on")
    auto_pad = _auto_pad(node)
    if auto_pad not in SAME:
        return base(node, graph)
    result = base(_without_padding(node), graph)
    conv = result.torch_module
    pad = SamePad(conv.kernel_size, conv.stride, conv.dilation, auto_pad)
    return OperationConverterResult(
        torch_module=nn.Sequential(pad, conv), onnx_mapping=result.onnx_mapping
    )


def convert_conv_transpose(
    node: OnnxNode, graph: OnnxGraph, base: registry.Converter | None
) -> OperationConverterResult:
    """ConvTranspose: onnx2torch's for symmetric pads, :class:`OnnxConvTranspose` otherwise."""
    attrs = node.attributes
    auto_pad = _auto_pad(node)
    weight = graph.initializers[node.input_values[1]].to_torch()
    n = weight.dim() - 2
    if n not in _CONV:
        raise NotImplementedError(f"ConvTranspose over {n} spatial axes is not supported")
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != list(weight.shape[2:]):
        raise NotImplementedError("ConvTranspose kernel_shape differs from the weight's shape")
    pads = attrs.get("pads")
    begin, end = split_pads(pads, n)
    symmetric = auto_pad not in SAME and (auto_pad == "VALID" or begin == end)
    if base is not None and symmetric and "output_shape" not in attrs:
        return base(node, graph)
    inputs = [v for v in node.input_values if v]
    bias = graph.initializers[inputs[2]].to_torch() if len(inputs) > 2 else None
    module = OnnxConvTranspose(
        weight,
        bias,
        strides=_ints(node, "strides", n, 1),
        dilations=_ints(node, "dilations", n, 1),
        group=int(attrs.get("group", 1)),
        output_padding=_ints(node, "output_padding", n, 0),
        pads=pads,
        auto_pad=auto_pad,
        output_shape=attrs.get("output_shape"),
    )
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


_CONVERTERS = {
    "AveragePool": _pool_converter("AveragePool"),
    "Conv": convert_conv,
    "ConvTranspose": convert_conv_transpose,
    "GlobalLpPool": _global_converter("GlobalLpPool"),
    "GlobalMaxPool": _global_converter("GlobalMaxPool"),
    "LpPool": _pool_converter("LpPool"),
    "MaxPool": _pool_converter("MaxPool"),
}

#: (op_type, since_version) -> the onnx2torch converter ours replaced (None: there was none).
_ORIGINALS: dict[tuple[str, int], registry.Converter | None] = {}
_WRAPPERS: dict[tuple[str, int], registry.Converter] = {}


def _base(op_type: str, version: int) -> registry.Converter | None:
    """onnx2torch's converter at ``version`` or, failing that, at the newest version below."""
    for v in sorted(_ORIGINALS, reverse=True):
        if v[0] == op_type and v[1] <= version and _ORIGINALS[v] is not None:
            return _ORIGINALS[v]
    return None


def _wrapper(op_type: str, version: int) -> registry.Converter:
    if (op_type, version) not in _WRAPPERS:

        def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
            return _CONVERTERS[op_type](node, graph, _base(op_type, version))

        converter.__doc__ = f"{op_type}-{version} with auto_pad and asymmetric pads."
        _WRAPPERS[op_type, version] = converter
    return _WRAPPERS[op_type, version]


def install() -> list[tuple[str, int]]:
    """Put our converters at every reviewed since_version of the pooling and convolution ops.

    An entry is replaced only when empty or onnx2torch's own (ours delegate to it for plain
    nodes); an entry someone else registered is left alone.
    """
    added = []
    for op_type, up_to in REVIEWED_UP_TO.items():
        for version in registry.since_versions(op_type):
            if version > up_to:
                continue
            current = registry.lookup(op_type, version)
            if current is not None and current is _WRAPPERS.get((op_type, version)):
                continue
            if current is not None and not current.__module__.startswith("onnx2torch."):
                continue
            _ORIGINALS[op_type, version] = current
            registry.replace(op_type, version, _wrapper(op_type, version))
            added.append((op_type, version))
    return added
