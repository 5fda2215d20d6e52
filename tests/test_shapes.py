"""onnxinv.shapes: ONNX SAME padding and a sample's sizes.

The three places that computed SAME pads on their own (``rules.spatial.window_pads``,
``convert.compat_pool.same_pads``, ``OnnxConvTranspose.padding``, and the ConvTranspose rule's
``begin``) now use :mod:`onnxinv.shapes`; their old code is kept below, as it was, and the new
pads must equal it on a grid of sizes, kernels, strides, dilations, output sizes and modes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch

from onnxinv.convert.compat_pool import OnnxConvTranspose, OnnxPool, SamePad
from onnxinv.rules.base import NodeContext
from onnxinv.rules.spatial import ConvTranspose, window_pads
from onnxinv.shapes import SampleSizes, effective_kernel, same_pads, split_padding

MODES = ("SAME_UPPER", "SAME_LOWER")

# ------------------------------------------------------------- the old code, as it was (1faad51)


def old_window_pads_same(auto, size, out, span, strides):
    """rules/spatial.window_pads, its SAME_* branch."""
    begin, end = [], []
    for n, o, k, s in zip(size, out, span, strides, strict=True):
        total = max((o - 1) * s + k - n, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin, end


def old_compat_same_pads(sizes, kernel, strides, dilations, auto_pad):
    """convert/compat_pool.same_pads."""
    begin, end = [], []
    eff_all = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    for size, eff, stride in zip(sizes, eff_all, strides, strict=True):
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + eff - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def old_conv_transpose_padding(sizes, kernel, strides, dilations, output_padding, auto_pad, shape):
    """convert/compat_pool.OnnxConvTranspose.padding, its SAME_* / output_shape branch."""
    n = len(sizes)
    if shape is not None:
        target = shape[-n:]
    else:
        target = [size * s for size, s in zip(sizes, strides, strict=True)]
    begin, end = [], []
    for i, eff in enumerate((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)):
        full = strides[i] * (sizes[i] - 1) + output_padding[i] + eff
        total = max(0, full - target[i])
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        short = target[i] - (full - total) if shape is not None else 0
        end.append((large if auto_pad == "SAME_UPPER" else small) - max(0, short))
    return begin, end


def old_rule_conv_transpose_begin(auto, full, out):
    """rules/spatial.ConvTranspose.begin, its SAME_* / output_shape branch."""
    total = [max(0, f - o) for f, o in zip(full, out, strict=True)]
    return [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]


# ----------------------------------------------------------------------------------- the grid

SIZES, KERNELS, STRIDES, DILATIONS = range(1, 9), range(1, 5), range(1, 4), range(1, 3)
GRID = list(itertools.product(SIZES, KERNELS, STRIDES, DILATIONS, MODES))


def _ctx(attrs, input_shape, output_shape, constants=None) -> NodeContext:
    node = onnx.helper.make_node("Conv", ["x", "w"], ["y"])
    return NodeContext(node, 22, 22, attrs, constants or {}, 0, input_shape, output_shape)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "upper", "lower"),
    [
        (7, 3, 2, (1, 1), (1, 1)),
        (6, 2, 2, (0, 0), (0, 0)),
        (7, 2, 1, (0, 1), (1, 0)),
        (5, 4, 2, (1, 2), (2, 1)),
    ],
)
def test_same_pads(size, kernel, stride, upper, lower) -> None:
    for auto_pad, expected in (("SAME_UPPER", upper), ("SAME_LOWER", lower)):
        begin, end = same_pads([size], [kernel], [stride], auto_pad)
        assert (begin[0], end[0]) == expected
        assert (size + begin[0] + end[0] - kernel) // stride + 1 == -(-size // stride)


def test_split_padding_puts_the_odd_unit_where_onnx_does() -> None:
    assert split_padding(5, "SAME_UPPER") == (2, 3)
    assert split_padding(5, "SAME_LOWER") == (3, 2)
    assert split_padding(5, "NOTSET") == (3, 2)  # ConvTranspose's output_shape
    assert split_padding(0, "SAME_UPPER") == (0, 0)


def test_compat_pool_pads_are_the_old_ones() -> None:
    for size, k, s, d, mode in GRID:
        for sizes in ([size], [size, size + 3]):
            n = len(sizes)
            kernel, strides, dilations = [k, k + 1][:n], [s, 1][:n], [d, 2][:n]
            old = old_compat_same_pads(sizes, kernel, strides, dilations, mode)
            new = same_pads(sizes, effective_kernel(kernel, dilations), strides, mode)
            assert new == old, (sizes, kernel, strides, dilations, mode)
            pool = OnnxPool("max", kernel, strides, dilations, None, auto_pad=mode)
            assert pool.padding(sizes)[:2] == old
            x = torch.zeros((1, 1, *sizes))
            padded = SamePad(kernel, strides, dilations, mode)(x)
            assert list(padded.shape[2:]) == [
                z + b + e for z, b, e in zip(sizes, *old, strict=True)
            ]


def test_rule_window_pads_are_the_old_ones() -> None:
    for size, k, s, d, mode in GRID:
        span = [(k - 1) * d + 1]
        ceil = -(-size // s)
        for out in {max(1, ceil - 1), ceil, ceil + 1, max(1, (size - span[0]) // s + 1)}:
            ctx = _ctx({"auto_pad": mode}, (1, size), (1, out))
            new = window_pads(ctx, [size], [out], span, [s])
            assert new == old_window_pads_same(mode, [size], [out], span, [s])
            assert new == same_pads([size], span, [s], mode, outputs=[out])
        ctx = _ctx({"auto_pad": mode.encode()}, (1, size), (1, ceil))  # as bytes, too
        assert window_pads(ctx, [size], [ceil], span, [s]) == old_window_pads_same(
            mode, [size], [ceil], span, [s]
        )


def test_conv_transpose_pads_are_the_old_ones() -> None:
    rules = 0
    for size, k, s, d, mode in GRID:
        for op in range(s):  # output_padding < stride
            full = s * (size - 1) + (k - 1) * d + 1 + op
            weight = torch.zeros((1, 1, k))
            for auto_pad, shape in [(mode, None)] + [
                (a, [t]) for a in (*MODES, "NOTSET") for t in {1, full - 2, full, full + 2} if t > 0
            ]:
                module = OnnxConvTranspose(weight, None, [s], [d], 1, [op], None, auto_pad, shape)
                old = old_conv_transpose_padding([size], [k], [s], [d], [op], auto_pad, shape)
                assert module.padding([size]) == old, (size, k, s, d, op, auto_pad, shape)
                if shape is None or shape[0] > full:
                    continue  # the rule is for outputs its attributes give (no zero fill)
                attrs = {"auto_pad": auto_pad, "strides": [s], "dilations": [d]}
                attrs |= {"output_padding": [op]} | ({"output_shape": shape} if shape else {})
                out = shape[0] if shape else size * s
                ctx = _ctx(attrs, (1, size), (1, out), {1: np.zeros((1, 1, k))})
                ctx.node.op_type = "ConvTranspose"
                old_begin = old_rule_conv_transpose_begin(auto_pad, [full], [out])
                assert ConvTranspose(ctx).begin == old_begin
                rules += 1
    assert rules > 1000


def test_sample_sizes() -> None:
    @dataclass
    class Sample(SampleSizes):
        input_shape: tuple[int, ...]
        output_shape: tuple[int, ...]

    sample = Sample((3, 4), ())
    assert (sample.input_size, sample.output_size) == (12, 1)
    assert isinstance(sample.input_size, int)
