"""Affine operators with constant weights: Gemm, MatMul, Add/Sub/Mul/Div, BatchNormalization.

Also the two bases of every matrix-backed affine rule: :class:`_DenseRule` (a dense matrix and
its SVD; above :data:`~onnxinv.rules.linalg.DENSE_LIMIT` entries a matrix-free inverse when the
rule has one) and :class:`OnBasis` (a rule given by its linear part as an operator, its matrix
built by applying it to the input basis when small).
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .base import AffineRule, Family, NodeContext, RuleNotApplicable, per_sample
from .linalg import DENSE_LIMIT, DenseAffine, LinearInverse, too_large


class _DenseRule(AffineRule):
    """An affine rule given by a dense matrix and offset (subclasses build them).

    A matrix larger than :data:`~onnxinv.rules.linalg.DENSE_LIMIT` entries is refused at
    construction (the node is then solved numerically): its SVD would not fit in time or memory.
    Rules with a matrix-free inverse (:meth:`implicit`) are pulled back by it instead.
    """

    max_condition_used: float | None = None
    matrix_free = False  # whether :meth:`implicit` is implemented

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        entries = ctx.input_size * ctx.output_size
        if too_large(ctx.input_size, ctx.output_size) and not self.matrix_free:
            raise RuleNotApplicable(
                f"{ctx.node.op_type} is a {ctx.output_size}x{ctx.input_size} map, too large for a "
                f"dense SVD ({entries:,} entries > {DENSE_LIMIT:,})"
            )

    @property
    def large(self) -> bool:
        """Whether the matrix is over the dense limit (then :meth:`implicit` is used)."""
        return too_large(self.ctx.input_size, self.ctx.output_size)

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:  # (M, c) on flat per-sample values
        raise NotImplementedError

    def implicit(self, max_condition: float) -> LinearInverse:
        """The matrix-free inverse used above the dense limit."""
        raise NotImplementedError

    @cached_property
    def _mc(self) -> tuple[np.ndarray, np.ndarray]:
        return self.matrix()

    def _inverse(self, max_condition: float) -> LinearInverse:
        cache = self.__dict__.setdefault("_svd", {})
        key = (self.large, max_condition)
        if key not in cache:
            cache[key] = (
                self.implicit(max_condition)
                if self.large
                else DenseAffine(*self._mc, max_condition)
            )
        return cache[key]

    def forward(self, x: np.ndarray) -> np.ndarray:
        M, c = self._mc
        y = x.reshape(len(x), -1) @ M.T + c
        return y.reshape((len(x), *self.ctx.output_shape))

    def forward_interval(self, lo, hi):
        M, c = self._mc
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        centre = M @ mid + c
        spread = np.abs(M) @ rad
        return centre - spread, centre + spread

    def pullback(self, family: Family, max_condition: float) -> Family:
        return self._inverse(max_condition).pullback(family)

    def onto(self, max_condition: float) -> bool:
        return self._inverse(max_condition).onto

    def nullity(self, max_condition: float) -> int:
        return self._inverse(max_condition).nullity

    def dense(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.large else self._mc


class OnBasis(_DenseRule):
    """An affine rule given by its linear part as an operator, with the exact transpose.

    Small: the matrix is the linear part applied to the input basis (then the dense SVD).
    Large: :meth:`structured` when the operator has an exact inverse of its own, else LSQR on
    ``linear`` and ``adjoint`` (:class:`~onnxinv.rules.matfree.LsqrInverse`).
    """

    matrix_free = True

    def linear(self, x: np.ndarray) -> np.ndarray:
        """The linear part on ``x`` (B, *input_shape) -> (B, *output_shape), float64."""
        raise NotImplementedError

    def adjoint(self, y: np.ndarray) -> np.ndarray:
        """The transpose of :meth:`linear`: (B, *output_shape) -> (B, *input_shape)."""
        raise NotImplementedError

    def abs_linear(self, x: np.ndarray) -> np.ndarray:
        """The linear part with every coefficient replaced by its magnitude (interval bounds);
        the default suits operators whose coefficients are all ≥ 0 (pools, selections)."""
        return self.linear(x)

    def offset(self) -> np.ndarray:
        """The constant part, flat (output_size,)."""
        return np.zeros(self.ctx.output_size)

    def structured(self, max_condition: float) -> LinearInverse | None:
        """An exact inverse that needs no iterations (a selection, disjoint means, a 1×1
        convolution), or None."""
        return None

    def matrix(self):
        n = self.ctx.input_size
        basis = np.eye(n).reshape((n, *self.ctx.input_shape))
        M = self.linear(basis).reshape(n, -1).T
        return np.ascontiguousarray(M), np.ascontiguousarray(self.offset(), dtype=np.float64)

    def rows(self, fn, shape):
        """``fn`` on flat rows: (B, prod(shape)) -> (B, -1)."""
        return lambda X: fn(X.reshape((len(X), *shape))).reshape(len(X), -1)

    def implicit(self, max_condition: float) -> LinearInverse:
        from .matfree import LsqrInverse

        found = self.structured(max_condition)
        if found is not None:
            return found
        ctx = self.ctx
        return LsqrInverse(
            ctx.input_size,
            ctx.output_size,
            self.offset(),
            self.rows(self.linear, ctx.input_shape),
            self.rows(self.adjoint, ctx.output_shape),
            max_condition,
        )

    def forward(self, x: np.ndarray) -> np.ndarray:
        if not self.large:
            return super().forward(x)
        y = self.linear(np.asarray(x, np.float64).reshape((len(x), *self.ctx.input_shape)))
        return y + self.offset().reshape(self.ctx.output_shape)

    def forward_interval(self, lo, hi):
        if not self.large:
            return super().forward_interval(lo, hi)
        shape = (1, *self.ctx.input_shape)
        mid, rad = ((lo + hi) / 2).reshape(shape), ((hi - lo) / 2).reshape(shape)
        centre = self.linear(mid).ravel() + self.offset()
        spread = self.abs_linear(rad).ravel()
        return centre - spread, centre + spread


class Gemm(_DenseRule):
    """Gemm with the data as A and constant B (and C): y = alpha·x·op(B) + beta·C."""

    op_type = "Gemm"
    versions = (1, 6, 7, 9, 11, 13)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if ctx.data_input != 0 or 1 not in ctx.constants:
            raise RuleNotApplicable("Gemm is invertible only along A with a constant B")
        if ctx.attr("transA", 0) and ctx.batched:
            raise RuleNotApplicable("Gemm with transA=1 mixes the batch dimension")
        if len(ctx.node.input) > 2 and ctx.node.input[2] and 2 not in ctx.constants:
            raise RuleNotApplicable("Gemm's C is not constant")

    def matrix(self):
        ctx = self.ctx
        B = ctx.constants[1].astype(np.float64)
        if ctx.attr("transB", 0):
            B = B.T
        M = ctx.attr("alpha", 1.0) * B.T  # (out, in) for one row of A
        if not ctx.batched:
            # The whole A (a fixed rows × k) is one sample: alpha·op(A)·B acts on each row of
            # A, or, with transA, on each column of A.
            rows, k = ctx.input_shape
            if ctx.attr("transA", 0):
                M = _trans_a_matrix(ctx.attr("alpha", 1.0) * B, rows, k)
            else:
                M = np.kron(np.eye(rows), M)
        if 2 in ctx.constants:
            c = (
                ctx.attr("beta", 1.0)
                * per_sample(ctx.constants[2], ctx.output_shape, ctx.batched).ravel()
            )
        else:
            c = np.zeros(M.shape[0])
        return M, c


def _trans_a_matrix(B: np.ndarray, rows: int, k: int) -> np.ndarray:
    """Matrix of A ↦ Aᵀ·B on flat C-order A of shape (rows, k), for B of shape (rows, n)."""
    n = B.shape[1]
    M = np.zeros((k, n, rows, k))
    for i in range(k):
        M[i, :, :, i] = B.T  # y[i, c] = sum_j A[j, i] B[j, c]
    return M.reshape(k * n, rows * k)


class MatMul(_DenseRule):
    """MatMul of the data by a constant matrix on the right: y = x @ W (per row)."""

    op_type = "MatMul"
    versions = (1, 9, 13)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        W = ctx.constants.get(1)
        if ctx.data_input != 0 or W is None or W.ndim != 2:
            raise RuleNotApplicable("MatMul is invertible only as x @ W with a constant 2-D W")
        rows = ctx.input_size // W.shape[0]
        if rows * W.shape[1] * rows * W.shape[0] > 4_000_000:
            raise RuleNotApplicable("MatMul over many rows is too large for a dense inverse")

    def matrix(self):
        W = self.ctx.constants[1].astype(np.float64)
        rows = self.ctx.input_size // W.shape[0]
        M = np.kron(np.eye(rows), W.T)  # rows of x are independent
        return M, np.zeros(M.shape[0])


class _Elementwise(AffineRule):
    """y = a ⊙ x + c elementwise (broadcast constants); exact wherever a ≠ 0."""

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        # Build (a, c) now: a node this rule cannot invert (two data inputs, division by zero,
        # a constant that broadcasts the data to a larger shape) must raise RuleNotApplicable
        # here, where the planner catches it, not later inside pullback.
        a, _ = self._ac
        if np.any(a == 0) and a.size**2 > DENSE_LIMIT:
            raise RuleNotApplicable(
                f"{ctx.node.op_type} zeroes entries of a {a.size}-value tensor: too large for "
                "the dense pull-back"
            )

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @cached_property
    def _ac(self) -> tuple[np.ndarray, np.ndarray]:
        if self.ctx.input_shape != self.ctx.output_shape:
            raise RuleNotApplicable("the constant broadcasts the data to a larger shape")
        a, c = self.scale_offset()
        return a.ravel(), c.ravel()

    def forward(self, x):
        a, c = self._ac
        return (x.reshape(len(x), -1) * a + c).reshape((len(x), *self.ctx.output_shape))

    def forward_interval(self, lo, hi):
        a, c = self._ac
        ends = np.stack([a * lo + c, a * hi + c])
        return ends.min(0), ends.max(0)

    def onto(self, max_condition: float) -> bool:
        return bool(np.all(np.abs(self._ac[0]) > 0))

    def nullity(self, max_condition: float) -> int:
        return int(np.sum(self._ac[0] == 0))

    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        a, c = self._ac
        return np.diag(a), c

    def pullback(self, family: Family, max_condition: float) -> Family:
        a, c = self._ac
        if np.all(np.abs(a) > 0):
            V = family.V / a[:, None]
            from .linalg import orthonormal_columns

            return Family((family.v0 - c) / a, orthonormal_columns(V), family.residual.copy())
        return DenseAffine(np.diag(a), c, max_condition).pullback(family)


def _const(ctx: NodeContext) -> np.ndarray:
    other = 1 - ctx.data_input
    if other not in ctx.constants:
        raise RuleNotApplicable(f"{ctx.node.op_type} of two data tensors is not affine")
    return per_sample(ctx.constants[other], ctx.output_shape, ctx.batched)


class Add(_Elementwise):
    """Add a constant: y = x + c."""

    op_type = "Add"
    versions = (1, 6, 7, 13, 14)

    def scale_offset(self):
        c = _const(self.ctx)
        return np.ones_like(c), c


class Sub(_Elementwise):
    """Subtract a constant, or subtract from one: y = x − c or y = c − x."""

    op_type = "Sub"
    versions = (1, 6, 7, 13, 14)

    def scale_offset(self):
        c = _const(self.ctx)
        if self.ctx.data_input == 0:
            return np.ones_like(c), -c
        return -np.ones_like(c), c


class Mul(_Elementwise):
    """Multiply by a constant: y = a·x (entries with a = 0 lose their input)."""

    op_type = "Mul"
    versions = (1, 6, 7, 13, 14)

    def scale_offset(self):
        a = _const(self.ctx)
        return a, np.zeros_like(a)


class Div(_Elementwise):
    """Divide by a nonzero constant: y = x / a."""

    op_type = "Div"
    versions = (1, 6, 7, 13, 14)

    def scale_offset(self):
        if self.ctx.data_input != 0:
            raise RuleNotApplicable("a constant divided by the data is not affine")
        a = _const(self.ctx)
        if np.any(a == 0):
            raise RuleNotApplicable("division by zero")
        return 1.0 / a, np.zeros_like(a)


class BatchNormalization(_Elementwise):
    """BatchNormalization in inference mode: a per-channel affine map."""

    op_type = "BatchNormalization"
    versions = (1, 6, 7, 9, 14, 15)

    def __init__(self, ctx: NodeContext):
        if ctx.data_input != 0 or not all(i in ctx.constants for i in (1, 2, 3, 4)):
            raise RuleNotApplicable("BatchNormalization needs constant scale, bias, mean, var")
        if ctx.attr("training_mode", 0) or len(ctx.node.output) > 1:
            raise RuleNotApplicable("BatchNormalization in training mode")
        super().__init__(ctx)  # computes the scale and offset from the constants checked above

    def scale_offset(self):
        scale, bias, mean, var = (self.ctx.constants[i].astype(np.float64) for i in (1, 2, 3, 4))
        eps = self.ctx.attr("epsilon", 1e-5)
        a = scale / np.sqrt(var + eps)
        c = bias - a * mean
        shape = self.ctx.output_shape  # (C, ...) per sample, or (N, C, ...) for a whole tensor
        axis = 0 if self.ctx.batched else 1  # the channel axis
        if len(shape) <= axis:
            raise RuleNotApplicable("BatchNormalization of a tensor without a channel axis")
        expand = (1,) * axis + (-1,) + (1,) * (len(shape) - axis - 1)
        a_full = np.broadcast_to(a.reshape(expand), shape)
        c_full = np.broadcast_to(c.reshape(expand), shape)
        return a_full.copy(), c_full.copy()


RULES = (Gemm, MatMul, Add, Sub, Mul, Div, BatchNormalization)
