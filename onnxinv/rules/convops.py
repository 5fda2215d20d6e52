"""Convolution and its exact transpose in numpy, for the spatial affine rules.

``correlate`` is ONNX's Conv without bias (windows of the zero-padded input times the kernel,
grouped); ``correlate_transpose`` is its adjoint, which is also ONNX's ConvTranspose without
bias. Both work on a batch, in float64, for 1-3 spatial axes, any stride, dilation, padding and
group count. The matrix-free inverse needs both (LSQR alternates between them), and they must be
exact transposes of each other: ``<correlate(x), y> == <x, correlate_transpose(y)>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def windows(x, span, strides, dilations, begin, end) -> np.ndarray:
    """(B, C, *out, *kernel) windows of ``x`` (B, C, *spatial) after zero padding (a view)."""
    dims = len(span)
    x = np.pad(x, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
    view = sliding_window_view(x, span, axis=tuple(range(2, 2 + dims)))
    # Keep every stride-th window and every dilation-th tap.
    return view[
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in strides)
        + tuple(slice(None, None, d) for d in dilations)
    ]


def scatter_windows(cols: np.ndarray, strides, dilations, begin, size) -> np.ndarray:
    """The adjoint of :func:`windows`: add each window's taps (B, C, *out, *kernel) back into
    a zero image, then crop the padding off: (B, C, *size)."""
    dims = len(size)
    out, kernel = cols.shape[2 : 2 + dims], cols.shape[2 + dims :]
    full = _covered(out, strides, kernel, dilations, begin, size)
    x = np.zeros((*cols.shape[:2], *full), dtype=cols.dtype)
    lead = (slice(None),) * (2 + dims)
    for tap, where in _taps(kernel, out, strides, dilations):
        x[(slice(None), slice(None), *where)] += cols[lead + tap]
    return crop(x, begin, size)


def _covered(out, strides, kernel, dilations, begin, size) -> list[int]:
    """Padded spatial sizes that hold every window's taps and the crop ``begin + size``."""
    return [
        max((o - 1) * s + (k - 1) * d + 1, b + n)
        for o, s, k, d, b, n in zip(out, strides, kernel, dilations, begin, size, strict=True)
    ]


def crop(x: np.ndarray, begin: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``x`` (B, C, *spatial) cut to ``size`` from ``begin`` on each spatial axis."""
    return x[
        (slice(None), slice(None), *(slice(b, b + n) for b, n in zip(begin, size, strict=True)))
    ]


def _taps(kernel, out, strides, dilations):
    """Per kernel tap: its index and the strided slices of the padded image it reads."""
    for tap in np.ndindex(*kernel):
        yield (
            tap,
            tuple(
                slice(t * d, t * d + (o - 1) * s + 1, s)
                for t, d, o, s in zip(tap, dilations, out, strides, strict=True)
            ),
        )


def _per_tap(W: np.ndarray, group: int, transpose: bool = False) -> np.ndarray:
    """Kernel (O, C/G, *k) as contiguous (*k, G, O/G, C/G) matrices (C/G × O/G transposed),
    so each tap's product runs in BLAS."""
    dims = W.ndim - 2
    Wg = W.reshape(group, W.shape[0] // group, *W.shape[1:])
    if transpose:
        Wg = np.swapaxes(Wg, 1, 2)
    return np.ascontiguousarray(np.moveaxis(Wg, tuple(range(3, 3 + dims)), tuple(range(dims))))


def correlate(
    x: np.ndarray,
    W: np.ndarray,
    strides: Sequence[int],
    dilations: Sequence[int],
    begin: Sequence[int],
    end: Sequence[int],
    group: int = 1,
) -> np.ndarray:
    """ONNX Conv without bias: ``x`` (B, C, *spatial), ``W`` (O, C/group, *kernel) → (B, O, *out).

    One grouped matrix product per kernel tap on a strided view of the padded input (no
    im2col copy): (G, O/G, C/G) @ (B, G, C/G, pixels).
    """
    b = len(x)
    xp = np.pad(x, [(0, 0), (0, 0), *zip(begin, end, strict=True)])
    out = [
        (n - (k - 1) * d - 1) // s + 1
        for n, k, d, s in zip(xp.shape[2:], W.shape[2:], dilations, strides, strict=True)
    ]
    Wk = _per_tap(W, group)
    y = np.zeros((b, group, W.shape[0] // group, int(np.prod(out))))
    for tap, where in _taps(W.shape[2:], out, strides, dilations):
        part = xp[(slice(None), slice(None), *where)].reshape(b, group, W.shape[1], -1)
        y += Wk[tap] @ part
    return y.reshape(b, W.shape[0], *out)


def correlate_transpose(
    y: np.ndarray,
    W: np.ndarray,
    strides: Sequence[int],
    dilations: Sequence[int],
    begin: Sequence[int],
    size: Sequence[int],
    group: int = 1,
) -> np.ndarray:
    """The adjoint of :func:`correlate` (= ONNX ConvTranspose without bias, its output cropped
    to ``size`` from ``begin``): ``y`` (B, O, *out), ``W`` (O, C/group, *kernel) → (B, C, *size).
    """
    b, out, kernel = len(y), y.shape[2:], W.shape[2:]
    full = _covered(out, strides, kernel, dilations, begin, size)
    Wk = _per_tap(W, group, transpose=True)
    rows = y.reshape(b, group, -1, int(np.prod(out)))
    x = np.zeros((b, W.shape[1] * group, *full))
    for tap, where in _taps(kernel, out, strides, dilations):
        x[(slice(None), slice(None), *where)] += (Wk[tap] @ rows).reshape(b, -1, *out)
    return crop(x, begin, size)
