"""Linear operators on images as affine maps: Conv and ConvTranspose (1-, 2- and 3-D; stride,
padding, dilation, groups, auto_pad), AveragePool, GlobalAveragePool and constant Pad.

Each is linear in its input (plus a constant), so its inverse is the same SVD pseudo-inverse
plus null space as a Gemm's. The matrix is built once by running the operator (in numpy,
:mod:`onnxinv.rules.convops`) on the input space's basis. Above
:data:`~onnxinv.rules.linalg.DENSE_LIMIT` no matrix is built: means over disjoint windows (a
global average, a 2×2 pool with stride 2) and Pad have exact inverses of their own, and
convolutions are solved by LSQR on the operator and its transpose
(:mod:`onnxinv.rules.matfree`).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ..shapes import effective_kernel, same_pads, split_padding
from .base import NodeContext, RuleNotApplicable
from .convops import correlate, correlate_transpose, crop, scatter_windows, windows
from .linear import OnBasis
from .matfree import CoIsometry, PerPosition
from .select import Selection


def window_pads(ctx: NodeContext, size, out, span, strides) -> tuple[list[int], list[int]]:
    """Zero padding before and after each spatial axis of a windowed operator (Conv, the
    pools): explicit ``pads``, or what ``auto_pad`` implies for spatial ``size`` → ``out``."""
    dims = len(size)
    auto = _auto_pad(ctx)
    if auto == "NOTSET":
        pads = [int(p) for p in (ctx.attr("pads", None) or [0] * 2 * dims)]
        return pads[:dims], pads[dims:]
    if auto == "VALID":
        return [0] * dims, [0] * dims
    return same_pads(size, span, strides, auto, outputs=out)


def _auto_pad(ctx: NodeContext) -> str:
    auto = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    return auto.decode() if isinstance(auto, bytes) else auto


class _Convolution(OnBasis):
    """Shared by Conv and ConvTranspose: constant kernel W (input 1), optional constant bias."""

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        op = ctx.node.op_type
        W = ctx.constants.get(1)
        if ctx.data_input != 0 or W is None:
            raise RuleNotApplicable(f"{op} is invertible only in its data with constant weights")
        if len(ctx.node.input) > 2 and ctx.node.input[2] and 2 not in ctx.constants:
            raise RuleNotApplicable(f"{op}'s bias is not constant")
        if not ctx.batched or len(ctx.input_shape) != W.ndim - 1:
            raise RuleNotApplicable(f"{op} needs a batch axis, channels and spatial axes")

    @cached_property
    def W(self) -> np.ndarray:
        return self.ctx.constants[1].astype(np.float64)

    @property
    def dims(self) -> int:
        return self.W.ndim - 2

    @property
    def strides(self) -> list[int]:
        return list(self.ctx.attr("strides", None) or [1] * self.dims)

    @property
    def dilations(self) -> list[int]:
        return list(self.ctx.attr("dilations", None) or [1] * self.dims)

    @property
    def group(self) -> int:
        return int(self.ctx.attr("group", 1))

    @property
    def span(self) -> list[int]:
        return effective_kernel(self.W.shape[2:], self.dilations)

    def offset(self):
        ctx = self.ctx
        if 2 not in ctx.constants:
            return np.zeros(ctx.output_size)
        bias = ctx.constants[2].astype(np.float64)
        shape = (-1, *([1] * (len(ctx.output_shape) - 1)))
        return np.broadcast_to(bias.reshape(shape), ctx.output_shape).ravel()

    def linear(self, x: np.ndarray) -> np.ndarray:
        return self._apply(x, self.W)

    def abs_linear(self, x: np.ndarray) -> np.ndarray:
        return self._apply(x, np.abs(self.W))

    def _apply(self, x: np.ndarray, W: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Conv(_Convolution):
    """Conv of the data (input 0) with constant weights W and optional constant bias B."""

    op_type = "Conv"
    versions = (1, 11, 22)

    @cached_property
    def pads(self) -> tuple[list[int], list[int]]:
        ctx = self.ctx
        return window_pads(ctx, ctx.input_shape[1:], ctx.output_shape[1:], self.span, self.strides)

    def _apply(self, x, W):
        """The convolution without bias of ``x`` (B, C, *spatial), in float64."""
        return correlate(x, W, self.strides, self.dilations, *self.pads, self.group)

    def structured(self, max_condition):
        """A 1×1 kernel with stride 1 and no padding mixes channels pixel by pixel."""
        W, g = self.W, self.group
        if any(k != 1 for k in W.shape[2:]) or set(self.strides) != {1} or any(map(any, self.pads)):
            return None
        out, per = W.shape[0] // g, W.shape[1]
        M = np.zeros((W.shape[0], per * g))  # block diagonal over the groups
        for k in range(g):
            rows = slice(k * out, (k + 1) * out)
            M[rows, k * per : (k + 1) * per] = W[rows].reshape(out, per)
        return PerPosition(M, int(np.prod(self.ctx.input_shape[1:])), self.offset(), max_condition)

    def adjoint(self, y):
        """The transposed convolution: what LSQR needs besides the forward."""
        size = self.ctx.input_shape[1:]
        return correlate_transpose(y, self.W, self.strides, self.dilations, self.pads[0], size,
                                   self.group)  # fmt: skip


class ConvTranspose(_Convolution):
    """ConvTranspose with constant weights W (C_in, C_out/group, *kernel) and optional bias:
    strides, pads or output_shape/auto_pad, output_padding, dilations, groups."""

    op_type = "ConvTranspose"
    versions = (1, 11, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if ctx.output_shape[0] != self.W.shape[1] * self.group or min(self.begin) < 0:
            raise RuleNotApplicable("ConvTranspose's output shape does not follow its attributes")

    @cached_property
    def full(self) -> list[int]:
        """Each spatial size before cropping the pads: stride·(in − 1) + span + output_padding."""
        extra = list(self.ctx.attr("output_padding", None) or [0] * self.dims)
        return [
            s * (n - 1) + k + a
            for n, s, k, a in zip(self.ctx.input_shape[1:], self.strides, self.span, extra,
                                  strict=True)
        ]  # fmt: skip

    @cached_property
    def begin(self) -> list[int]:
        """Pixels cropped before each spatial axis, as the ONNX spec and onnxruntime 1.32 (the
        tested version; older kernels split odd totals the other way) compute them: with
        ``output_shape`` or SAME padding, the total is what the output leaves out, its smaller
        half in front for SAME_UPPER, its larger half otherwise."""
        auto = _auto_pad(self.ctx)
        if self.ctx.attr("output_shape", None) or auto in ("SAME_UPPER", "SAME_LOWER"):
            out = self.ctx.output_shape[1:]
            total = [max(0, f - o) for f, o in zip(self.full, out, strict=True)]
            return [split_padding(t, auto)[0] for t in total]
        if auto == "VALID":
            return [0] * self.dims
        return [int(p) for p in (self.ctx.attr("pads", None) or [0] * 2 * self.dims)][: self.dims]

    def _apply(self, x, W):
        size = self.ctx.output_shape[1:]
        return correlate_transpose(x, W, self.strides, self.dilations, self.begin, size, self.group)

    def adjoint(self, y):
        size = self.ctx.input_shape[1:]
        end = [
            max(0, s * (n - 1) + k - b - o)
            for n, s, k, b, o in zip(size, self.strides, self.span, self.begin, y.shape[2:],
                                     strict=True)
        ]  # fmt: skip
        x = correlate(y, self.W, self.strides, self.dilations, self.begin, end, self.group)
        return crop(x, [0] * self.dims, size)


class _Mean(OnBasis):
    """A pool averaging windows; ``A Aᵀ = scale · I`` when the windows are disjoint and whole."""

    def _co_isometry(self, scale: float) -> CoIsometry:
        ctx = self.ctx
        return CoIsometry(
            ctx.input_size, ctx.output_size, None, self.rows(self.linear, ctx.input_shape),
            self.rows(self.adjoint, ctx.output_shape), scale,
        )  # fmt: skip


class AveragePool(_Mean):
    """AveragePool (floor mode; with or without the padding counted)."""

    op_type = "AveragePool"
    versions = (1, 7, 10, 11, 19, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if not ctx.batched or len(ctx.input_shape) < 2:
            raise RuleNotApplicable("AveragePool needs a batch axis, channels and spatial axes")
        if ctx.attr("ceil_mode", 0):
            size = self._out_size(*self._geometry[1:])
            if tuple(size) != tuple(ctx.output_shape[1:]):
                raise RuleNotApplicable("AveragePool with ceil_mode adding partial windows")

    @cached_property
    def _geometry(self):
        ctx = self.ctx
        kernel = list(ctx.attr("kernel_shape"))
        dims = len(kernel)
        strides = list(ctx.attr("strides", None) or [1] * dims)
        dilations = list(ctx.attr("dilations", None) or [1] * dims)
        span = effective_kernel(kernel, dilations)
        begin, end = window_pads(ctx, ctx.input_shape[1:], ctx.output_shape[1:], span, strides)
        return dilations, span, strides, begin, end

    def _out_size(self, span, strides, begin, end) -> list[int]:
        size = self.ctx.input_shape[1:]
        return [
            (n + b + e - k) // s + 1
            for n, k, s, b, e in zip(size, span, strides, begin, end, strict=True)
        ]

    @cached_property
    def _count(self) -> np.ndarray | float:
        """How many values each output averages (a float when the padding is counted)."""
        dilations, span, strides, begin, end = self._geometry
        if self.ctx.attr("count_include_pad", 0):
            return float(np.prod([(k - 1) // d + 1 for k, d in zip(span, dilations, strict=True)]))
        ones = np.ones((1, 1, *self.ctx.input_shape[1:]))
        taps = tuple(range(-len(span), 0))
        return windows(ones, span, strides, dilations, begin, end).sum(taps)

    def linear(self, x: np.ndarray) -> np.ndarray:
        dilations, span, strides, begin, end = self._geometry
        taps = tuple(range(-len(span), 0))
        return windows(x, span, strides, dilations, begin, end).sum(taps) / self._count

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        dilations, span, strides, begin, _ = self._geometry
        kernel = [(k - 1) // d + 1 for k, d in zip(span, dilations, strict=True)]
        share = (y / self._count).reshape((*y.shape, *[1] * len(span)))
        cols = np.broadcast_to(share, (*y.shape, *kernel))
        return scatter_windows(cols, strides, dilations, begin, self.ctx.input_shape[1:])

    def structured(self, max_condition):
        """Disjoint, whole windows (stride ≥ window, no padding): ``A Aᵀ = I / K``."""
        dilations, span, strides, begin, end = self._geometry
        if any(begin) or any(end) or any(s < k for s, k in zip(strides, span, strict=True)):
            return None
        taps = np.prod([(k - 1) // d + 1 for k, d in zip(span, dilations, strict=True)])
        return self._co_isometry(1.0 / float(taps))


class GlobalAveragePool(_Mean):
    """GlobalAveragePool: the mean over the spatial axes, per channel."""

    op_type = "GlobalAveragePool"
    versions = (1, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if not ctx.batched or len(ctx.input_shape) < 2:
            raise RuleNotApplicable("GlobalAveragePool needs a batch axis and channels")

    @property
    def _area(self) -> int:
        return int(np.prod(self.ctx.input_shape[1:]))

    def linear(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        return np.broadcast_to(y / self._area, (len(y), *self.ctx.input_shape)).copy()

    def structured(self, max_condition):
        return self._co_isometry(1.0 / self._area)


class Pad(Selection):
    """Pad in ``constant`` mode with constant pads (negative pads crop)."""

    op_type = "Pad"
    versions = (2, 11, 13, 18, 19, 21, 23, 24, 25)

    def validate(self) -> None:
        ctx = self.ctx
        mode = ctx.attr("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            raise RuleNotApplicable(f"Pad in {mode!r} mode repeats values; only constant is affine")
        if ctx.data_input != 0 or not ctx.batched:
            raise RuleNotApplicable("Pad is invertible in its data with a batch axis")
        names = list(ctx.node.input)
        for i in (1, 2, 3):
            if i < len(names) and names[i] and i not in ctx.constants:
                raise RuleNotApplicable("Pad's pads, value or axes are not constant")
        begin, end = self._pads()
        if begin[0] or end[0]:
            raise RuleNotApplicable("Pad pads the batch axis")

    def _pads(self) -> tuple[list[int], list[int]]:
        """Pads per axis of the batched tensor (before, after)."""
        ctx = self.ctx
        rank = len(ctx.input_shape) + 1
        if 1 in ctx.constants:
            pads = [int(v) for v in ctx.constants[1].ravel()]
        else:
            pads = list(ctx.attr("pads", ctx.attr("paddings", [0] * 2 * rank)))
        axes = list(range(rank))
        if 3 in ctx.constants:
            axes = [int(a) % rank for a in ctx.constants[3].ravel()]
        begin, end = [0] * rank, [0] * rank
        for j, a in enumerate(axes):
            begin[a], end[a] = pads[j], pads[j + len(axes)]
        return begin, end

    def _value(self) -> float:
        ctx = self.ctx
        if 2 in ctx.constants and ctx.constants[2].size:
            return float(ctx.constants[2].ravel()[0])
        return float(ctx.attr("value", 0.0))

    def select(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        begin, end = self._pads()
        grown = np.pad(index[None], [(max(b, 0), max(e, 0)) for b, e in zip(begin, end, strict=True)],
                       constant_values=-1)  # fmt: skip
        crop = tuple(
            slice(max(-b, 0), grown.shape[i] - max(-e, 0))
            for i, (b, e) in enumerate(zip(begin, end, strict=True))
        )
        source = grown[crop][0]
        return source, np.where(source < 0, self._value(), 0.0)


RULES = (Conv, ConvTranspose, AveragePool, GlobalAveragePool, Pad)
