"""Operators whose every output copies one input or is a constant: Slice, Concat with
constants, Split (its first output), and constant Pad (in :mod:`onnxinv.rules.spatial`).

Such a map is described by one array: for each output, the flat input position it copies (−1
for a constant). It is found by running the node's own indexing on the array of input positions,
so numpy's slicing rules do the work (they are ONNX's: negative indices count from the end,
out-of-range ones are clamped). The inverse is exact at any size: copied values go back where
they came from (``A⁺ = Aᵀ``), the inputs nobody copies (a slice's dropped values) are free
coordinates, and constant outputs must equal their constant (else the request is off the range).

Split has several outputs. The graph partition hands a rule only a node whose data continues
from its *first* output with the others unused (any other use is a branch, solved numerically),
so here Split is the slice of its first part.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .base import NodeContext, RuleNotApplicable
from .linear import OnBasis
from .matfree import CoIsometry, coordinate_directions


class Selection(OnBasis):
    """``y_flat[j] = x_flat[source[j]]`` where ``source[j] ≥ 0``, a constant elsewhere."""

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        self.validate()
        source, _ = self._map
        if source.shape != tuple(ctx.output_shape):
            raise RuleNotApplicable(
                f"{ctx.node.op_type} gives shape {source.shape}, the model {ctx.output_shape}"
            )
        used = source[source >= 0]
        if len(np.unique(used)) != len(used):
            raise RuleNotApplicable(f"{ctx.node.op_type} copies an input value twice")

    def validate(self) -> None:
        """Raise :class:`RuleNotApplicable` for a node this rule cannot describe."""

    def select(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The node on ``index`` (one sample's flat input positions, in the input's shape):
        (source, constant), each of the output's shape."""
        raise NotImplementedError

    def axis(self, axis: int, rank: int) -> int:
        """A node's axis as an axis of one sample (the batch axis refused)."""
        axis = int(axis) % (rank + self.ctx.batched)
        if self.ctx.batched:
            if axis == 0:
                raise RuleNotApplicable(f"{self.ctx.node.op_type} along the batch axis")
            axis -= 1
        return axis

    def sample_constant(self, k: int) -> np.ndarray:
        """Constant input ``k`` as one sample (its batch axis of one dropped)."""
        c = np.asarray(self.ctx.constants[k], dtype=np.float64)
        if self.ctx.batched:
            if c.ndim == 0 or c.shape[0] != 1:
                raise RuleNotApplicable(f"{self.ctx.node.op_type}'s constant varies over the batch")
            c = c[0]
        return c

    @cached_property
    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(self.ctx.input_size).reshape(self.ctx.input_shape)
        source, const = self.select(index)
        return np.asarray(source), np.asarray(const, dtype=np.float64)

    @cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        """(output positions that copy, the input positions they copy)."""
        source = self._map[0].ravel()
        live = np.flatnonzero(source >= 0)
        return live, source[live]

    def linear(self, x: np.ndarray) -> np.ndarray:
        live, src = self._flat
        y = np.zeros((len(x), self.ctx.output_size))
        y[:, live] = x.reshape(len(x), -1)[:, src]
        return y.reshape((len(x), *self.ctx.output_shape))

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        live, src = self._flat
        x = np.zeros((len(y), self.ctx.input_size))
        x[:, src] = y.reshape(len(y), -1)[:, live]
        return x.reshape((len(y), *self.ctx.input_shape))

    def offset(self) -> np.ndarray:
        source, const = self._map
        return np.where(source < 0, const, 0.0).ravel()

    def structured(self, max_condition: float) -> CoIsometry:
        ctx = self.ctx
        live, src = self._flat
        dropped = np.setdiff1d(np.arange(ctx.input_size), src)
        return CoIsometry(
            ctx.input_size, ctx.output_size, self.offset(),
            self.rows(self.linear, ctx.input_shape), self.rows(self.adjoint, ctx.output_shape),
            onto=len(live) == ctx.output_size,
            null=coordinate_directions(ctx.input_size, dropped),
        )  # fmt: skip


def _constant_inputs(ctx: NodeContext, positions) -> None:
    names = list(ctx.node.input)
    for i in positions:
        if i < len(names) and names[i] and i not in ctx.constants:
            raise RuleNotApplicable(f"{ctx.node.op_type}'s input {i} is not constant")


class Slice(Selection):
    """Slice with constant starts, ends, axes and steps (of axes other than the batch's)."""

    op_type = "Slice"
    versions = (1, 10, 11, 13)

    def validate(self) -> None:
        if self.ctx.data_input != 0:
            raise RuleNotApplicable("Slice is invertible only in its data")
        _constant_inputs(self.ctx, (1, 2, 3, 4))

    def select(self, index):
        ctx = self.ctx
        if ctx.since_version < 10:
            starts, ends = ctx.attr("starts"), ctx.attr("ends")
            axes, steps = ctx.attr("axes", None), None
        else:
            starts, ends, axes, steps = (
                [int(v) for v in ctx.constants[i].ravel()] if i in ctx.constants else None
                for i in (1, 2, 3, 4)
            )
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        cut = [slice(None)] * index.ndim
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            cut[self.axis(a, index.ndim)] = slice(int(s), int(e), int(st))
        source = index[tuple(cut)]
        return source, np.zeros(source.shape)


class Concat(Selection):
    """Concat of the data with constant tensors."""

    op_type = "Concat"
    versions = (1, 4, 11, 13)

    def validate(self) -> None:
        _constant_inputs(
            self.ctx, [i for i in range(len(self.ctx.node.input)) if i != self.ctx.data_input]
        )

    def select(self, index):
        axis = self.axis(self.ctx.attr("axis", 1), index.ndim)
        sources, consts = [], []
        for k in range(len(self.ctx.node.input)):
            if k == self.ctx.data_input:
                sources.append(index)
                consts.append(np.zeros(index.shape))
            else:
                c = self.sample_constant(k)
                sources.append(np.full(c.shape, -1))
                consts.append(c)
        try:
            return np.concatenate(sources, axis), np.concatenate(consts, axis)
        except ValueError as exc:
            raise RuleNotApplicable(f"Concat's constants do not fit the data: {exc}") from None


class Split(Selection):
    """Split whose first output carries the data on (the other parts unused)."""

    op_type = "Split"
    versions = (1, 2, 11, 13, 18)

    def validate(self) -> None:
        if self.ctx.data_input != 0:
            raise RuleNotApplicable("Split is invertible only in its data")

    def select(self, index):
        axis = self.axis(self.ctx.attr("axis", 0), index.ndim)
        cut = [slice(None)] * index.ndim
        cut[axis] = slice(0, self.ctx.output_shape[axis])
        source = index[tuple(cut)]
        return source, np.zeros(source.shape)


RULES = (Slice, Concat, Split)
