"""The backward pass on an invertible chain: every free choice made jointly, for the whole batch.

A chain is the graph's first block when it holds only dense affine maps (Gemm, MatMul, Add,
BatchNormalization, reshapes...), smooth elementwise activations (SELU, LeakyReLU, Tanh,
Sigmoid, ...), and, at the very top, rules such as Softmax whose preimage of a point is an affine
family ``{v0 + V u}`` (``log p + c·1``). Consecutive affine steps are composed into one matrix
once per run and shared by every sample.

Greedy collapsing chooses one layer's free coefficients at a time, without knowing whether the
layers below can still produce the value, and fails inside a box. Here all of them (the Softmax
constant and every layer's null-space coefficients) are chosen together, in the coordinates
where the constraints are simplest: a point ``x`` of the input box determines every
intermediate value (each automatically inside the next inverse's domain) and the top value; what
remains is the top value's distance from the requested family, ``r(x) = Qᵀ(z(x) − v0)`` with
``Q`` spanning the directions the family does not leave free. It is driven to zero by a batched
interior Newton iteration:

* the chain's Jacobian ``J = M_L D_{L−1} M_{L−1} ⋯ D_1 M_1`` is built by one backward sweep of
  matrix products over the batch (``D`` are the activations' slopes), with only as many rows
  as the top has equations;
* the step is the minimum-norm solution of ``Qᵀ J dx = −r`` in the metric of the box (affine
  scaling: a coordinate close to a bound moves little), ``dx = −W Jᵀ(J W Jᵀ + μI)⁻¹ r``, then
  cut to stay strictly inside the box and halved until ``|r|`` decreases;
* each sample starts from its own anchor (a uniform random point of the box; without bounds
  the particular solution plus a random vector of relative size ``--null-scale``), so samples differ
  and the steps only move them as far as the target requires.

* the box is handled by one of two strategies, affine scaling (stay strictly inside) or
  projection: the step is the damped least-squares step restricted to the box, solved in its
  q-dimensional dual by semismooth Newton (:func:`box_step`), so the linearisation still
  holds where pixels sit on a bound (with loose classes, the older active set: coordinates on
  a bound that the step pushes outwards are frozen, the trial point clipped). Which one
  reaches more samples for its work depends on the net and the target (a real digit's
  preimages have pixels on the bounds; deep nets favour staying inside), so each run tries
  both on a few samples, starts every batch with the one that reached more per counted
  multiply-add (never per second: the same seed gives the same samples on a busy machine),
  and gives leftovers to the other.
* the per-sample Jacobian sweep runs in single precision (most of a step's cost); residuals
  and acceptance are float64. On smooth chains the first steps use one Jacobian for the whole
  batch, at its mean slopes (:meth:`ChainSolver.shared_jacobian`): from random anchors the
  slopes differ little between samples, so those steps converge linearly at a fraction of the
  cost, and each sample gets its own Jacobian once they stop cutting ``|r|`` by
  ``SHARED_RATE`` or it nears round-off.

Newton converges quadratically, so a sample is accepted when ``|r|`` is at round-off level
(``ROUNDOFF``): the request is met exactly, not to a tolerance; or, for targets with
probabilities so near 0 that the logits the box reaches cannot match them exactly, once the
user's check holds with half its tolerance to spare and ``|r|`` has stopped falling fast.

A distribution's classes far below the tolerance (``p_k < t/(4k)``, a saturated output's
1e-12) are *loose*, as :class:`~onnxinv.objective.TopRegion` defines them: any logit that
keeps them under that floor passes the check, and matching ``log p_k`` exactly may ask for a
logit difference the box cannot produce. With loose classes, the rows of ``r`` are the logit
differences against the likeliest class: equalities for the others, and for a loose class the
hinge ``max(0, z_k − z_ref − cap_k)``; each step is the shortest whose linearisation keeps
the loose classes under their caps (:func:`_step`). ``|r|`` at round-off then means that the
equalities hold and every loose class is under its cap. Without loose classes the equations
and steps are the ones above, unchanged.

There is no per-sample Python loop: every operation is a matrix product or a batched solve.
"""

from __future__ import annotations

import time

import numpy as np

from ...partition.chain import Activation, Affine, Select
from ...rules.base import AffineRule, Family
from ...rules.linalg import null_basis
from ..starts import near_prior

ROUNDOFF = 1e-10  # |r| relative to the top value's scale at which a sample is exact
MAX_ITER = 60  # Newton iterations per attempt
LAMBDA_MIN = 1e-10  # smallest Levenberg damping (relative to J W Jᵀ's mean diagonal)
BOUNDARY = 0.995  # with affine scaling, the fraction of the way to the box a step may go
LAMBDA_MAX = 1e10  # largest damping: the step is then a tiny gradient step
TRIES = 14  # damping increases (×10) per iteration before a sample counts as stuck
STALL = 30  # iterations over which |r| must fall by STALL_FACTOR
STALL_FACTOR = 0.9
SLOW = 0.1  # |r| falling by less than this factor in a step: Newton is past its fast phase
ACTIVE_ROUNDS = 10  # active-set rounds of a step with loose rows (see _step)
BOX_ROUNDS = 12  # semismooth Newton rounds of a step inside the box (see box_step)
BOX_WORK_ROUNDS = 3  # rounds a box step is counted as in an attempt's work (typical: 2-4)
TRIAL = 16  # samples each box strategy is tried on before the cheaper one goes first
JACOBIAN_DTYPE = np.float32  # per-sample Jacobian rows (see ChainSolver.jacobian)
SHARED_RATE = 0.3  # the batch-shared Jacobian's steps go on while they cut |r| at least this much
SHARED_UNTIL = 1e-6  # ... and until the median |r| (relative) is this small
#: Entries of :func:`column_outers` (columns × rows²) at most: past this the per-column outer
#: products of a shared Jacobian cost more memory than the per-sample products they replace
#: (a patch embedding with a class token: 784 columns × 1088² rows is 7 GB per sample).
OUTERS_LIMIT = 2**24


def _scatter(g: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """(b, k, n): each column j of ``g`` (b, k, m) added at input ``idx[:, j]`` of its sample
    (windows may overlap, so several outputs can select one input)."""
    b, k, m = g.shape
    out = np.zeros((b * k, n), dtype=g.dtype)
    rows = np.repeat(np.arange(b * k), m)
    cols = np.repeat(idx, k, axis=0).ravel()
    np.add.at(out, (rows, cols), g.reshape(-1))
    return out.reshape(b, k, n)


class ChainSolver:
    """Joint choice of every free coefficient of a chain (see the module docstring)."""

    def __init__(
        self,
        ops: list,
        top: list,
        n: int,
        bounds,
        settings,
        deadline=None,
        check=None,
        tol=0.0,
        region=None,
    ):
        self.ops, self.top, self.n = ops, top, n
        # Single-precision copies of the affine maps, for the Jacobian sweep (see jacobian).
        self._low = [op.M.astype(JACOBIAN_DTYPE) if isinstance(op, Affine) else None for op in ops]
        self.bounds, self.settings, self.deadline = bounds, settings, deadline
        # check(z) -> per-sample error of top values in the user's check space, and the level
        # (half the tolerance) at which a sample is accepted before round-off exactness.
        self.check, self.tol = check, tol
        # region: the target's TopRegion (logit differences on the output's values) when some
        # classes are loose; their equations become inequalities (see _loose_rows).
        self._loose = self._loose_rows(region)

        self._particular: np.ndarray | None = None
        # Multiply-adds of one sample's pass through the chain's matrices (the work unit).
        self._flops = float(sum(op.M.size for op in ops if isinstance(op, Affine)))
        # Smooth activations only (no ReLU kinks, no max pools' selections): where slopes
        # averaged over a batch give a Jacobian close to each sample's.
        self._smooth = all(
            isinstance(op, Affine)
            or (isinstance(op, Activation) and op.rule.smooth_inverse() is not None)
            for op in ops
        )
        # Per box strategy (True: affine scaling, False: active set), on fresh anchors:
        # [samples reached, samples tried, work] (see :meth:`_attempt` for the work's units).
        self._record = {True: np.zeros(3), False: np.zeros(3)}
        self._reached = {True: np.zeros(2), False: np.zeros(2)}  # every attempt: [reached, tried]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Top values (B, m) and the activations' slopes at ``x`` (B, n), from the input up."""
        h, slopes = x, []
        for op in self.ops:
            if isinstance(op, Affine):
                h = h @ op.M.T + op.c
                continue
            with np.errstate(all="ignore"):
                if isinstance(op, Select):
                    h, slope = op.rule.forward_with_selection(h)  # (the selected indices)
                else:
                    h, slope = op.rule.forward_with_slope(h)
            slopes.append(slope)
        return h, slopes

    def jacobian(self, slopes: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``rows @ dz/dx`` (B, k, n) by one backward sweep; ``rows`` (k, m) acts on the top.

        Products with a layer's matrix are one matrix product over the whole batch (the batch
        and the rows flattened together), not one per sample. Once the rows differ per sample
        they are carried in single precision (``JACOBIAN_DTYPE``): the sweep is most of a
        Newton step's cost, and a step from a Jacobian good to 1e-7 still converges (the
        residual itself is always float64, and a sample is accepted on it).
        """
        b = len(slopes[0]) if slopes else 1
        g = None  # (b, k, width), once a slope has made the rows differ per sample
        d = len(slopes)
        for op, low in zip(reversed(self.ops), reversed(self._low), strict=True):
            if isinstance(op, Affine):
                if g is None:
                    rows = rows @ op.M
                else:
                    g = (g.reshape(-1, g.shape[2]) @ low).reshape(b, len(rows), -1)
            elif isinstance(op, Select):
                d -= 1
                g = np.broadcast_to(rows, (b, *rows.shape)) if g is None else g
                g = _scatter(g, slopes[d], op.n_in)
            else:
                d -= 1
                slope = slopes[d][:, None, :].astype(JACOBIAN_DTYPE)
                g = (rows.astype(JACOBIAN_DTYPE) if g is None else g) * slope
        return np.broadcast_to(rows, (b, *rows.shape)) if g is None else g

    def shared_jacobian(self, slopes: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """One Jacobian (1, k, n) for the whole batch, at its mean slopes.

        From random anchors in a box the activations' slopes differ little between samples,
        so Newton steps with this one matrix converge (linearly) as far as per-sample ones,
        at a fraction of the cost: the sweep is done once, and the box step's ``J W Jᵀ`` for
        every sample is one matrix product.
        """
        return self.jacobian([s_.mean(0, keepdims=True) for s_ in slopes], rows)

    def _loose_rows(self, region) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The region's rows on the top values: (D (q, m), slack (q,), loose (q,)), or None.

        ``D z`` are logit differences against the likeliest class; a loose row (a probability
        far below the tolerance, :meth:`~onnxinv.objective.TopRegion.for_objective`) only
        needs ``D z − D v0 ≤ slack`` (its cap), the others stay equalities. None when no class
        is loose, or the top is not one softmax followed by rearrangements of its values.
        """
        if region is None or region.loose is None or not region.loose.any():
            return None
        if sum(s.rule.top_only for s in self.top) > 1:
            return None
        D = region.D
        for step in reversed(self.top[1:]):  # (a final reshape: a permutation of the values)
            D = D @ step.rule.dense()[0]
        slack = np.where(region.loose, region.cap - region.want, 0.0)
        return np.ascontiguousarray(D), slack, region.loose.copy()

    def _equations(self, V: np.ndarray, m: int) -> tuple[np.ndarray, tuple | None]:
        """Columns ``Q`` (m, q) with ``r = Qᵀ(z − v0)``, and (slack, loose) for loose rows.

        Without loose classes ``Q`` spans the complement of the family's free directions. With
        them, ``Q``'s columns are the logit differences, which the family's free direction (the
        softmax constant) leaves unchanged.
        """
        if self._loose is not None:
            D, slack, loose = self._loose
            if D.shape[1] == m and np.abs(D @ V).max(initial=0.0) <= 1e-9:
                return D.T, (slack, loose)
        return _complement(V, m), None

    def top_family(self, fam: Family, rng, std: float) -> Family:
        """The request pulled through the top-only rules (Softmax: ``log p + c·1``)."""
        for step in reversed(self.top):
            if isinstance(step.rule, AffineRule):
                fam = step.rule.pullback(fam, self.settings.max_condition)
                continue
            if fam.free:
                raise ValueError("a top rule received a family, not a point")
            fam = step.rule.sample_preimage(fam.v0, rng, std)
        return fam

    # -- the batch ---------------------------------------------------------------------------
    def solve(self, fam: Family, rng) -> tuple[np.ndarray, np.ndarray]:
        """One input per row of ``fam`` (the request at the chain's top): (x, exact flags)."""
        s = self.settings
        fam = self.top_family(fam, rng, s.null_scale)
        if self.bounds is None and self._particular is None:
            # The particular solution: Newton from the zero input (minimum-norm steps).
            x0, ok0, _ = self._attempt(Family(fam.v0[:1], fam.V), np.zeros((1, self.n)))
            if ok0[0]:
                self._particular = x0[0]
        b = len(fam.v0)
        x = np.empty((b, self.n))
        done = np.zeros(b, dtype=bool)
        prefer = self.preferred()
        for attempt in range(1 + s.restarts):
            todo = np.flatnonzero(~done)
            if todo.size == 0 or self._expired() or (attempt >= 2 and not done.any()):
                break  # (after both box strategies reached nothing, more anchors will not)
            anchors = self._anchors(len(todo), rng)
            trial = attempt == 0 and prefer is None and len(todo) >= 2 * TRIAL
            if trial:
                # Neither strategy has a record yet: each is tried on TRIAL samples, and the
                # rest of the batch goes to the one that reached more per unit of work.
                t = 2 * TRIAL
                parts = [(todo[:TRIAL], anchors[:TRIAL], True),
                         (todo[TRIAL:t], anchors[TRIAL:t], False), (todo[t:], anchors[t:], None)]  # fmt: skip
            else:
                scaled = (prefer is not False) == (attempt % 2 == 0)
                if self._useless(scaled) and not self._useless(not scaled):
                    scaled = not scaled  # (a strategy that never reached a sample rescues none)
                parts = [(todo, anchors, scaled)]
            for rows, start, scaled in parts:
                if scaled is None:
                    scaled = prefer = self.preferred()
                if rows.size == 0:
                    continue
                xt, ok, work = self._attempt(Family(fam.v0[rows], fam.V), start, scaled)
                if trial and self.bounds is not None:
                    self.record_trial(scaled, ok.sum(), len(ok), work)
                self._reached[scaled] += (ok.sum(), len(ok))
                keep = ok | (attempt == 0)
                x[rows[keep]] = xt[keep]
                done[rows] |= ok
            prefer = self.preferred() if prefer is None else prefer
        return x, done

    def record_trial(self, scaled: bool, reached: int, tried: int, work: float) -> None:
        """Add a box strategy's trial on fresh anchors: samples reached and tried, and the work
        it took (multiply-adds, counted by :meth:`_attempt`)."""
        self._record[scaled] += (reached, tried, work)

    def _useless(self, scaled: bool) -> bool:
        """Whether a box strategy has been tried on enough samples and reached none of them."""
        ok, tried = self._reached[scaled]
        return self.bounds is not None and ok == 0 and tried >= 2 * TRIAL

    def preferred(self) -> bool | None:
        """The box strategy to start with (True: affine scaling), None until both have a record.

        Which one reaches more samples for its work depends on the network and the target (on
        the 6-layer digits net, affine scaling reaches almost every uniform-target sample and
        almost none of a real digit's, whose pixels sit on the bounds; the active set the
        reverse), so each run tries both on fresh anchors and starts with the one that reached
        more samples per unit of work. Work is counted, not timed, so that the choice, and with
        it every sample, depends on the seed alone (a clock measures whatever else the machine
        is doing too).
        """
        if self.bounds is None:
            return True
        ok_s, n_s, w_s = self._record[True]
        ok_a, n_a, w_a = self._record[False]
        if n_s < TRIAL or n_a < TRIAL:
            return True if n_a >= TRIAL else (False if n_s >= TRIAL else None)
        return bool(ok_s / max(w_s, 1e-9) > ok_a / max(w_a, 1e-9))  # ties: the active set

    def _anchors(self, k: int, rng) -> np.ndarray:
        prior = self.settings.prior
        if prior is not None and prior.size == self.n:
            # Newton's minimum-norm steps from next to the prior end near its projection.
            return near_prior(prior, k, rng, self.bounds)
        if self.bounds is not None:
            return rng.uniform(self.bounds[0], self.bounds[1], size=(k, self.n))
        if self._particular is None:
            return rng.normal(0.0, self.settings.init_std, size=(k, self.n))
        p = self._particular
        g = rng.standard_normal((k, self.n))
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
        top = float(np.abs(p).max())
        size = top * float(np.linalg.norm(p / top)) if top > 0 else 0.0  # no overflow
        return p + self.settings.null_scale * max(size, 1e-12) * g

    def _attempt(
        self, fam: Family, x: np.ndarray, scaled: bool = False
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Newton from ``x`` towards the family; (x, exact flags, work).

        ``scaled``: box handled by affine scaling instead of an active set (restarts alternate
        between the two: each rescues samples the other leaves stuck). ``work`` counts the
        multiply-adds of the passes through the chain (forward and Jacobian sweeps), of the
        ``J W Jᵀ`` products and of the box steps: what the time of an attempt is made of, as a
        number that does not depend on the machine's load.
        """
        m = fam.v0.shape[1]
        Q, hinge = self._equations(fam.V, m)  # (m, q): the equations the family fixes
        x = x.copy()
        z, slopes = self.forward(x)
        n, q = self.n, Q.shape[1]
        work = len(x) * self._flops
        r = _residual(z, fam.v0, Q, hinge)
        scale = 1.0 + np.abs(fam.v0).max(1)  # |r| is measured relative to it (no overflow)
        norm = np.linalg.norm(_violation(r, hinge) / scale[:, None], axis=1)
        exact = self._accepted(norm, z)
        lo, hi = self.bounds if self.bounds is not None else (None, None)
        alive = np.isfinite(norm)
        history = [norm.copy()]
        lam = np.full(len(x), LAMBDA_MIN)  # Levenberg damping, per sample, relative
        # First steps: one Jacobian for the batch, at its mean slopes (see SHARED_RATE).
        shared = self._smooth and bool(slopes) and len(x) >= TRIAL
        for it in range(MAX_ITER):
            idx = np.flatnonzero(~exact & alive)
            if idx.size == 0 or self._expired():
                break
            xa = x[idx]
            if shared:
                J = self.shared_jacobian([s_[idx] for s_ in slopes], Q.T)
                before = float(np.median(norm[idx]))
                work += q * self._flops
            else:
                J = self.jacobian([s_[idx] for s_ in slopes], Q.T)  # (k, q, n)
                work += len(idx) * q * self._flops
            w = np.ones_like(xa)
            projected = lo is not None and not scaled and hinge is None
            if lo is not None and scaled:
                # Affine scaling: a coordinate close to a bound moves little.
                w = np.minimum(xa - lo, hi - xa) ** 2
            elif lo is not None and not projected:
                # Active set: a coordinate on a bound that the descent direction pushes
                # outwards is frozen; the others move, and the trial point is projected.
                g = _times_t(J, _violation(r[idx], hinge))
                w[((xa <= lo) & (g > 0)) | ((xa >= hi) & (g < 0))] = 0.0
            virtual = len(J) == 1 and not (projected or lo is None) and outers_fit(J)
            if virtual:
                # One J for all, per-sample W: J W Jᵀ for every W in one product, and
                # W Jᵀ y below as W (Jᵀ y); the (k, q, n) stack J W is never formed.
                Jw, A = J, _weighted_gram(w, _column_outers(J[0]))
            else:
                Jw = J if projected or lo is None else J * w[:, None, :].astype(J.dtype)
                A = (Jw @ J.transpose(0, 2, 1)).astype(np.float64)
            work += len(idx) * q * q * n
            diag = np.trace(A, axis1=1, axis2=2) / Q.shape[1] + 1e-300
            diag = np.broadcast_to(diag, len(idx))  # (one A for all when the batch shares J)
            eye = np.eye(Q.shape[1])
            better = np.zeros(len(idx), dtype=bool)
            todo = np.flatnonzero(diag > 1e-200)  # no coordinate free to move: stuck
            for _try in range(
                TRIES if todo.size else 0
            ):  # raise each sample's damping until |r| decreases
                k = idx[todo]
                # (J, Jw and A may be one matrix shared by the batch: a linear chain)
                whole = len(todo) == len(idx)
                Jt, Jwt, At = (a if len(a) == 1 or whole else a[todo] for a in (J, Jw, A))
                if projected:
                    # The step solves the linearisation inside the box, not clipped after.
                    dx = box_step(Jt, At, r[k], xa[todo], lo, hi, lam[k] * diag[todo])
                    work += len(todo) * q * n * (q + 2 * BOX_WORK_ROUNDS)
                else:
                    damped = At + (lam[k] * diag[todo])[:, None, None] * eye
                    y = _step(damped, r[k], hinge)
                    dx = _times_t(Jwt, y[:, :, 0])
                    if virtual:
                        dx = dx * w[todo]
                if lo is not None and scaled:
                    # Fraction to the boundary: the point stays strictly inside the box.
                    xt_ = xa[todo]
                    with np.errstate(divide="ignore", invalid="ignore"):
                        room = np.where(dx < 0, (xt_ - lo) / -dx,
                                        np.where(dx > 0, (hi - xt_) / dx, np.inf))  # fmt: skip
                    dx = dx * np.minimum(1.0, BOUNDARY * room.min(1))[:, None]
                trial = xa[todo] + dx
                if lo is not None:
                    trial = np.clip(trial, lo, hi)
                zt, st = self.forward(trial)
                work += len(trial) * self._flops
                rt = _residual(zt, fam.v0[k], Q, hinge)
                nt = np.linalg.norm(_violation(rt, hinge) / scale[k, None], axis=1)
                now = nt < norm[k]
                rows = k[now]
                x[rows], z[rows], r[rows], norm[rows] = trial[now], zt[now], rt[now], nt[now]
                for level, s_ in enumerate(st):
                    slopes[level][rows] = s_[now]
                lam[rows] = np.maximum(lam[rows] / 3, LAMBDA_MIN)
                lam[k[~now]] = np.minimum(lam[k[~now]] * 10, LAMBDA_MAX)
                better[todo[now]] = True
                todo = todo[~now]
                if todo.size == 0:
                    break
            # Inside the check (with half its tolerance to spare) and no longer converging
            # quadratically: more steps would not change what the check sees (a target with
            # probabilities near 0 is far in logit space from what the box reaches exactly).
            slow = norm > SLOW * history[-1]
            exact |= self._accepted(norm, z) | (slow & self._close_enough(z))
            if shared:
                # The shared Jacobian's steps converge linearly; once they stop paying
                # (a sample no step helped, the batch's residual falling slower than
                # SHARED_RATE, or near round-off) each sample gets its own.
                after = float(np.median(norm[idx]))
                shared = better.all() and after < SHARED_RATE * before and after > SHARED_UNTIL
            else:
                alive[idx[~better]] = False  # no step of any length helped: a dead end
            history.append(norm.copy())
            if it >= STALL:
                # Newton converges fast; |r| barely falling over STALL steps is a stall (a
                # target outside what the box reaches, or a dead end): give up; a restart may
                # help.
                alive &= norm < STALL_FACTOR * history[-1 - STALL]
        return x, exact | self._close_enough(z), work

    def _accepted(self, norm: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Exact at round-off (and, where the user's check is known, inside its tolerance)."""
        ok = norm <= ROUNDOFF
        if self.check is not None:
            with np.errstate(all="ignore"):
                ok &= self.check(z) <= 2 * self.tol
        return ok

    def _close_enough(self, z: np.ndarray) -> np.ndarray:
        """Within half the check's tolerance: accepted when no step gets closer to exact."""
        if self.check is None:
            return np.zeros(len(z), dtype=bool)
        with np.errstate(all="ignore"):
            return self.check(z) <= self.tol

    def _expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _residual(z: np.ndarray, v0: np.ndarray, Q: np.ndarray, hinge) -> np.ndarray:
    """``Qᵀ(z − v0)`` per sample; with ``hinge`` (slack, loose), a loose row less its slack:
    the row is met when this is at most 0 (see :func:`_violation`)."""
    r = (z - v0) @ Q
    if hinge is not None:
        r = r - hinge[0]
    return r


def _violation(r: np.ndarray, hinge) -> np.ndarray:
    """The part of ``r`` that is unmet: a loose row only by how far it exceeds 0."""
    if hinge is None:
        return r
    return np.where(hinge[1], np.maximum(r, 0.0), r)


def _step(damped: np.ndarray, r: np.ndarray, hinge) -> np.ndarray:
    """``y`` (b, q, 1) of the step ``dx = W Jᵀ y``, from ``damped = J W Jᵀ + μI`` (b, q, q).

    Equations only: ``damped y = −r``. With loose rows (``hinge``), the step is the shortest
    one (in the same metric, with the same damping) whose linearisation meets the equations
    and keeps every loose row at most 0: treating the unmet loose rows as equations instead
    would pin each such logit exactly at its cap, a point the box may not reach even where
    lower logits are easy. Found by a primal-dual active set iteration on the rows, all
    samples at once: a loose row is held (``y_i < 0``) while it would exceed 0, released
    (``y_i = 0``) when holding it would pull it upwards.
    """
    if hinge is None:
        return np.linalg.solve(damped, -r[:, :, None])
    loose = hinge[1][None]
    held = ~loose | (r > 0)
    eye = np.eye(r.shape[1])
    for _ in range(ACTIVE_ROUNDS):
        M = np.where(held[:, :, None] & held[:, None, :], damped, eye)
        y = np.linalg.solve(M, np.where(held, -r, 0.0)[:, :, None])
        predicted = (damped @ y)[:, :, 0] + r  # each row after the step (0 where held)
        now = ~loose | np.where(held, y[:, :, 0] < 0, predicted > 0)
        if (now == held).all():
            break
        held = now
    return y


def box_step(J, A, r, x, lo, hi, mu) -> np.ndarray:
    """The damped Gauss–Newton step that stays in the box, for every sample at once.

    ``dx`` minimises ``½|dx|² + |J dx + r|²/(2μ)`` subject to ``lo ≤ x + dx ≤ hi``. Its dual
    is a ``q``-dimensional equation, ``F(y) = J clip(Jᵀy) + r + μy = 0`` (the clip to the
    box's room ``[lo − x, hi − x]``), piecewise linear and monotone: semismooth Newton on
    ``y`` (``(J W Jᵀ + μI) δ = −F``, ``W`` the coordinates the clip leaves free) ends when the
    free set stops changing, and then ``F = 0`` exactly. Clipping an unconstrained step
    instead breaks the linearisation wherever a coordinate meets a bound; this step keeps it,
    so the outer Newton iteration keeps its pace at the box's faces. ``A = J Jᵀ``; ``J`` and
    ``A`` may be one matrix shared by the batch (a linear chain). ``J W Jᵀ`` is kept up to
    date by the few coordinates whose state changes in a round, not recomputed.
    """
    a, b = lo - x, hi - x
    q = J.shape[1]
    damp = mu[:, None, None] * np.eye(q)
    y = np.linalg.solve(A + damp, -r[:, :, None])[:, :, 0]  # the step without the box
    u = _times_t(J, y)
    free = (u > a) & (u < b)
    if free.all():
        return u
    # One Jacobian shared by the batch (a linear chain): J W Jᵀ for every W in one product.
    shared = _column_outers(J[0]) if len(J) == 1 and outers_fit(J) else None
    if shared is not None:
        H = _weighted_gram(free, shared)
    else:
        H = ((J * free[:, None, :]) @ J.transpose(0, 2, 1)).astype(np.float64)
    for _ in range(BOX_ROUNDS):
        dx = np.clip(u, a, b)
        F = _times(J, dx) + r + mu[:, None] * y
        y -= np.linalg.solve(H + damp, F[:, :, None])[:, :, 0]
        u = _times_t(J, y)
        now = (u > a) & (u < b)
        if (now == free).all():
            break
        if shared is not None:
            H = _weighted_gram(now, shared)
        else:
            H = H + _outer_sum(J, now != free, now)  # (+ freed, − newly clipped)
        free = now
    return np.clip(u, a, b)


def outers_fit(J: np.ndarray) -> bool:
    """Whether :func:`_column_outers` of the (1, q, n) Jacobian ``J`` stays within
    :data:`OUTERS_LIMIT` entries (else J W Jᵀ is formed per sample)."""
    _, q, n = J.shape
    return n * q * q <= OUTERS_LIMIT


def _column_outers(J: np.ndarray) -> np.ndarray:
    """(n, q, q): ``J[:, j] J[:, j]ᵀ`` for each column ``j`` of one (q, n) Jacobian."""
    return np.ascontiguousarray((J[:, None, :] * J[None]).transpose(2, 0, 1))


def _weighted_gram(w: np.ndarray, outers: np.ndarray) -> np.ndarray:
    """``J W Jᵀ`` (b, q, q) for each row of weights ``w`` (b, n), the one shared J given by
    its :func:`_column_outers`: one matrix product for the whole batch."""
    flat = w @ outers.reshape(len(outers), -1)
    return flat.reshape(len(w), *outers.shape[1:]).astype(np.float64, copy=False)


def _outer_sum(J: np.ndarray, mask: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """``Σ ±J[:, j] J[:, j]ᵀ`` over each sample's coordinates ``j`` in ``mask`` (+ where
    ``sign``): (b, q, q).

    A gather of the few masked columns, not a pass over every column of every sample's
    Jacobian.
    """
    b, q = len(mask), J.shape[1]
    rows, cols = np.nonzero(mask)  # (row-major: grouped by sample)
    out = np.zeros((b, q, q))
    if rows.size == 0:
        return out
    C = J[rows if len(J) > 1 else 0, :, cols].astype(np.float64)  # (m, q); J may be shared
    S = np.where(sign[rows, cols], 1.0, -1.0)[:, None] * C
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    out[rows[starts]] = np.add.reduceat(S[:, :, None] * C[:, None, :], starts, axis=0)
    return out


def _times(J: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``J v`` per sample: (b, q) from (b or 1, q, n) and (b, n)."""
    v = v.astype(J.dtype, copy=False)
    out = v @ J[0].T if len(J) == 1 else (J @ v[:, :, None])[:, :, 0]
    return out.astype(np.float64, copy=False)


def _times_t(J: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``Jᵀ y`` per sample: (b, n) from (b or 1, q, n) and (b, q)."""
    y = y.astype(J.dtype, copy=False)
    out = y @ J[0] if len(J) == 1 else (y[:, None, :] @ J)[:, 0]
    return out.astype(np.float64, copy=False)


def _complement(V: np.ndarray, m: int) -> np.ndarray:
    """Orthonormal columns spanning the complement of ``V``'s columns in R^m."""
    return np.eye(m) if V.shape[1] == 0 else null_basis(V.T)
