"""The sweep figure: one generated input per (model, class), rows models, columns classes.

Every cell is a ``TILE``×``TILE`` square: the sample scaled to fit (an 8×8 digit becomes 64×64
pixels), or a grey crossed square with a one-word reason where the pair has no verified sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .images import image_shape, picture, pixels

TILE = 64  # pixels of one cell's square
PAD = 6  # between cells and around the figure
HEADER = 16  # height of the column labels' row


@dataclass(frozen=True)
class Cell:
    """One cell: a sample (with the shape and bounds to draw it) or the reason there is none."""

    sample: np.ndarray | None = None
    input_shape: tuple[int, ...] = ()
    bounds: tuple[float, float] | None = None
    note: str = ""


def sample_image(sample: np.ndarray, input_shape: tuple[int, ...], bounds) -> np.ndarray:
    """One sample as a (C, H, W) uint8 image.

    Image-like shapes ([C, H, W], [H, W], a flat perfect square; see
    :func:`onnxinv.write.images.image_shape`) are drawn as they are, [H, W, C] with C 1 or 3 after
    moving the channels first, and anything else as one row of pixels.
    """
    x = np.asarray(sample).reshape(-1)
    shape = image_shape(tuple(input_shape))
    if shape is None:
        dims = tuple(input_shape)
        while len(dims) > 1 and dims[0] == 1:  # a fixed batch of one
            dims = dims[1:]
        if len(dims) == 3 and dims[-1] in (1, 3):
            h, w, c = dims
            x = x.reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
            shape = (c, h, w)
        else:
            shape = (1, 1, x.size)
    return pixels(x[None], shape, bounds)[0]


@dataclass(frozen=True)
class Layout:
    """Where everything goes: the label column's width and the canvas size."""

    left: int
    rows: int
    cols: int

    @property
    def size(self) -> tuple[int, int]:
        return (
            self.left + self.cols * (TILE + PAD) + PAD,
            HEADER + PAD + self.rows * (TILE + PAD),
        )

    def cell(self, row: int, col: int) -> tuple[int, int]:
        """Top-left corner of a cell's square."""
        return self.left + PAD + col * (TILE + PAD), HEADER + PAD + row * (TILE + PAD)


def layout(row_labels: list[str], n_cols: int) -> Layout:
    """The layout for these row labels (the label column fits the longest) and columns."""
    from PIL import Image, ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max((draw.textlength(label) for label in row_labels), default=0)
    return Layout(left=int(np.ceil(widest)) + PAD, rows=len(row_labels), cols=n_cols)


def figure(row_labels: list[str], col_labels: list[str], cells: list[list[Cell]]):
    """The grid as a PIL image: ``cells[row][col]``, labelled by ``row_labels``/``col_labels``."""
    from PIL import Image, ImageDraw

    grid = layout(row_labels, len(col_labels))
    canvas = Image.new("RGB", grid.size, "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels):
        x, _ = grid.cell(0, j)
        width = draw.textlength(label)
        draw.text((x + (TILE - width) / 2, 2), label, fill="black")
    for i, label in enumerate(row_labels):
        _, y = grid.cell(i, 0)
        draw.text((PAD / 2, y + TILE / 2 - 5), label, fill="black")
        for j, cell in enumerate(cells[i]):
            x, y = grid.cell(i, j)
            if cell.sample is None:
                _crossed(draw, x, y, cell.note)
                continue
            image = sample_image(cell.sample, cell.input_shape, cell.bounds)
            img = picture(image, max(1, TILE // max(image.shape[1:])))
            img.thumbnail((TILE, TILE))  # shrinks images larger than a cell, keeps the aspect
            canvas.paste(img, (x + (TILE - img.width) // 2, y + (TILE - img.height) // 2))
    return canvas


def _crossed(draw, x: int, y: int, note: str) -> None:
    """A grey square crossed in red, with ``note`` (why there is no sample) in its middle."""
    draw.rectangle(
        (x, y, x + TILE - 1, y + TILE - 1), fill=(235, 235, 235), outline=(160, 160, 160)
    )
    draw.line((x, y, x + TILE - 1, y + TILE - 1), fill=(200, 60, 60))
    draw.line((x, y + TILE - 1, x + TILE - 1, y), fill=(200, 60, 60))
    if note:
        width = draw.textlength(note)
        box = (
            x + (TILE - width) / 2 - 1,
            y + TILE / 2 - 7,
            x + (TILE + width) / 2 + 1,
            y + TILE / 2 + 6,
        )
        draw.rectangle(box, fill=(235, 235, 235))
        draw.text((x + (TILE - width) / 2, y + TILE / 2 - 6), note, fill=(150, 0, 0))
