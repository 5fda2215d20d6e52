"""Linear operators on images as affine maps: Conv (1-, 2- and 3-D; stride, padding, dilation,
groups, auto_pad), AveragePool, GlobalAveragePool and constant Pad.

Each is linear in its input (plus a constant), so its inverse is the same SVD pseudo-inverse
plus null space as a Gemm's. The matrix is built once by running the operator (in numpy,
below) on the input space's basis; operators whose matrix is larger than
:data:`~onnxinv.rules.linalg.DENSE_LIMIT` are left to LM (a matrix-free inverse would lift
that limit).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import NodeContext, RuleNotApplicable
from .linear import _DenseRule


class _OnBasis(_DenseRule):
    """An affine rule whose matrix is its linear part applied to the input basis."""

    def linear(self, x: np.ndarray) -> np.ndarray:
        """The linear part on ``x`` (B, *input_shape) -> (B, *output_shape), float64."""
        raise NotImplementedError

    def offset(self) -> np.ndarray:
        """The constant part, flat (output_size,)."""
        return np.zeros(self.ctx.output_size)

    def matrix(self):
        n = self.ctx.input_size
        basis = np.eye(n).reshape((n, *self.ctx.input_shape))
        M = self.linear(basis).reshape(n, -1).T
        return np.ascontiguousarray(M), np.ascontiguousarray(self.offset(), dtype=np.float64)


def _windows(x, span, strides, dilations, begin, end) -> np.ndarray:
    """(B, C, *out, *kernel) windows of ``x`` (B, C, *spatial) after zero padding."""
    dims = len(span)
    x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
    windows = sliding_window_view(x, span, axis=tuple(range(2, 2 + dims)))
    # Keep every stride-th window and every dilation-th tap.
    return windows[
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in strides)
        + tuple(slice(None, None, d) for d in dilations)
    ]


def window_pads(ctx: NodeContext, size, out, span, strides) -> tuple[list[int], list[int]]:
    """Zero padding before and after each spatial axis of a windowed operator (Conv, the
    pools): explicit ``pads``, or what ``auto_pad`` implies for spatial ``size`` → ``out``."""
    dims = len(size)
    auto = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "NOTSET":
        pads = [int(p) for p in (ctx.attr("pads", None) or [0] * 2 * dims)]
        return pads[:dims], pads[dims:]
    if auto == "VALID":
        return [0] * dims, [0] * dims
    begin, end = [], []
    for n, o, k, s in zip(size, out, span, strides, strict=True):
        total = max((o - 1) * s + k - n, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin, end


class Conv(_OnBasis):
    """Conv of the data (input 0) with constant weights W and optional constant bias B."""

    op_type = "Conv"
    versions = (1, 11, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        W = ctx.constants.get(1)
        if ctx.data_input != 0 or W is None:
            raise RuleNotApplicable("Conv is invertible only in its data with constant weights")
        if len(ctx.node.input) > 2 and ctx.node.input[2] and 2 not in ctx.constants:
            raise RuleNotApplicable("Conv's bias is not constant")
        if not ctx.batched or len(ctx.input_shape) != W.ndim - 1:
            raise RuleNotApplicable("Conv needs a batch axis, channels and spatial axes")

    def offset(self):
        ctx = self.ctx
        if 2 not in ctx.constants:
            return np.zeros(ctx.output_size)
        bias = ctx.constants[2].astype(np.float64)
        shape = (-1, *([1] * (len(ctx.output_shape) - 1)))
        return np.broadcast_to(bias.reshape(shape), ctx.output_shape).ravel()

    def linear(self, x: np.ndarray) -> np.ndarray:
        """The convolution without bias of ``x`` (B, C, *spatial), in float64."""
        ctx = self.ctx
        W = ctx.constants[1].astype(np.float64)
        dims = W.ndim - 2
        strides = list(ctx.attr("strides", [1] * dims))
        dilations = list(ctx.attr("dilations", [1] * dims))
        group = int(ctx.attr("group", 1))
        span = [(k - 1) * d + 1 for k, d in zip(W.shape[2:], dilations, strict=True)]
        begin, end = window_pads(ctx, x.shape[2:], ctx.output_shape[1:], span, strides)
        windows = _windows(x, span, strides, dilations, begin, end)
        per_group, out_per_group = x.shape[1] // group, W.shape[0] // group
        taps = list(range(2 + dims, 2 + 2 * dims))
        out = [
            np.tensordot(
                windows[:, g * per_group : (g + 1) * per_group],
                W[g * out_per_group : (g + 1) * out_per_group],
                axes=([1, *taps], [1, *range(2, 2 + dims)]),
            )  # sum over the group's input channels and the kernel taps
            for g in range(group)
        ]
        y = np.concatenate(out, axis=-1)  # (B, *out, C_out)
        return np.moveaxis(y, -1, 1)


class AveragePool(_OnBasis):
    """AveragePool (floor mode; with or without the padding counted)."""

    op_type = "AveragePool"
    versions = (1, 7, 10, 11, 19, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if not ctx.batched or len(ctx.input_shape) < 2:
            raise RuleNotApplicable("AveragePool needs a batch axis, channels and spatial axes")
        if ctx.attr("ceil_mode", 0):
            size = self._out_size(*self._geometry()[1:])
            if tuple(size) != tuple(ctx.output_shape[1:]):
                raise RuleNotApplicable("AveragePool with ceil_mode adding partial windows")

    def _geometry(self):
        ctx = self.ctx
        kernel = list(ctx.attr("kernel_shape"))
        dims = len(kernel)
        strides = list(ctx.attr("strides", [1] * dims))
        dilations = list(ctx.attr("dilations", [1] * dims))
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
        begin, end = window_pads(ctx, ctx.input_shape[1:], ctx.output_shape[1:], span, strides)
        return dilations, span, strides, begin, end

    def _out_size(self, span, strides, begin, end) -> list[int]:
        size = self.ctx.input_shape[1:]
        return [
            (n + b + e - k) // s + 1
            for n, k, s, b, e in zip(size, span, strides, begin, end, strict=True)
        ]

    def linear(self, x: np.ndarray) -> np.ndarray:
        dilations, span, strides, begin, end = self._geometry()
        dims = len(span)
        taps = tuple(range(-dims, 0))
        total = _windows(x, span, strides, dilations, begin, end).sum(taps)
        if self.ctx.attr("count_include_pad", 0):
            count = float(np.prod([(k - 1) // d + 1 for k, d in zip(span, dilations, strict=True)]))
        else:
            ones = np.ones((1, 1, *x.shape[2:]))
            count = _windows(ones, span, strides, dilations, begin, end).sum(taps)
        return total / count


class GlobalAveragePool(_OnBasis):
    """GlobalAveragePool: the mean over the spatial axes, per channel."""

    op_type = "GlobalAveragePool"
    versions = (1, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if not ctx.batched or len(ctx.input_shape) < 2:
            raise RuleNotApplicable("GlobalAveragePool needs a batch axis and channels")

    def linear(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)


class Pad(_OnBasis):
    """Pad in ``constant`` mode with constant pads (negative pads crop)."""

    op_type = "Pad"
    versions = (2, 11, 13, 18, 19, 21, 23, 24, 25)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
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

    def _pad(self, x: np.ndarray, value: float) -> np.ndarray:
        begin, end = self._pads()
        grown = np.pad(x, [(max(b, 0), max(e, 0)) for b, e in zip(begin, end, strict=True)],
                       constant_values=value)  # fmt: skip
        crop = tuple(
            slice(max(-b, 0), grown.shape[i] - max(-e, 0))
            for i, (b, e) in enumerate(zip(begin, end, strict=True))
        )
        return grown[crop]

    def linear(self, x: np.ndarray) -> np.ndarray:
        return self._pad(x, 0.0)

    def offset(self):
        zero = np.zeros((1, *self.ctx.input_shape))
        return self._pad(zero, self._value()).ravel()


RULES = (Conv, AveragePool, GlobalAveragePool, Pad)
