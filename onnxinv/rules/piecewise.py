"""Piecewise operators whose preimage of a point is a set: Relu, Sign, Shrink, MaxPool, Max, Min.

Levenberg–Marquardt sees zero gradients on their flat pieces, but their preimages are easy to
describe exactly. :meth:`preimage` returns one deterministic member (ReLU: ``x = y``; MaxPool: the
*envelope*, the largest member) and :meth:`sample_preimage` a random one, so samples differ:
a ReLU zero comes from a random negative value, a Sign from a random magnitude, a Shrink zero from
a random point of ``[−λ, λ]``, a max pool's non-maximal entries from random values below the
maximum, an output of Max (Min) that equals its constant from a random value below (above) it.
"""

from __future__ import annotations

import numpy as np

from ..shapes import effective_kernel
from .base import (
    Family,
    Interval,
    NodeContext,
    OutsideDomain,
    PointRule,
    RuleNotApplicable,
    per_sample,
)
from .spatial import window_pads

FLOOR = 1e-6  # smallest random step (relative to the sample's scale), so a draw is strict
MATCH = 1e-9  # relative tolerance of "equals" tests (MaxPool's window maximum, Max/Min's bound)


def _rows(y: np.ndarray) -> np.ndarray:
    return np.asarray(y, dtype=np.float64).reshape(len(y), -1)


def _scale(y: np.ndarray) -> np.ndarray:
    """Per-sample scale ``max(1, max |y|)`` of flat values (B, d), as (B, 1)."""
    if y.shape[1] == 0:
        return np.ones((len(y), 1))
    return np.maximum(1.0, np.abs(y).max(1, keepdims=True))


def _step(rng: np.random.Generator, shape: tuple[int, ...], scale: np.ndarray, std: float):
    """Random strictly positive amounts of size ``std · scale`` (half-normal plus a floor)."""
    return scale * (std * np.abs(rng.standard_normal(shape)) + FLOOR)


def _first_bad(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(len(bad), -1).any(1))[0])


class Relu(PointRule):
    """ReLU: y = max(x, 0); a zero comes from any x ≤ 0 (drawn negative), output ≥ 0."""

    op_type = "Relu"
    versions = (1, 6, 13, 14)

    def output_domain(self) -> Interval:
        return Interval(0.0, np.inf, open=False)

    def forward(self, x):
        return np.maximum(x, 0.0)

    def forward_interval(self, lo, hi):
        return np.maximum(lo, 0.0), np.maximum(hi, 0.0)

    def differentiable(self) -> bool:
        return True

    def forward_with_slope(self, x):
        return np.maximum(x, 0.0), (x > 0).astype(np.float64)

    def breakpoints(self):
        return np.zeros(1)

    def nearest(self, y):
        return np.maximum(np.nan_to_num(_rows(y), nan=0.0), 0.0)

    def preimage(self, y: np.ndarray) -> Family:
        y = _rows(y)
        self.check_domain(y)
        return Family.point(y.copy())

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        y = _rows(y)
        self.check_domain(y)
        x = np.where(y == 0, -_step(rng, y.shape, _scale(y), std), y)
        return Family.point(x)


class Abs(Relu):
    """Abs: y = |x|; each nonzero output comes from ±y (sign drawn at random), output ≥ 0.

    Shares ReLU's domain, deterministic preimage (x = y) and breakpoint (0).
    """

    op_type = "Abs"
    versions = (1, 6, 13)

    def forward(self, x):
        return np.abs(x)

    def forward_interval(self, lo, hi):
        straddle = (lo < 0) & (hi > 0)
        low = np.where(straddle, 0.0, np.minimum(np.abs(lo), np.abs(hi)))
        return low, np.maximum(np.abs(lo), np.abs(hi))

    def forward_with_slope(self, x):
        return np.abs(x), np.sign(x)

    def nearest(self, y):
        return np.abs(np.nan_to_num(_rows(y), nan=0.0))

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        y = _rows(y)
        self.check_domain(y)
        return Family.point(np.where(rng.random(y.shape) < 0.5, -y, y))


class Sign(PointRule):
    """Sign: y ∈ {−1, 0, 1}; ±1 comes from any x of that sign (random magnitude), 0 from 0."""

    op_type = "Sign"
    versions = (9, 13)

    def output_domain(self) -> Interval:
        return Interval(-1.0, 1.0, open=False)

    def forward(self, x):
        return np.sign(x)

    def forward_interval(self, lo, hi):
        return np.sign(lo), np.sign(hi)

    def nearest(self, y):
        return np.clip(np.rint(np.nan_to_num(_rows(y), nan=0.0)), -1.0, 1.0)

    def _checked(self, y: np.ndarray) -> np.ndarray:
        y = _rows(y)
        bad = ~np.isin(y, (-1.0, 0.0, 1.0))
        if bad.any():
            raise OutsideDomain(
                f"Sign outputs only -1, 0 or 1 (sample {_first_bad(bad)} asks for another value)"
            )
        return y

    def preimage(self, y: np.ndarray) -> Family:
        return Family.point(self._checked(y).copy())

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        y = self._checked(y)
        return Family.point(y * np.exp(rng.standard_normal(y.shape)))


class Shrink(PointRule):
    """Shrink: y = x − bias (x > λ), x + bias (x < −λ), else 0 (from a random x in [−λ, λ])."""

    op_type = "Shrink"
    versions = (9,)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if self.lambd < 0:
            raise RuleNotApplicable("Shrink with lambd < 0 (overlapping pieces) is not handled")

    @property
    def bias(self) -> float:
        return float(self.ctx.attr("bias", 0.0))

    @property
    def lambd(self) -> float:
        return float(self.ctx.attr("lambd", 0.5))

    @property
    def gap(self) -> float:
        """Outputs in (0, gap] and [−gap, 0) are unreachable (gap = λ − bias, when positive)."""
        return self.lambd - self.bias

    def output_domain(self) -> Interval:
        # The real line minus (0, gap] and [-gap, 0) when gap > 0: an interval cannot say that,
        # so preimage() refuses those values and nearest() moves them out.
        return Interval()

    def forward(self, x):
        b, lam = self.bias, self.lambd
        return np.where(x < -lam, x + b, np.where(x > lam, x - b, 0.0))

    def forward_interval(self, lo, hi):
        b, lam = self.bias, self.lambd
        lows, highs = [], []
        neg = lo < -lam  # part of [lo, hi] on the x + bias piece
        lows.append(np.where(neg, lo + b, np.inf))
        highs.append(np.where(neg, np.minimum(hi, -lam) + b, -np.inf))
        mid = (hi >= -lam) & (lo <= lam)
        lows.append(np.where(mid, 0.0, np.inf))
        highs.append(np.where(mid, 0.0, -np.inf))
        pos = hi > lam  # part on the x − bias piece
        lows.append(np.where(pos, np.maximum(lo, lam) - b, np.inf))
        highs.append(np.where(pos, hi - b, -np.inf))
        return np.min(lows, 0), np.max(highs, 0)

    def nearest(self, y):
        y = np.nan_to_num(_rows(y), nan=0.0)
        g = self.gap
        if g <= 0:
            return y
        inside = (y != 0) & (np.abs(y) <= g)
        edge = np.sign(y) * (g + FLOOR * max(1.0, g, abs(self.lambd)))
        return np.where(inside, np.where(np.abs(y) <= g / 2, 0.0, edge), y)

    def _pieces(self, y: np.ndarray) -> np.ndarray:
        """x for the nonzero entries (zeros left at 0); raises where y is unreachable."""
        y = _rows(y)
        b, lam = self.bias, self.lambd
        x = np.where(y > 0, y + b, np.where(y < 0, y - b, 0.0))
        bad = ((y > 0) & ~(x > lam)) | ((y < 0) & ~(x < -lam)) | np.isnan(y)
        if bad.any():
            raise OutsideDomain(
                f"Shrink(bias={b:g}, lambd={lam:g}) cannot output values in "
                f"[-{self.gap:g}, 0) or (0, {self.gap:g}] (sample {_first_bad(bad)})"
            )
        return x

    def preimage(self, y: np.ndarray) -> Family:
        return Family.point(self._pieces(y))

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        """Zeros from a uniform x in [−λ, λ]; with bias > λ a value in (λ − bias, bias − λ)
        also comes from the other piece, picked at random."""
        x = self._pieces(y)
        y = _rows(y)
        b, lam = self.bias, self.lambd
        other = np.where(y > 0, y - b, y + b)
        both = ((y > 0) & (other < -lam)) | ((y < 0) & (other > lam))
        x = np.where(both & (rng.random(x.shape) < 0.5), other, x)
        return Family.point(np.where(y == 0, rng.uniform(-lam, lam, x.shape), x))


_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


class MaxPool(PointRule):
    """MaxPool (one output, 1-3-D, any pads/strides/dilations): below-max entries drawn lower."""

    op_type = "MaxPool"
    versions = (1, 8, 10, 11, 12, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        node = ctx.node
        if len(node.output) > 1 and node.output[1]:
            raise RuleNotApplicable("MaxPool whose Indices output is used")
        if ctx.data_input != 0:
            raise RuleNotApplicable("MaxPool of a constant")
        kernel = [int(k) for k in ctx.attr("kernel_shape", [])]
        n = len(kernel)
        ins, outs = tuple(ctx.input_shape), tuple(ctx.output_shape)
        if not n or len(ins) < n + (1 if ctx.batched else 2) or len(outs) != len(ins):
            raise RuleNotApplicable("MaxPool's kernel does not match its input's rank")
        if ins[:-n] != outs[:-n]:
            raise RuleNotApplicable("MaxPool's output does not keep the leading axes")
        strides = [int(s) for s in ctx.attr("strides", None) or [1] * n]
        dilations = [int(d) for d in ctx.attr("dilations", None) or [1] * n]
        auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
        if auto_pad not in _AUTO_PADS:
            raise RuleNotApplicable(f"MaxPool with auto_pad={auto_pad!r}")
        in_sp, out_sp = ins[-n:], outs[-n:]
        span = effective_kernel(kernel, dilations)
        begin = window_pads(ctx, in_sp, out_sp, span, strides)[0]
        self.lead = int(np.prod(ins[:-n], dtype=np.int64))
        self.n_in = int(np.prod(in_sp, dtype=np.int64))
        self.n_out = int(np.prod(out_sp, dtype=np.int64))
        self.table = _window_table(in_sp, out_sp, kernel, strides, dilations, begin)
        if not (self.table < self.n_in).any(0).all():
            raise RuleNotApplicable("a MaxPool window lies entirely in the padding")

    def selective(self) -> bool:
        return True

    def windows(self) -> np.ndarray:
        offsets = np.arange(self.lead)[:, None, None] * self.n_in
        w = np.where(self.table < self.n_in, self.table[None] + offsets, -1)  # (lead, K, n_out)
        return w.transpose(0, 2, 1).reshape(self.lead * self.n_out, -1)

    def forward_with_selection(self, x):
        b = len(x)
        xr = np.asarray(x, dtype=np.float64).reshape(b * self.lead, self.n_in)
        xp = np.concatenate([xr, np.full((len(xr), 1), -np.inf)], axis=1)
        best = np.full((len(xr), self.n_out), -np.inf)
        arg = np.full((len(xr), self.n_out), self.n_in)
        for cols in self.table:  # the first maximum of each window
            v = xp[:, cols]
            take = v > best
            best = np.where(take, v, best)
            arg = np.where(take, cols, arg)
        offsets = (np.arange(self.lead) * self.n_in)[None, :, None]
        idx = arg.reshape(b, self.lead, self.n_out) + offsets
        return best.reshape(b, -1), idx.reshape(b, -1)

    # -- shared pieces ---------------------------------------------------------------------------
    def _pool(self, xp: np.ndarray) -> np.ndarray:
        """Window maxima of rows (R, n_in + 1) whose last column is the padding (-inf)."""
        out = np.full((len(xp), self.n_out), -np.inf)
        for cols in self.table:
            np.maximum(out, xp[:, cols], out=out)
        return out

    def _envelope(self, y: np.ndarray) -> np.ndarray:
        """(R, n_in + 1): the minimum of y over the windows containing each entry (+inf: none);
        the last column is the padding, set to -inf."""
        e = np.full((len(y), self.n_in + 1), np.inf)
        for cols in self.table:
            # One kernel offset reads distinct entries for distinct windows (the padding column
            # aside), so a plain fancy-index update is exact.
            e[:, cols] = np.minimum(e[:, cols], y)
        e[:, -1] = -np.inf
        return e

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (R, n_out) of the request and the per-row scale (R, 1)."""
        y = _rows(y)
        return y.reshape(len(y) * self.lead, self.n_out), np.repeat(_scale(y), self.lead, 0)

    def _witnesses(
        self, y: np.ndarray, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(envelope, scale, witnesses): for each window (R, n_out) the column of one entry at
        the window's maximum, chosen by random priorities of the entries (the first one without
        ``rng``).

        Every entry of a window is at most its request (the envelope is a minimum over windows),
        so the envelope pools back to the request exactly when every window has such an entry;
        otherwise the request is unreachable and OutsideDomain is raised.
        """
        yr, scale = self._split(y)
        e = self._envelope(yr)
        need = yr - MATCH * scale
        col = np.full(yr.shape, self.n_in)
        if rng is None:
            for cols in self.table:
                col = np.where((col == self.n_in) & (e[:, cols] >= need), cols, col)
        else:
            priority = rng.random(e.shape)
            best = np.full(yr.shape, -1.0)
            for cols in self.table:
                p = priority[:, cols]
                take = (e[:, cols] >= need) & (p > best)
                best = np.where(take, p, best)
                col = np.where(take, cols, col)
        miss = col == self.n_in  # NaN requests miss too
        if miss.any():
            sample = int(np.flatnonzero(miss.any(1))[0]) // self.lead
            raise OutsideDomain(
                "MaxPool cannot output this: overlapping windows ask for different maxima "
                f"of the entries they share (sample {sample})"
            )
        return e, scale, col

    # -- the rule --------------------------------------------------------------------------------
    def forward(self, x):
        b = len(x)
        rows = np.asarray(x, dtype=np.float64).reshape(b * self.lead, self.n_in)
        xp = np.concatenate([rows, np.full((len(rows), 1), -np.inf)], 1)
        return self._pool(xp).reshape((b, *self.ctx.output_shape))

    def forward_interval(self, lo, hi):
        # Max pooling is monotone: bounds of the inputs pool to bounds of the outputs.
        lo_, hi_ = (self.forward(np.asarray(v)[None]).ravel() for v in (lo, hi))
        return lo_, hi_

    def output_domain(self) -> Interval:
        # Any real value; which vectors are reachable is a joint condition preimage() checks.
        return Interval()

    def nearest(self, y):
        """The largest reachable output below ``y``: the pooled envelope."""
        yr, _ = self._split(np.nan_to_num(_rows(y), nan=0.0))
        return self._pool(self._envelope(yr)).reshape(len(y), -1)

    def preimage(self, y: np.ndarray) -> Family:
        """The envelope (entries in no window at 0): the largest member of the preimage set."""
        e, _, _ = self._witnesses(y, None)
        x = e[:, :-1]
        return Family.point(np.where(np.isinf(x), 0.0, x).reshape(len(y), -1))

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        """Witnesses kept at the envelope, other entries lowered at random, free ones drawn."""
        e, scale, col = self._witnesses(y, rng)
        keep = np.zeros(e.shape, dtype=bool)
        keep[np.arange(len(e))[:, None], col] = True
        x = e[:, :-1]
        x = np.where(keep[:, :-1], x, x - _step(rng, x.shape, scale, std))
        x = np.where(np.isinf(x), scale * rng.standard_normal(x.shape), x)  # in no window
        return Family.point(x.reshape(len(y), -1))


def _window_table(
    in_sp: tuple[int, ...],
    out_sp: tuple[int, ...],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    begin: list[int],
) -> np.ndarray:
    """(K, n_out): the flat input entry each window reads at each kernel offset, n_in for padding.

    Kernel offsets that read only padding are dropped (they are a product of per-axis offsets,
    so dropping per axis drops exactly those).
    """
    n = len(kernel)
    n_in = int(np.prod(in_sp, dtype=np.int64))
    step = np.cumprod((1, *in_sp[::-1]))[:-1][::-1]  # row-major strides of the spatial axes
    flat, valid, used = np.zeros((), np.intp), np.ones((), bool), []
    for d in range(n):
        pos = (
            np.arange(out_sp[d])[None, :] * strides[d]
            - begin[d]
            + np.arange(kernel[d])[:, None] * dilations[d]
        )  # (k_d, out_d)
        inside = (pos >= 0) & (pos < in_sp[d])
        keep = inside.any(1)  # kernel offsets along this axis that ever read the input
        used.append(int(keep.sum()))
        shape = [1] * (2 * n)
        shape[d], shape[n + d] = used[-1], out_sp[d]
        flat = flat + (pos[keep] * step[d]).astype(np.intp).reshape(shape)
        valid = valid & inside[keep].reshape(shape)
    table = np.where(valid, flat, n_in)
    return table.reshape(int(np.prod(used)), int(np.prod(out_sp, dtype=np.int64)))


class _Extremum(PointRule):
    """Max/Min of one data input and constants, elementwise with numpy broadcasting.

    Computed in *Max space*: with ``sign`` −1, min(x, c) = −max(−x, −c). The bound ``c`` (the
    extremum of the constant inputs on one sample's output shape) varies per entry, while
    :meth:`output_domain` is a scalar interval: it gives the loosest bound, which every
    reachable output satisfies (Max: y ≥ min c); :meth:`preimage` checks y ≥ c entrywise and
    :meth:`nearest` projects onto that set.
    """

    versions = (1, 6, 8, 12, 13)
    sign = 1.0

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        op = ctx.node.op_type
        others = [k for k, name in enumerate(ctx.node.input) if name and k != ctx.data_input]
        if any(k not in ctx.constants for k in others):
            raise RuleNotApplicable(f"{op} of two or more data tensors is not invertible")
        if tuple(ctx.input_shape) != tuple(ctx.output_shape):
            raise RuleNotApplicable(f"{op}'s constants broadcast the data to a larger shape")
        c = np.full(ctx.output_shape, -np.inf)  # no constant: the identity
        for k in others:
            const = per_sample(ctx.constants[k], ctx.output_shape, ctx.batched)
            c = np.maximum(c, self.sign * const)
        self.c = c.ravel()  # flat, in Max space

    def output_domain(self) -> Interval:
        bound = float(self.c.min()) if self.c.size else -np.inf
        if self.sign > 0:
            return Interval(bound, np.inf, open=False)
        return Interval(-np.inf, -bound, open=False)

    def forward(self, x):
        s, b = self.sign, len(x)
        y = s * np.maximum(s * np.asarray(x, dtype=np.float64).reshape(b, -1), self.c)
        return y.reshape((b, *self.ctx.output_shape))

    def differentiable(self) -> bool:
        return True

    def forward_with_slope(self, x):
        s, b = self.sign, len(x)
        flat = s * np.asarray(x, dtype=np.float64).reshape(b, -1)
        y = (s * np.maximum(flat, self.c)).reshape((b, *self.ctx.output_shape))
        return y, (flat > self.c).astype(np.float64).reshape(y.shape)

    def breakpoints(self):
        c = self.sign * self.c
        return np.where(np.isfinite(c), c, np.nan)[:, None]

    def forward_interval(self, lo, hi):
        # Both are increasing: interval ends map to interval ends.
        s = self.sign
        return s * np.maximum(s * lo, self.c), s * np.maximum(s * hi, self.c)

    def nearest(self, y):
        """Entries beyond the constant (below it for Max, above for Min) moved onto it."""
        s = self.sign
        return s * np.maximum(s * np.nan_to_num(_rows(y), nan=0.0), self.c)

    def _ties(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y in Max space, where it equals the constant); raises where it is beyond it."""
        z = self.sign * _rows(y)
        tol = MATCH * np.maximum(1.0, np.abs(self.c))
        bad = ~(z >= self.c - np.where(np.isfinite(tol), tol, 0.0))  # NaN is bad too
        if bad.any():
            side = "below" if self.sign > 0 else "above"
            raise OutsideDomain(
                f"{self.op_type} cannot output a value {side} its constant input "
                f"(sample {_first_bad(bad)})"
            )
        return z, z <= self.c

    def preimage(self, y: np.ndarray) -> Family:
        """x = y, and x = c where y equals the constant."""
        z, tie = self._ties(y)
        return Family.point(self.sign * np.where(tie, self.c, z))

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        """x = y; where y equals the constant, x = c ∓ a random amount (std·max(1, |c|))."""
        z, tie = self._ties(y)
        scale = np.maximum(1.0, np.abs(np.where(np.isfinite(self.c), self.c, 0.0)))
        return Family.point(self.sign * np.where(tie, self.c - _step(rng, z.shape, scale, std), z))


class Max(_Extremum):
    """Max of the data and constants: an output at the constant comes from any x below it."""

    op_type = "Max"


class Min(_Extremum):
    """Min of the data and constants: an output at the constant comes from any x above it."""

    op_type = "Min"
    sign = -1.0


RULES = (Relu, Abs, Sign, Shrink, MaxPool, Max, Min)
