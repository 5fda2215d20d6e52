"""How a model's output is compared with a target: the solver's residual and the final check.

Solvers never match probabilities directly (softmax saturates). For a class distribution the
residual lives in centred-logit space: ``C(z) - C(log p)``, with ``C`` removing the mean, because
softmax is invariant to adding a constant to the logits. Where the graph ends in Softmax or
LogSoftmax the solver works on the logits tensor below it; where the model outputs
probabilities without such a node, on ``log y``; where it outputs logits, on ``y``.

The *check* is always made on the original model's output, in the space the user asked about:
probabilities for a distribution target, the raw output for a ``values`` target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .load.model import LoadedModel
from .target import Target

TINY = 1e-30


@dataclass(frozen=True)
class Objective:
    """Residual and check for one target on one model.

    Attributes:
        kind: ``"distribution"`` or ``"values"``.
        output_space: what the chosen output holds: ``"probabilities"``, ``"log-probabilities"``,
            ``"logits"`` (distribution targets), ``"sigmoid"`` (values in (0, 1) out of a
            Sigmoid tail) or ``"values"``.
        solve_on: ``"logits"`` to solve on the tensor below a Softmax/LogSoftmax (or Sigmoid) tail,
            ``"output"`` to solve on the chosen output itself.
        target: the target output, one sample's shape (probabilities for distributions).
        residual_target: the target in residual space, flat.
        tolerance: largest absolute difference allowed by the check.
        rows: softmax rows of a ``values`` target solved on logits (a sequence model's
            per-step distributions, :func:`softmax_rows`); 1 otherwise.
    """

    kind: str
    output_space: str
    solve_on: str
    target: np.ndarray
    residual_target: np.ndarray
    tolerance: float
    rows: int = 1

    @property
    def transform(self) -> str:
        """How the solved tensor maps into residual space: identity, centre, centre∘log, or
        row-centre (each softmax row of the logits centred on its own)."""
        if self.kind == "values":
            if self.solve_on != "logits":
                return "identity"
            return "logit" if self.output_space == "sigmoid" else "row-centre"
        if self.solve_on == "output" and self.output_space == "probabilities":
            return "centre-log"
        return "centre"

    @property
    def size(self) -> int:
        return int(self.residual_target.size)

    def residual(self, y, index=None):
        """Residual of solved-tensor values ``y`` (N, ...) as (N, m); numpy or torch.

        ``index`` (which samples the rows are) is ignored: the target is the same for all.
        """
        if self.transform == "row-centre":
            y = y.reshape(y.shape[0], self.rows, -1)
            y = y - (y.mean(2, keepdims=True) if isinstance(y, np.ndarray) else y.mean(2, True))
        y = y.reshape(y.shape[0], -1)
        if self.transform == "centre-log":
            y = _log(y)
        if self.transform in ("centre", "centre-log"):
            y = (
                y - y.mean(1, keepdims=True)
                if isinstance(y, np.ndarray)
                else y - y.mean(1, keepdim=True)
            )
        t = self.residual_target
        if not isinstance(y, np.ndarray):
            import torch

            t = torch.as_tensor(t, dtype=y.dtype, device=y.device)
        return y - t

    def difference_from_residual(self, r):
        """Per-sample difference from the target in check space implied by residuals ``r``.

        Softmax ignores constant shifts, so ``softmax(r + C(log p))`` is the distribution the
        solved tensor stands for (torch, differentiable).
        """
        if self.transform == "identity":
            return r
        import torch

        if self.transform == "logit":
            t = torch.as_tensor(self.residual_target, dtype=r.dtype, device=r.device)
            want = torch.as_tensor(self.target.ravel(), dtype=r.dtype, device=r.device)
            return torch.sigmoid(r + t) - want
        if self.transform == "row-centre":
            t = torch.as_tensor(self.residual_target, dtype=r.dtype, device=r.device)
            z = (r + t).reshape(r.shape[0], self.rows, -1)
            y = torch.softmax(z, 2) if self.output_space == "probabilities" else z.log_softmax(2)
            want = torch.as_tensor(self.target.ravel(), dtype=r.dtype, device=r.device)
            return y.reshape(r.shape[0], -1) - want

        t = torch.as_tensor(self.residual_target, dtype=r.dtype, device=r.device)
        p = torch.as_tensor(self.target.ravel(), dtype=r.dtype, device=r.device)
        return torch.softmax(r + t, dim=1) - p

    def error_from_residual(self, r):
        """Per-sample check-space error implied by residuals ``r`` (N, m); torch.

        Solvers stop on the same quantity the check measures.
        """
        return self.difference_from_residual(r).abs().amax(1)

    def scaling(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(s, p)`` for the forward pass's residual in the check's units
        (:mod:`onnxinv.solvers.forward.scaled`): per-entry weights ``max(p, tol) / tol`` (m,)
        and the target's probabilities per softmax row (rows, V), which centre the rows (None
        below a Sigmoid, whose weights are its slopes ``t (1 - t)``). None for values matched on
        the raw output, and where less than :data:`SCALE_SHARE` of the target's probabilities
        lie below the tolerance (a 10-class target: every class matters to the check, and
        the plain centred logits converge faster there)."""
        if self.transform == "identity":
            return None
        if self.transform == "logit":  # (the output's slope at the target, per entry)
            t = self.target.ravel().astype(np.float64)
            slope = t * (1 - t)
            if (slope < self.tolerance).mean() < SCALE_SHARE:
                return None
            return np.maximum(slope, self.tolerance) / self.tolerance, None
        p = self.target.reshape(self.rows, -1).astype(np.float64)
        if self.kind == "values" and self.output_space == "log-probabilities":
            p = np.exp(p)
        p = p / p.sum(1, keepdims=True)
        if (p < self.tolerance).mean() < SCALE_SHARE:
            return None
        return (np.maximum(p, self.tolerance) / self.tolerance).ravel(), p

    def check(self, y: np.ndarray) -> np.ndarray:
        """Per-sample largest absolute difference between original-model outputs and target."""
        y = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
        if self.kind == "distribution":
            if self.output_space == "logits":
                y = softmax(y)
            elif self.output_space == "log-probabilities":
                y = np.exp(y)
        err = np.abs(y - self.target.reshape(1, -1)).max(1)
        return np.where(np.isfinite(err), err, np.inf)

    def probabilities(self, y: np.ndarray) -> np.ndarray | None:
        """Class probabilities of original-model outputs, for labels; None for values."""
        if self.kind == "values":
            return None
        y = np.asarray(y, dtype=np.float64).reshape(y.shape[0], -1)
        if self.output_space == "probabilities":
            return y
        if self.output_space == "log-probabilities":
            return np.exp(y)
        if self.output_space == "logits":
            return softmax(y)
        return None


def _log(y):
    if isinstance(y, np.ndarray):
        return np.log(np.maximum(y, TINY))
    return y.clamp_min(TINY).log()


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def output_space(loaded: LoadedModel, seed: int = 0) -> str:
    """What the chosen output holds, from its last node or, failing that, from its values."""
    if loaded.tail == "Softmax":
        return "probabilities"
    if loaded.tail == "LogSoftmax":
        return "log-probabilities"
    rng = np.random.default_rng(seed + 2)
    y = loaded.run(rng.random((8, *loaded.input_shape))).reshape(8, -1).astype(np.float64)
    if y.shape[1] >= 2 and np.all(y >= 0) and np.allclose(y.sum(1), 1.0, atol=1e-4):
        return "probabilities"
    if y.shape[1] >= 2 and np.all(y <= 0) and np.allclose(np.exp(y).sum(1), 1.0, atol=1e-4):
        return "log-probabilities"
    return "logits"


def build(loaded: LoadedModel, target: Target, seed: int = 0) -> Objective:
    """The objective for ``target`` on ``loaded``."""
    t = target.resolve(loaded.output_shape)
    if target.kind == "values":
        if loaded.tail == "Sigmoid" and np.all((t > 0) & (t < 1)):
            # Solved on the Sigmoid's input, where it does not saturate (a dense-prediction
            # net's map of 0.004..0.99999): logit(t), with t kept off 0 and 1 by float32's ulp.
            q = np.clip(t.ravel().astype(np.float64), SIGMOID_EDGE, 1 - SIGMOID_EDGE)
            logit = np.log(q) - np.log1p(-q)
            return Objective("values", "sigmoid", "logits", t, logit, target.tolerance)
        rows = softmax_rows(loaded, t)
        if rows is None:
            flat = t.ravel().astype(np.float64)
            return Objective("values", "values", "output", t, flat, target.tolerance)
        p = t.reshape(rows, -1).astype(np.float64)
        logp = np.log(np.maximum(p, TINY)) if loaded.tail == "Softmax" else p
        centred = (logp - logp.mean(1, keepdims=True)).ravel()
        space = "probabilities" if loaded.tail == "Softmax" else "log-probabilities"
        return Objective("values", space, "logits", t, centred, target.tolerance, rows)
    space = output_space(loaded, seed)
    logp = np.log(t)
    centred = logp - logp.mean()
    # Below a Softmax/LogSoftmax tail solve on its logits; a log-probability output is a logit
    # vector up to a constant, and a probability output is matched in log space (see transform).
    solve_on = "logits" if loaded.tail in SOFTMAX_TAILS else "output"
    return Objective("distribution", space, solve_on, t, centred, target.tolerance)


SOFTMAX_TAILS = ("Softmax", "LogSoftmax")
#: A values target on a Sigmoid output is solved on logit(t), t clipped to [this, 1 - this].
SIGMOID_EDGE = 6e-8
#: The forward pass weights its residual by the check (:meth:`Objective.scaling`) where at
#: least this share of the target's probabilities lie below the tolerance.
SCALE_SHARE = 0.5
#: A ``values`` target's rows count as distributions when each sums to one within this.
ROW_SUM = 1e-3


def softmax_rows(loaded: LoadedModel, t: np.ndarray) -> int | None:
    """Rows of a ``values`` target ``t`` that are each a distribution the model's
    Softmax/LogSoftmax tail gives over its last axis (per-step probabilities of a sequence
    model, a classifier's probabilities): then the solver works on the logits below the tail,
    every row centred on its own, as it does for a distribution target. None otherwise."""
    if loaded.tail not in SOFTMAX_TAILS or t.ndim == 0 or t.shape[-1] < 2:
        return None
    p = t.reshape(-1, t.shape[-1]).astype(np.float64)
    if loaded.tail == "LogSoftmax":
        if (p > 0).any():
            return None
        p = np.exp(p)
    if not np.isfinite(p).all() or (p < 0).any():
        return None
    return len(p) if np.allclose(p.sum(1), 1.0, atol=ROW_SUM) else None


@dataclass
class TopRegion:
    """Bounds ``[need_lo, need_hi]`` on ``D z_top`` (``D`` (r, k)) that every output within the
    tolerance satisfies, and the exact request ``D z_top = want`` (r,); rows marked ``loose``
    (probabilities far below the tolerance) need only stay below ``want``'s bound there, the
    ``cap`` (r,), so their logits may drop as low as the pattern allows."""

    D: np.ndarray
    need_lo: np.ndarray
    need_hi: np.ndarray
    want: np.ndarray
    loose: np.ndarray | None = None
    cap: np.ndarray | None = None

    @classmethod
    def for_objective(cls, obj) -> TopRegion | None:
        """The region for a distribution (logit differences against the likeliest class) or
        values target; None when the target pins nothing (every probability within ``t``)."""
        t = float(obj.tolerance)
        v = obj.target.ravel().astype(np.float64)
        k = len(v)
        if obj.kind == "values":
            return cls(np.eye(k), v - t, v + t, v)
        ref = int(np.argmax(v))
        if v[ref] <= t:
            return None
        others = np.array([i for i in range(k) if i != ref])
        D = np.zeros((len(others), k))
        D[np.arange(len(others)), others] = 1.0
        D[:, ref] = -1.0
        p = v[others]
        with np.errstate(divide="ignore", invalid="ignore"):
            need_lo = np.where(p > t, np.log((p - t) / (v[ref] + t)), -np.inf)
            need_hi = np.log((p + t) / (v[ref] - t))
            want = np.log(p / v[ref])
        # Classes whose total share stays under a quarter of the tolerance: any logit giving
        # them at most that share will do (exact ratios like 1e-20 are not needed).
        floor = t / (4 * k)
        loose = p < floor
        cap = np.log(np.where(loose, floor, p) / v[ref])
        return cls(D, need_lo, need_hi, want, loose, cap)
