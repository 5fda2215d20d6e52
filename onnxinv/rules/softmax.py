"""Softmax and LogSoftmax, inverted up to an additive constant per softmax group."""

from __future__ import annotations

import numpy as np

from .base import Family, Interval, NodeContext, OutsideDomain, PointRule, RuleNotApplicable

SUM_TOLERANCE = 1e-4


class _SoftmaxBase(PointRule):
    """Shared axis handling: which flat positions form one softmax group."""

    top_only = True  # a point on the simplex exists only where the target gives one

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if ctx.data_input != 0:
            raise RuleNotApplicable("softmax of a constant")
        shape = ctx.input_shape
        rank = len(shape) + (1 if ctx.batched else 0)
        axis = ctx.attr("axis", -1 if ctx.since_version >= 13 else 1)
        axis = axis + rank if axis < 0 else axis
        if ctx.batched and axis == 0:
            raise RuleNotApplicable("softmax over the batch dimension")
        a = axis - (1 if ctx.batched else 0)
        idx = np.arange(ctx.input_size).reshape(shape)
        if ctx.since_version < 13:
            # Before opset 13 the input is coerced to 2-D at `axis`: one group per leading index.
            groups = idx.reshape(int(np.prod(shape[:a], dtype=int)), -1)
        else:
            groups = np.moveaxis(idx, a, -1).reshape(-1, shape[a])
        self.groups = groups  # (G, K) flat positions of each group
        V = np.zeros((ctx.input_size, len(groups)))
        for g, members in enumerate(groups):
            V[members, g] = 1.0 / np.sqrt(len(members))
        self.directions = V

    def free_directions(self) -> np.ndarray:
        return self.directions

    def _grouped(self, y: np.ndarray) -> np.ndarray:
        return y.reshape(len(y), -1)[:, self.groups]  # (B, G, K)

    def forward(self, x):
        z = self._grouped(x)
        out = np.empty_like(x.reshape(len(x), -1))
        out[:, self.groups] = self._apply(z)
        return out.reshape((len(x), *self.ctx.output_shape))


class Softmax(_SoftmaxBase):
    """Softmax: z = log p + c for any constant c per group."""

    op_type = "Softmax"
    versions = (1, 11, 13)

    def output_domain(self) -> Interval:
        return Interval(0.0, 1.0, open=False)

    @staticmethod
    def _apply(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def nearest(self, y: np.ndarray) -> np.ndarray:
        g = np.maximum(self._grouped(np.asarray(y, dtype=np.float64)), 1e-30)
        out = np.empty((len(y), self.ctx.input_size))
        out[:, self.groups] = g / g.sum(-1, keepdims=True)
        return out

    def preimage(self, y: np.ndarray) -> Family:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if np.any(y <= 0):
            raise OutsideDomain("Softmax cannot produce a probability of 0 or less")
        sums = self._grouped(y).sum(-1)
        if np.any(np.abs(sums - 1) > SUM_TOLERANCE):
            raise OutsideDomain("Softmax outputs must sum to 1 along the axis")
        return Family(np.log(y), self.directions.copy())


class LogSoftmax(_SoftmaxBase):
    """LogSoftmax: z = y + c for any constant c per group."""

    op_type = "LogSoftmax"
    versions = (1, 11, 13)

    def output_domain(self) -> Interval:
        return Interval(-np.inf, 0.0, open=False)

    @staticmethod
    def _apply(z):
        m = z.max(-1, keepdims=True)
        return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))

    def nearest(self, y: np.ndarray) -> np.ndarray:
        g = self._grouped(np.asarray(y, dtype=np.float64))
        out = np.empty((len(y), self.ctx.input_size))
        out[:, self.groups] = self._apply(g)
        return out

    def preimage(self, y: np.ndarray) -> Family:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        lse = np.log(np.exp(self._grouped(y)).sum(-1))
        if np.any(np.abs(lse) > SUM_TOLERANCE):
            raise OutsideDomain("LogSoftmax outputs must have log-sum-exp 0 along the axis")
        return Family(y.copy(), self.directions.copy())


RULES = (Softmax, LogSoftmax)
