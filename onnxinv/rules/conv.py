"""Convolutions with constant weights as affine maps: Conv (1-, 2- and 3-D; stride, padding,
dilation, groups, auto_pad).

A convolution is linear in its input, so its inverse is the same SVD pseudo-inverse plus null
space as a Gemm's. The matrix is built once by running the convolution (in numpy, below) on
the input space's basis; convolutions whose matrix is larger than
:data:`~onnxinv.rules.linalg.DENSE_LIMIT` are left to LM (a matrix-free inverse would lift
that limit).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import NodeContext, RuleNotApplicable
from .linear import _DenseRule


class Conv(_DenseRule):
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

    def matrix(self):
        ctx = self.ctx
        n = ctx.input_size
        basis = np.eye(n).reshape((n, *ctx.input_shape))
        M = self.convolve(basis).reshape(n, -1).T
        c = np.zeros(M.shape[0])
        if 2 in ctx.constants:
            bias = ctx.constants[2].astype(np.float64)
            c = np.broadcast_to(
                bias.reshape(-1, *([1] * (len(ctx.output_shape) - 1))), ctx.output_shape
            ).ravel()
        return M, np.ascontiguousarray(c)

    def convolve(self, x: np.ndarray) -> np.ndarray:
        """The convolution without bias of ``x`` (B, C, *spatial), in float64."""
        ctx = self.ctx
        W = ctx.constants[1].astype(np.float64)
        dims = W.ndim - 2
        kernel = W.shape[2:]
        strides = list(ctx.attr("strides", [1] * dims))
        dilations = list(ctx.attr("dilations", [1] * dims))
        group = int(ctx.attr("group", 1))
        span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
        begin, end = self._pads(x.shape[2:], span, strides)
        x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
        windows = sliding_window_view(x, span, axis=tuple(range(2, 2 + dims)))
        # (B, C, *out, *span): keep every stride-th window and every dilation-th tap.
        windows = windows[
            (slice(None), slice(None))
            + tuple(slice(None, None, s) for s in strides)
            + tuple(slice(None, None, d) for d in dilations)
        ]
        b, channels = x.shape[:2]
        per_group = channels // group
        out_shape = windows.shape[2 : 2 + dims]
        out = []
        for g in range(group):
            wg = W[g * W.shape[0] // group : (g + 1) * W.shape[0] // group]
            xg = windows[:, g * per_group : (g + 1) * per_group]
            # sum over input channels and kernel taps
            out.append(
                np.tensordot(
                    xg, wg, axes=([1, *range(2 + dims, 2 + 2 * dims)], [1, *range(2, 2 + dims)])
                )  # fmt: skip
            )
        y = np.concatenate(out, axis=-1)  # (B, *out, C_out)
        return np.moveaxis(y, -1, 1).reshape((b, W.shape[0], *out_shape))

    def _pads(self, size, span, strides) -> tuple[list[int], list[int]]:
        """Zero padding before and after each spatial axis (explicit ``pads`` or auto_pad)."""
        ctx = self.ctx
        dims = len(size)
        auto = ctx.attr("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            pads = list(ctx.attr("pads", [0] * 2 * dims))
            return pads[:dims], pads[dims:]
        if auto == "VALID":
            return [0] * dims, [0] * dims
        begin, end = [], []
        for n, k, s in zip(size, span, strides, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else large)
            end.append(large if auto == "SAME_UPPER" else small)
        return begin, end


RULES = (Conv,)
