"""Shape-only operators: they rearrange values without changing them."""

from __future__ import annotations

import numpy as np

from .base import AffineRule, Family, NodeContext, RuleNotApplicable
from .linalg import permute_family


class _Reshape(AffineRule):
    """A per-sample reshape: the identity on flat (C-order) values."""

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if ctx.data_input != 0:
            raise RuleNotApplicable(f"{ctx.node.op_type} of a constant")
        if ctx.input_size != ctx.output_size:
            raise RuleNotApplicable(f"{ctx.node.op_type} changes the per-sample size")

    def forward(self, x):
        return x.reshape((len(x), *self.ctx.output_shape)).copy()

    def forward_interval(self, lo, hi):
        return lo.copy(), hi.copy()

    def pullback(self, family: Family, max_condition: float) -> Family:
        return Family(family.v0.copy(), family.V.copy(), family.residual.copy())

    def dense(self):
        return np.eye(self.ctx.input_size), np.zeros(self.ctx.input_size)


class Identity(_Reshape):
    """Identity."""

    op_type = "Identity"
    versions = (1, 13, 14, 16, 19, 21, 23, 24, 25)


class Cast(_Reshape):
    """Cast between float and double (scikit-learn exports start with one): the identity."""

    op_type = "Cast"
    versions = (6, 9, 13, 19, 21, 23, 24, 25)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        from onnx import TensorProto

        if ctx.attr("to") not in (TensorProto.FLOAT, TensorProto.DOUBLE):
            raise RuleNotApplicable("Cast to a type other than float or double is not invertible")


class Dropout(_Reshape):
    """Dropout in inference mode: the identity."""

    op_type = "Dropout"
    versions = (1, 6, 7, 10, 12, 13, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if 2 in ctx.constants and bool(np.asarray(ctx.constants[2])):
            raise RuleNotApplicable("Dropout in training mode")


class Flatten(_Reshape):
    """Flatten that keeps the batch dimension (axis ≥ 1)."""

    op_type = "Flatten"
    versions = (1, 9, 11, 13, 21, 23, 24, 25)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        axis = ctx.attr("axis", 1)
        if axis < 0:  # opset 11 and later count negative axes from the back
            axis += len(ctx.input_shape) + (1 if ctx.batched else 0)
        if ctx.batched and axis == 0:
            raise RuleNotApplicable("Flatten with axis=0 merges the batch dimension")


class Reshape(_Reshape):
    """Reshape with a constant target that keeps the batch dimension."""

    op_type = "Reshape"
    versions = (1, 5, 13, 14, 19, 21, 23, 24, 25)


class Squeeze(_Reshape):
    """Squeeze of per-sample axes."""

    op_type = "Squeeze"
    versions = (1, 11, 13, 21, 23, 24, 25)


class Unsqueeze(_Reshape):
    """Unsqueeze of per-sample axes."""

    op_type = "Unsqueeze"
    versions = (1, 11, 13, 21, 23, 24, 25)


class Transpose(AffineRule):
    """Transpose that keeps the batch axis first: a permutation of each sample's values."""

    op_type = "Transpose"
    versions = (1, 13, 21, 23, 24, 25)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        rank = len(ctx.input_shape) + (1 if ctx.batched else 0)
        perm = ctx.attr("perm") or list(range(rank))[::-1]
        perm = list(perm)
        if ctx.batched:
            if perm[0] != 0:
                raise RuleNotApplicable("Transpose moves the batch dimension")
            perm = [p - 1 for p in perm[1:]]
        idx = np.arange(ctx.input_size).reshape(ctx.input_shape)
        self.index = np.transpose(idx, perm).ravel()  # y_flat = x_flat[index]

    def forward(self, x):
        flat = x.reshape(len(x), -1)[:, self.index]
        return flat.reshape((len(x), *self.ctx.output_shape))

    def forward_interval(self, lo, hi):
        return lo[self.index], hi[self.index]

    def pullback(self, family: Family, max_condition: float) -> Family:
        return permute_family(family, self.index)

    def dense(self):
        return np.eye(self.ctx.input_size)[self.index], np.zeros(self.ctx.input_size)


RULES = (Identity, Cast, Dropout, Flatten, Reshape, Squeeze, Unsqueeze, Transpose)
