"""Branch and bound over activation splits: the decision for chains without max pools.

The mixed-integer program (:mod:`.program`) keeps the interval bounds it was written with, so
its linear relaxation stays loose however many activations its search has fixed. Here each node
of the search is a box on every activation's input: a split cuts one value's interval at a
breakpoint, and the bounds of every value above it are computed again from the split ones by
linear bound propagation (each activation between two lines, substituted back to the input box),
so the relaxation tightens as the search goes down. Each node's relaxation, the convex hull of
every activation's graph over its interval plus the target's necessary conditions, is one
linear program (HiGHS through ``highspy``, started from the parent's basis):

* infeasible: no input in the node's part of the box meets the target; the node is closed;
* a solution on which every activation sits on its graph: an input meeting the conditions
  (a witness);
* otherwise the value whose relaxation the solution leans on most (its distance from the graph,
  times the weight of its outgoing connections) is split, the side holding the solution first.

The search is complete when no node is left: the target is then proven unreachable. Its
objective (the sum of the values that the relaxation lets rise above a convex graph) pulls each
solution towards the graph, so splits go where the relaxation is used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from ...objective import TopRegion
from ...partition.bounds import back_substitute, chord_lines, widen
from ...partition.chain import Activation, Affine
from .program import SLACK, pieces

GRAPH = 1e-7  # distance from an activation's graph under which a solution value sits on it


def _highs():
    """A silent ``highspy.Highs`` (the library prints a banner on its first construction)."""
    import highspy

    out = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        h = highspy.Highs()
    finally:
        os.dup2(out, 1)
        os.close(null)
        os.close(out)
    h.setOptionValue("output_flag", False)
    return h


def applies(ops: list) -> bool:
    """Whether the chain has only affine maps and elementwise piecewise-linear activations."""
    return all(
        isinstance(op, Affine) or (isinstance(op, Activation) and op.rule.breakpoints() is not None)
        for op in ops
    )


@dataclass
class SearchOutcome:
    """``status``: ``"infeasible"`` (search complete), ``"feasible"`` (``x`` a witness) or
    ``"unknown (time limit)"``; ``nodes`` linear programs solved."""

    status: str
    x: np.ndarray | None
    nodes: int
    seconds: float


class _Graph:
    """One activation's breakpoints per value, padded with the value's left end."""

    def __init__(self, rule, n: int):
        self.rule = rule
        bp = np.asarray(rule.breakpoints(), dtype=np.float64)
        self.bp = np.broadcast_to(bp if bp.ndim == 2 else bp[None, :], (n, bp.shape[-1]))
        self.pieces = pieces(rule, n)
        self.sign = self.convex()

    def f(self, z: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(self.rule.forward(z[None]), dtype=np.float64).reshape(z.shape)

    def points(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's corners on ``[lo, hi]`` per value: (z, f(z)), each (n, k + 2)."""
        B = np.where(np.isnan(self.bp), lo[:, None], self.bp)
        z = np.concatenate([lo[:, None], np.clip(B, lo[:, None], hi[:, None]), hi[:, None]], 1)
        return z, np.stack([self.f(z[:, j]) for j in range(z.shape[1])], 1)

    def lines(self, lo: np.ndarray, hi: np.ndarray):
        """Every line through two corners: slope, intercept (n, Q) and whether it is below
        (``under``) or above (``over``) the graph on the whole interval. The lines below
        form the graph's lower convex hull, those above its upper concave hull."""
        z, f = self.points(lo, hi)
        i, j = np.triu_indices(z.shape[1], 1)
        dz = z[:, j] - z[:, i]
        flat = dz <= 0
        s = np.where(flat, 0.0, (f[:, j] - f[:, i]) / np.where(flat, 1.0, dz))
        b = f[:, i] - s * z[:, i]
        gap = f[:, None, :] - (s[:, :, None] * z[:, None, :] + b[:, :, None])  # (n, Q, P)
        eps = 1e-9 * (1 + np.abs(f).max(1))[:, None]
        return s, b, gap.min(2) >= -eps, gap.max(2) <= eps

    def range(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The least and largest value of the graph on ``[lo, hi]`` (at its corners)."""
        _, f = self.points(lo, hi)
        return widen(f.min(1), f.max(1), SLACK)

    def bracket(self, lo: np.ndarray, hi: np.ndarray):
        """One line below and one above the graph on ``[lo, hi]``: (slope, intercept) of each,
        (n,). Where the graph is convex, the line below is its piece covering most of the
        interval (concave: the line above); the other line is the chord. Where it is neither,
        both are the chord moved down and up to the corners."""
        z, f = self.points(lo, hi)
        s, low, high = chord_lines(z, f, hi - lo)
        below, above = (s, low), (s, high)
        left, right, slope, icpt = self.pieces
        cover = np.minimum(right, hi) - np.maximum(left, lo)  # (S, n)
        k = np.argmax(cover, axis=0)
        cols = np.arange(len(lo))
        piece = (slope[k, cols], icpt[k, cols])
        lower = [np.where(self.sign > 0, p, q) for p, q in zip(piece, below, strict=True)]
        upper = [np.where(self.sign < 0, p, q) for p, q in zip(piece, above, strict=True)]
        return (*lower, *upper)

    def convex(self) -> np.ndarray:
        """Per value: +1 where the graph is convex (slopes rise), −1 concave, 0 neither."""
        left, _, slope, _ = self.pieces
        slope = np.where(left < np.inf, slope, np.nan)  # (pieces a value does not have)
        rise = np.diff(slope, axis=0)
        with np.errstate(invalid="ignore"):
            up = np.all((rise >= 0) | np.isnan(rise), axis=0)
            down = np.all((rise <= 0) | np.isnan(rise), axis=0)
        return np.where(up, 1.0, np.where(down, -1.0, 0.0))


class Search:
    """The chain ``ops`` over the box with the top region's rows, searched by splits."""

    def __init__(self, ops: list, n: int, bounds, region: TopRegion):
        self.ops, self.n, self.region = ops, n, region
        self.box = (float(bounds[0]), float(bounds[1]))
        self.acts = [i for i, op in enumerate(ops) if isinstance(op, Activation)]
        self.graph = {i: _Graph(ops[i].rule, ops[i - 1].M.shape[0]) for i in self.acts}
        self.sign = {i: self.graph[i].sign for i in self.acts}
        # Outgoing weight of each activation value: how much its relaxation moves the top.
        self.weight = {
            i: np.abs(ops[i + 1].M).sum(0) if i + 1 < len(ops) else np.ones(len(self.sign[i]))
            for i in self.acts
        }
        self._layout()
        self._highs = _highs()
        self._stack: list | None = None  # nodes left: (split bounds, parent's basis)
        self.nodes, self.seconds = 0, 0.0

    # -- the linear program's fixed layout ---------------------------------------------------
    def _layout(self) -> None:
        """Column indices of every value, and the rows that never change (affine maps, top)."""
        col = self.n
        self.out: list[np.ndarray] = []  # columns of each op's output
        prev = np.arange(self.n)
        self.inp: list[np.ndarray] = []
        for op in self.ops:
            m = op.M.shape[0] if isinstance(op, Affine) else len(prev)
            self.inp.append(prev)
            prev = np.arange(col, col + m)
            self.out.append(prev)
            col += m
        self.n_cols = col
        r, c, v, lb, ub = [], [], [], [], []
        row = 0
        for i, op in enumerate(self.ops):
            if not isinstance(op, Affine):
                continue
            M = op.M
            m = M.shape[0]
            nz = np.nonzero(M)
            r += [np.arange(row, row + m), row + nz[0]]
            c += [self.out[i], self.inp[i][nz[1]]]
            v += [np.ones(m), -M[nz]]
            lb.append(op.c)
            ub.append(op.c)
            row += m
        D = self.region.D
        nz = np.nonzero(D)
        r.append(row + nz[0])
        c.append(self.out[-1][nz[1]])
        v.append(D[nz])
        lo, hi = widen(self.region.need_lo, self.region.need_hi, SLACK)
        lb.append(lo)
        ub.append(hi)
        row += D.shape[0]
        self.fixed = (np.concatenate(r), np.concatenate(c), np.concatenate(v))
        self.fixed_lb, self.fixed_ub = np.concatenate(lb), np.concatenate(ub)
        self.n_fixed = row

    # -- bounds ------------------------------------------------------------------------------
    def propagate(self, split: dict[int, tuple[np.ndarray, np.ndarray]]):
        """Every activation's input bounds, from the box up by linear bound propagation, each
        met with ``split`` (the node's cuts); None when a value's interval is empty.

        Each activation's input is the affine map below it; its largest values are that map
        carried down to the box through the activations below, each between its two lines on
        the bounds found for it (:func:`~onnxinv.partition.bounds.back_substitute`), its least
        the same for the map negated."""
        lo_x, hi_x = self.box
        bounds, lines = {}, {}

        def upper(i, M, c):  # (the largest M z + c over the box, z the input of op i)
            W, const = back_substitute(self.ops[:i], lines, M, c)
            return const + np.where(W > 0, W * hi_x, W * lo_x).sum(1)

        for i in self.acts:
            below = self.ops[i - 1]
            lo, hi = widen(-upper(i - 1, -below.M, -below.c), upper(i - 1, below.M, below.c), SLACK)
            if i in split:
                lo, hi = np.maximum(lo, split[i][0]), np.minimum(hi, split[i][1])
            if np.any(lo > hi):
                return None
            bounds[i] = (lo, hi)
            lines[i] = self.graph[i].bracket(lo, hi)
        return bounds

    # -- one node ----------------------------------------------------------------------------
    def relaxation(self, bounds, basis=None):
        """The node's linear program solved: (x of every column or None if infeasible, basis)."""
        import highspy

        r, c, v = [self.fixed[0]], [self.fixed[1]], [self.fixed[2]]
        lb, ub = [self.fixed_lb], [self.fixed_ub]
        row = self.n_fixed
        col_lo = np.full(self.n_cols, -np.inf)
        col_hi = np.full(self.n_cols, np.inf)
        col_lo[: self.n], col_hi[: self.n] = self.box
        cost = np.zeros(self.n_cols)
        for i in self.acts:
            lo, hi = bounds[i]
            z, h = self.inp[i], self.out[i]
            col_lo[z], col_hi[z] = lo, hi
            s, b, under, over = self.graph[i].lines(lo, hi)
            col_lo[h], col_hi[h] = self.graph[i].range(lo, hi)
            m, Q = s.shape
            rows = row + np.arange(2 * m * Q).reshape(2, m, Q)
            for side, ok in ((0, under), (1, over)):  # h − s z ≥ b (under) / ≤ b (over)
                rr = rows[side]
                r += [rr.ravel(), rr.ravel()]
                c += [np.repeat(h, Q), np.repeat(z, Q)]
                v += [np.ones(m * Q), -s.ravel()]
                lb.append(
                    np.where(ok, b, -np.inf).ravel() if side == 0 else np.full(m * Q, -np.inf)
                )
                ub.append(np.where(ok, b, np.inf).ravel() if side == 1 else np.full(m * Q, np.inf))
            row += 2 * m * Q
            cost[h] = np.where(self._undecided(i, lo, hi), self.sign[i], 0.0)
        from scipy.sparse import csc_matrix

        A = csc_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))),
                       shape=(row, self.n_cols))  # fmt: skip
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = self.n_cols, row
        lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, col_lo, col_hi
        lp.row_lower_, lp.row_upper_ = np.concatenate(lb), np.concatenate(ub)
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_ = A.indptr, A.indices
        lp.a_matrix_.value_ = A.data
        hs = self._highs
        done = (highspy.HighsModelStatus.kOptimal, highspy.HighsModelStatus.kInfeasible)
        for start in (basis, None):  # (a parent's basis can stall the simplex: then afresh)
            hs.passModel(lp)
            if start is not None:
                hs.setBasis(start)
            hs.run()
            status = hs.getModelStatus()
            if status in done:
                break
        if status == highspy.HighsModelStatus.kInfeasible:
            return None, None
        if status != highspy.HighsModelStatus.kOptimal:
            raise ArithmeticError(f"a linear program ended with {hs.modelStatusToString(status)}")
        return np.asarray(hs.getSolution().col_value), hs.getBasis()

    def _undecided(self, i: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Values whose interval holds a breakpoint strictly inside."""
        bp = self.graph[i].bp
        with np.errstate(invalid="ignore"):
            return ((bp > lo[:, None]) & (bp < hi[:, None])).any(1)

    def _split(self, bounds, sol):
        """The value to cut: (op, value, breakpoint), or None when the solution is on every
        activation's graph."""
        best, where = GRAPH, None
        for i in self.acts:
            lo, hi = bounds[i]
            und = np.flatnonzero(self._undecided(i, lo, hi))
            if und.size == 0:
                continue
            z, h = sol[self.inp[i][und]], sol[self.out[i][und]]
            off = np.abs(h - self.graph[i].f(z)) * (1 + self.weight[i][und])
            j = int(np.argmax(off))
            if off[j] > best:
                best, where = off[j], (i, und[j], z[j])
        if where is None:
            return None
        i, j, zj = where
        bp = self.graph[i].bp[j]
        lo, hi = bounds[i][0][j], bounds[i][1][j]
        inside = bp[(bp > lo) & (bp < hi)]
        return i, j, float(inside[np.argmin(np.abs(inside - zj))])

    # -- the search --------------------------------------------------------------------------
    def run(self, time_limit: float) -> SearchOutcome:
        """Depth first until no node is left (infeasible), a witness, or ``time_limit``
        seconds; a later call goes on from where this one stopped (its counts include both)."""
        t0 = time.perf_counter()
        if self._stack is None:
            self._stack = [({}, None)]
        stack = self._stack

        def outcome(status, x=None):
            self.seconds += time.perf_counter() - t0
            return SearchOutcome(status, x, self.nodes, self.seconds)

        while stack:
            if time.perf_counter() - t0 > time_limit:
                return outcome("unknown (time limit)")
            split, basis = stack.pop()
            bounds = self.propagate(split)
            if bounds is None:
                continue
            self.nodes += 1
            sol, basis = self.relaxation(bounds, basis)
            if sol is None:
                continue
            cut = self._split(bounds, sol)
            if cut is None:  # every activation on its graph: an input meeting the conditions
                stack.append((split, basis))  # (a later call starts here again)
                return outcome("feasible", sol[: self.n].copy())
            i, j, at = cut
            children = []
            for side in (0, 1):  # 0: below the breakpoint
                child = {k: (lo.copy(), hi.copy()) for k, (lo, hi) in bounds.items()}
                child[i][1 - side][j] = at
                children.append((child, basis))
            z = sol[self.inp[i][j]]
            first = 0 if z <= at else 1  # explored first: the side holding the solution
            stack.append(children[1 - first])
            stack.append(children[first])
        return outcome("infeasible")


__all__ = ["SearchOutcome", "Search", "applies"]
