"""A piecewise-linear chain over an input box, written as one mixed-integer linear program.

Variables: the input ``x`` (inside the box), every affine map's output and every activation's
output. An affine map ``z = M h + c`` is a set of equality rows. A piecewise-linear activation
(:meth:`~onnxinv.rules.base.PointRule.breakpoints`) is written per value with the standard
disjunctive (convex-hull) formulation: for each linear piece ``s`` the value's interval meets,
a binary ``d_s`` and a copy ``z_s`` with ``lo_s d_s ≤ z_s ≤ hi_s d_s``, ``Σ d_s = 1``,
``z = Σ z_s`` and ``h = Σ (a_s z_s + b_s d_s)``; a value whose interval meets one piece is
a plain equality (no binary). A max pool's output is at least every entry of its window and at
most the one a binary picks (big-M from the entries' bounds, ``Σ d = 1``). The bounds come
from interval arithmetic from the box, widened by :data:`SLACK`; they are sound, so an
infeasible program proves that no input in the box reaches the top constraints.

The top constraints (:class:`~onnxinv.objective.TopRegion`) restrict the last affine map's output to what any
output within the user's tolerance satisfies (necessary conditions: so an infeasible program
is a proof; a feasible one gives a pattern, on which :mod:`.polytope` then asks for the exact
request). scipy's ``milp`` (HiGHS branch and cut) solves it.
"""

from __future__ import annotations

import numpy as np

from ...objective import TopRegion
from ...partition.bounds import centre_spread, widen
from ...partition.chain import Affine, Select

SLACK = 1e-6  # relative widening of every propagated bound (far above float64 rounding)


def pieces(rule, n: int):
    """Per linear piece of ``rule`` on each of ``n`` flat values: (left, right, slope, intercept),
    each (S, n); a piece that does not exist for a value has ``left = right = +inf``."""
    bp = np.asarray(rule.breakpoints(), dtype=np.float64)
    B = np.broadcast_to(bp if bp.ndim == 2 else bp[None, :], (n, bp.shape[-1]))
    B = np.sort(np.where(np.isnan(B), np.inf, B), axis=1)
    k = B.shape[1]
    left = np.concatenate([np.full((1, n), -np.inf), B.T])
    right = np.concatenate([B.T, np.full((1, n), np.inf)])
    right = np.where(left == np.inf, np.inf, right)  # (a piece past a value's last breakpoint)
    p = np.where(np.isfinite(left), left, np.where(np.isfinite(right), right - 1.0, 0.0))
    q = np.where(np.isfinite(right), right, p + 1.0)
    p = np.where(q > p, p, q - 1.0)
    with np.errstate(all="ignore"):
        fp = np.stack([np.asarray(rule.forward(p[s][None]), float).ravel() for s in range(k + 1)])
        fq = np.stack([np.asarray(rule.forward(q[s][None]), float).ravel() for s in range(k + 1)])
    slope = (fq - fp) / (q - p)
    return left, right, slope, fp - slope * p


class _Rows:
    """Variables and sparse constraint rows, gathered as the chain is written."""

    def __init__(self) -> None:
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.entries: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.lb: list[np.ndarray] = []
        self.ub: list[np.ndarray] = []
        self.n_vars = 0
        self.n_rows = 0

    def variables(self, lo, hi, integer: bool = False) -> np.ndarray:
        lo, hi = np.broadcast_arrays(np.asarray(lo, float), np.asarray(hi, float))
        idx = np.arange(self.n_vars, self.n_vars + lo.size)
        self.n_vars += lo.size
        self.lo.append(lo.ravel().copy())
        self.hi.append(hi.ravel().copy())
        self.integer.append(np.full(lo.size, int(integer)))
        return idx

    def rows(self, r, c, v, lb, ub) -> np.ndarray:
        """Rows ``lb ≤ Σ v x[c] ≤ ub``, entries (r: local row, c: variable, v: coefficient)."""
        r = np.asarray(r)
        count = int(r.max()) + 1 if r.size else 0
        lb = np.broadcast_to(np.asarray(lb, float), (count,))
        ub = np.broadcast_to(np.asarray(ub, float), (count,))
        idx = np.arange(self.n_rows, self.n_rows + count)
        self.entries.append((np.asarray(r) + self.n_rows, np.asarray(c), np.asarray(v, float)))
        self.lb.append(lb.ravel().copy())
        self.ub.append(ub.ravel().copy())
        self.n_rows += lb.size
        return idx


class Program:
    """The chain ``ops`` (affine maps, piecewise-linear activations, max pools) over the box
    ``[lo, hi]^n`` with the top region's rows, ready for :meth:`solve`."""

    def __init__(
        self,
        ops: list,
        n: int,
        bounds: tuple[float, float],
        region: TopRegion,
        known: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self.n, self.region = n, region
        known = known or {}
        self.inputs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.undecided: dict[int, np.ndarray] = {}  # per activation: values on 2+ pieces
        R = _Rows()
        lo, hi = np.full(n, float(bounds[0])), np.full(n, float(bounds[1]))
        cur = R.variables(lo, hi)
        self.x = cur
        self.binaries = 0
        self.unstable = 0
        for i, op in enumerate(ops):
            if i in known:  # tighter bounds of this op's input, found by linear programs
                lo, hi = np.maximum(lo, known[i][0]), np.minimum(hi, known[i][1])
                hi = np.maximum(hi, lo)
            self.inputs[i] = (cur, lo, hi)
            self._at = i
            if isinstance(op, Affine):
                cur, lo, hi = self._affine(R, op, cur, lo, hi)
            elif isinstance(op, Select):
                cur, lo, hi = self._select(R, op.rule.windows(), cur, lo, hi)
            else:
                cur, lo, hi = self._activation(R, op.rule, cur, lo, hi)
        D = region.D
        nz = np.nonzero(D)
        self.top_rows = R.rows(
            nz[0], cur[nz[1]], D[nz], *widen(region.need_lo, region.need_hi, SLACK)
        )
        self.top_lo, self.top_hi = lo, hi  # bounds of the top values
        from scipy.sparse import csr_matrix

        r = np.concatenate([e[0] for e in R.entries])
        c = np.concatenate([e[1] for e in R.entries])
        v = np.concatenate([e[2] for e in R.entries])
        self.A = csr_matrix((v, (r, c)), shape=(R.n_rows, R.n_vars))
        self.lb, self.ub = np.concatenate(R.lb), np.concatenate(R.ub)
        self.var_lo, self.var_hi = np.concatenate(R.lo), np.concatenate(R.hi)
        self.integrality = np.concatenate(R.integer)

    # -- writing the chain ---------------------------------------------------------------------
    @staticmethod
    def _affine(R: _Rows, op: Affine, h, lo, hi):
        M = op.M
        centre, spread = centre_spread(M, op.c, lo, hi)
        zlo, zhi = widen(centre - spread, centre + spread, SLACK)
        z = R.variables(zlo, zhi)
        m = len(z)
        nz = np.nonzero(M)
        R.rows(
            np.concatenate([np.arange(m), nz[0]]),
            np.concatenate([z, h[nz[1]]]),
            np.concatenate([np.ones(m), -M[nz]]),
            op.c,
            op.c,
        )
        return z, zlo, zhi

    def _activation(self, R: _Rows, rule, z, lo, hi):
        n = len(z)
        left, right, slope, icpt = pieces(rule, n)
        seg_lo, seg_hi = np.maximum(lo, left), np.minimum(hi, right)
        on = (seg_lo < seg_hi) | ((lo == hi) & (left <= lo) & (lo <= right))
        vals = np.stack([slope * seg_lo + icpt, slope * seg_hi + icpt])  # (2, S, n)
        vals = np.where(on[None], vals, np.nan)
        hlo, hhi = widen(np.nanmin(vals, axis=(0, 1)), np.nanmax(vals, axis=(0, 1)), SLACK)
        h = R.variables(hlo, hhi)
        count = on.sum(0)
        self.undecided[self._at] = np.flatnonzero(count > 1)
        one = np.flatnonzero(count == 1)
        if one.size:  # h = a z + b on the only piece the value can be on
            s = on[:, one].argmax(0)
            a, b = slope[s, one], icpt[s, one]
            m = len(one)
            R.rows(np.repeat(np.arange(m), 2), np.stack([h[one], z[one]], 1).ravel(),
                   np.stack([np.ones(m), -a], 1).ravel(), b, b)  # fmt: skip
        two = np.flatnonzero(count == 2)
        if two.size:
            self._two_pieces(R, on[:, two], slope[:, two], icpt[:, two], z[two], h[two],
                             lo[two], hi[two])  # fmt: skip
        for i in np.flatnonzero(count > 2):
            S = np.flatnonzero(on[:, i])
            self.unstable += 1
            self.binaries += len(S)
            d = R.variables(np.zeros(len(S)), np.ones(len(S)), integer=True)
            zs = R.variables(np.minimum(seg_lo[S, i], 0), np.maximum(seg_hi[S, i], 0))
            k = len(S)
            R.rows(np.zeros(k), d, np.ones(k), 1.0, 1.0)  # one piece
            R.rows(np.zeros(k + 1), np.concatenate([[z[i]], zs]),
                   np.concatenate([[1.0], -np.ones(k)]), 0.0, 0.0)  # fmt: skip
            # lo_s d_s ≤ z_s ≤ hi_s d_s
            rr = np.repeat(np.arange(k), 2)
            R.rows(rr, np.stack([zs, d], 1).ravel(),
                   np.stack([np.ones(k), -seg_lo[S, i]], 1).ravel(), 0.0, np.inf)  # fmt: skip
            R.rows(rr, np.stack([zs, d], 1).ravel(),
                   np.stack([np.ones(k), -seg_hi[S, i]], 1).ravel(), -np.inf, 0.0)  # fmt: skip
            R.rows(np.zeros(2 * k + 1), np.concatenate([[h[i]], zs, d]),
                   np.concatenate([[1.0], -slope[S, i], -icpt[S, i]]), 0.0, 0.0)  # fmt: skip
        return h, hlo, hhi

    def _two_pieces(self, R: _Rows, on, slope, icpt, z, h, lo, hi) -> None:
        """Values on one of two pieces (ReLU): one binary each, big-M from the bounds.

        Convex (slope rising): ``h ≥`` both lines, ``h ≤`` the binary's line plus the other's
        lead over it on ``[lo, hi]``; concave the mirror image. Its linear relaxation is the
        convex hull's (the triangle, for ReLU) with half the variables.
        """
        m = len(z)
        first = on.argmax(0)
        cols = np.arange(m)
        a0, b0 = slope[first, cols], icpt[first, cols]
        a1, b1 = slope[first + 1, cols], icpt[first + 1, cols]
        gap = lambda a, b, c, e: np.maximum((a - c) * lo + b - e, (a - c) * hi + b - e)  # noqa: E731
        m1_over_0, m0_over_1 = gap(a1, b1, a0, b0), gap(a0, b0, a1, b1)
        convex = a1 >= a0
        sign = np.where(convex, 1.0, -1.0)  # convex: h above both lines; concave: below
        # how far the other line is from the binary's piece where h follows the other one
        m_first = np.where(convex, m1_over_0, m0_over_1)
        m_second = np.where(convex, m0_over_1, m1_over_0)
        self.unstable += m
        self.binaries += m
        d = R.variables(np.zeros(m), np.ones(m), integer=True)  # 1: the first piece
        rr = np.repeat(np.arange(m), 2)
        for a, b in ((a0, b0), (a1, b1)):  # sign·(h − a z − b) ≥ 0
            R.rows(rr, np.stack([h, z], 1).ravel(), (sign[:, None] * np.stack([np.ones(m), -a], 1)).ravel(),
                   sign * b, np.inf)  # fmt: skip
        rr = np.repeat(np.arange(m), 3)
        # sign·(h − a0 z − b0) ≤ M0 (1 − d);  sign·(h − a1 z − b1) ≤ M1 d
        R.rows(rr, np.stack([h, z, d], 1).ravel(),
               np.stack([sign, -sign * a0, m_first], 1).ravel(), -np.inf,
               sign * b0 + m_first)  # fmt: skip
        R.rows(rr, np.stack([h, z, d], 1).ravel(),
               np.stack([sign, -sign * a1, -m_second], 1).ravel(), -np.inf, sign * b1)  # fmt: skip

    def _select(self, R: _Rows, windows: np.ndarray, z, lo, hi):
        m = len(windows)
        hlo, hhi = np.empty(m), np.empty(m)
        cand_of = []
        for j, w in enumerate(windows):
            w = w[w >= 0]
            floor = lo[w].max()
            w = w[hi[w] >= floor]  # entries that can be the maximum
            cand_of.append(w)
            hlo[j], hhi[j] = floor, hi[w].max()
        h = R.variables(hlo, hhi)
        for j, w in enumerate(cand_of):
            k = len(w)
            if k == 1:
                R.rows([0, 0], [h[j], z[w[0]]], [1.0, -1.0], 0.0, 0.0)
                continue
            self.unstable += 1
            self.binaries += k
            d = R.variables(np.zeros(k), np.ones(k), integer=True)
            R.rows(np.zeros(k), d, np.ones(k), 1.0, 1.0)
            rr = np.repeat(np.arange(k), 2)
            R.rows(
                rr,
                np.stack([np.full(k, h[j]), z[w]], 1).ravel(),
                np.tile([1.0, -1.0], k),
                0.0,
                np.inf,
            )  # fmt: skip  (h ≥ every entry)
            big = hhi[j] - lo[w]
            rr = np.repeat(np.arange(k), 3)
            R.rows(
                rr,
                np.stack([np.full(k, h[j]), z[w], d], 1).ravel(),
                np.stack([np.ones(k), -np.ones(k), big], 1).ravel(),
                -np.inf,
                big,
            )  # fmt: skip  (h ≤ the picked entry)
        return h, hlo, hhi

    # -- solving -------------------------------------------------------------------------------
    def solve(self, objective: np.ndarray | None, *, time_limit: float, near=None):
        """scipy ``milp``: ``objective`` (n,) weighs the input (None: feasibility only);
        ``near`` (n,): instead, the input nearest it in L1 (a projection onto the set).

        Returns ``(status, x or None, seconds)``; status is ``"feasible"``, ``"infeasible"`` or
        ``"unknown (...)"`` (time limit or a solver failure, with its message).
        """
        import time

        from scipy.optimize import Bounds, LinearConstraint, milp

        A, lb, ub = self.A, self.lb, self.ub
        lo, hi, integrality = self.var_lo, self.var_hi, self.integrality
        c = np.zeros(len(lo))
        if objective is not None:
            c[self.x] = objective
        if near is not None:  # t ≥ |x − near| per value, minimise Σ t
            from scipy.sparse import bmat, identity

            n = self.n
            pick = identity(len(lo), format="csr")[self.x]
            eye = identity(n, format="csr")
            A = bmat([[A, None], [pick, -eye], [pick, eye]], format="csr")
            lb = np.concatenate([lb, np.full(n, -np.inf), near])
            ub = np.concatenate([ub, near, np.full(n, np.inf)])
            lo, hi = np.concatenate([lo, np.zeros(n)]), np.concatenate([hi, np.full(n, np.inf)])
            integrality = np.concatenate([integrality, np.zeros(n, dtype=integrality.dtype)])
            c = np.concatenate([np.zeros(len(c)), np.ones(n)])
        t = time.perf_counter()
        res = milp(
            c,
            integrality=integrality,
            bounds=Bounds(lo, hi),
            constraints=LinearConstraint(A, lb, ub),
            options={"time_limit": max(float(time_limit), 0.01), "disp": False},
        )
        took = time.perf_counter() - t
        if res.status == 2:
            return "infeasible", None, took
        if res.x is not None and res.status in (0, 1):
            return "feasible", np.asarray(res.x[self.x], dtype=np.float64), took
        return f"unknown ({res.message.strip().rstrip('.')})", None, took


def tightened(ops: list, n: int, bounds, region: TopRegion, budget: float):
    """The program with its activations' input bounds tightened by linear programs.

    Layer by layer from the input, each undecided value's least and largest value under the
    program's linear relaxation (top constraints included) replace its interval bounds, and
    the layers above are written again from them: far fewer branches for the MILP. Stops when
    ``budget`` seconds are spent. Returns ``(program, proven)``: ``proven`` when a relaxation
    is already infeasible (then so is the program).
    """
    import time

    from scipy.optimize import Bounds, LinearConstraint, milp

    stop = time.monotonic() + budget
    known: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    prog = Program(ops, n, bounds, region)
    for i in sorted(prog.undecided):
        if time.monotonic() > stop:
            break
        cur, lo, hi = prog.inputs[i]
        lo, hi = lo.copy(), hi.copy()
        cons = LinearConstraint(prog.A, prog.lb, prog.ub)
        box = Bounds(prog.var_lo, prog.var_hi)
        for j in prog.undecided[i]:
            for sign in (1.0, -1.0):
                c = np.zeros(len(prog.var_lo))
                c[cur[j]] = sign
                res = milp(c, bounds=box, constraints=cons)
                if res.status == 2:
                    return prog, True
                if res.status == 0:
                    v = sign * res.fun
                    v_lo, v_hi = widen(v, v, SLACK)
                    if sign > 0:
                        lo[j] = max(lo[j], v_lo)
                    else:
                        hi[j] = min(hi[j], v_hi)
            if time.monotonic() > stop:
                break
        known[i] = (lo, hi)
        prog = Program(ops, n, bounds, region, known)
    return prog, False
