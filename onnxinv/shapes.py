"""Shape arithmetic that loading, the inverse rules and the torch conversion share.

* :class:`SampleSizes` – ``input_size``/``output_size`` of anything with per-sample
  ``input_shape``/``output_shape`` (a loaded model, a rule's node);
* :func:`effective_kernel` – the extent of a dilated kernel;
* :func:`split_padding` and :func:`same_pads` – the pads ONNX ``auto_pad=SAME_UPPER`` and
  ``SAME_LOWER`` ask for (Conv, ConvTranspose and the pools; onnxruntime computes the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Pads = tuple[list[int], list[int]]


class SampleSizes:
    """``input_size`` and ``output_size``: how many values one sample's ``input_shape`` and
    ``output_shape`` hold (a mixin for classes, dataclasses included, that have both)."""

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def output_size(self) -> int:
        return int(np.prod(self.output_shape))


def effective_kernel(kernel: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """The extent of each dilated kernel axis: ``(k - 1) * d + 1``."""
    return [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]


def split_padding(total: int, auto_pad: str) -> tuple[int, int]:
    """``(begin, end)`` of a ``total`` padding along one axis.

    The odd unit goes at the end for ``SAME_UPPER`` and at the beginning otherwise
    (``SAME_LOWER``, and ConvTranspose's ``output_shape`` without ``auto_pad``).
    """
    small, large = total // 2, total - total // 2
    return (small, large) if auto_pad == "SAME_UPPER" else (large, small)


def same_pads(
    sizes: Sequence[int],
    extents: Sequence[int],
    strides: Sequence[int],
    auto_pad: str,
    outputs: Sequence[int] | None = None,
) -> Pads:
    """Begin and end pads of a windowed operator (Conv, the pools) with ``auto_pad`` SAME_*.

    Args:
        sizes: the spatial input sizes.
        extents: each axis's window extent (:func:`effective_kernel` of kernel and dilations).
        strides: each axis's stride.
        auto_pad: ``"SAME_UPPER"`` or ``"SAME_LOWER"`` (see :func:`split_padding`).
        outputs: the spatial output sizes; by default ``ceil(size / stride)``, what SAME asks.

    Returns:
        (begins, ends): the padding that makes ``outputs`` windows fit, never negative.
    """
    if outputs is None:
        outputs = [-(-size // stride) for size, stride in zip(sizes, strides, strict=True)]
    begin, end = [], []
    for size, extent, stride, out in zip(sizes, extents, strides, outputs, strict=True):
        b, e = split_padding(max(0, (out - 1) * stride + extent - size), auto_pad)
        begin.append(b)
        end.append(e)
    return begin, end
