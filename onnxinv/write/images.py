"""Samples as pictures: which input shapes are images, their pixels, and a result's grid.png.

* :func:`image_shape` – ``(channels, height, width)`` when a sample's shape looks like an image;
* :func:`pixels` – samples as uint8 images, scaled from the bounds (or their own range);
* :func:`picture` – one image as an RGB PIL image, each pixel a square block;
* :func:`grid_image` – a result's samples in a labelled grid (``grid.png``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..result import InversionResult


def image_shape(shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(channels, height, width) when a sample of ``shape`` looks like an image, else None.

    Leading dimensions of 1 (a fixed batch of one, as exporters write it) are ignored.
    """
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[0], shape[1], shape[2]
    if len(shape) == 2 and min(shape) > 1:
        return 1, shape[0], shape[1]
    if len(shape) == 1:
        side = math.isqrt(shape[0])
        if side > 1 and side * side == shape[0]:
            return 1, side, side
    return None


def pixels(x: np.ndarray, shape: tuple[int, int, int], bounds) -> np.ndarray:
    """Samples ``x`` (N, ...) as (N, C, H, W) uint8 images of ``shape`` (C, H, W).

    Values are scaled from ``bounds`` (lo, hi) to 0-255, or from each sample's own range when
    there are no bounds.
    """
    c, h, w = shape
    x = np.asarray(x).reshape(len(x), c, h, w).astype(np.float64)
    if bounds is not None:
        lo, hi = bounds
        x = (x - lo) / (hi - lo)
    else:
        mn = x.reshape(len(x), -1).min(1)[:, None, None, None]
        mx = x.reshape(len(x), -1).max(1)[:, None, None, None]
        x = (x - mn) / np.maximum(mx - mn, 1e-12)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def picture(image: np.ndarray, scale: int):
    """One (C, H, W) uint8 image as an RGB PIL image, each pixel a ``scale``×``scale`` block."""
    from PIL import Image

    c, h, w = image.shape
    arr = image[0] if c == 1 else image.transpose(1, 2, 0)
    img = Image.fromarray(arr, "L" if c == 1 else "RGB")
    return img.resize((w * scale, h * scale), Image.NEAREST).convert("RGB")


def grid_image(result: InversionResult, tile: int = 64):
    """A labelled grid of the samples as a PIL image, or None when inputs are not images."""
    shape = image_shape(result.input_shape)
    if shape is None or len(result.inputs) == 0:
        return None
    from PIL import Image, ImageDraw

    c, h, w = shape
    x = pixels(result.inputs, shape, result.bounds)
    n = len(x)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    scale = max(1, tile // max(h, w))
    tw, th = w * scale, h * scale
    label_h = 14
    canvas = Image.new("RGB", (cols * (tw + 4) + 4, rows * (th + label_h + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    labels = result.labels()
    for i in range(n):
        col, row = i % cols, i // cols
        px, py = 4 + col * (tw + 4), 4 + row * (th + label_h + 4)
        canvas.paste(picture(x[i], scale), (px, py))
        colour = (0, 110, 0) if result.verified[i] else (190, 0, 0)
        draw.text((px, py + th + 1), labels[i], fill=colour)
    return canvas
