"""Proofs that a target is out of reach inside the input box.

For a model whose graph is one chain (dense affine maps and monotone activations below a
Softmax-like top, see :mod:`onnxinv.partition.chain`), interval bounds are propagated from the
box to the input of the last affine map, ``z = M h + c`` (:mod:`onnxinv.partition.bounds`). Over that box of ``h`` the range of every
*difference* of two logits ``z_i − z_j = (M_i − M_j) h + c_i − c_j`` is computed exactly (tighter
than subtracting two intervals), and compared with what the target allows: for a distribution
within the tolerance ``t`` of ``p``, ``log((p_i − t)/(p_j + t)) ≤ z_i − z_j ≤
log((p_i + t)/(p_j − t))`` (any Softmax constant); for a values target on the logits, each
``z_i`` within ``t`` of its value. Disjoint ranges prove that no input in the box gives an output
within tolerance of the target.

The proof is sound up to floating point: the bounds are widened by ``SLACK`` (relative), far
more than float64 rounding, and more than the float32 arithmetic onnxruntime uses may move an
output of these sizes. A target that is not proven unreachable may still be: interval bounds
lose precision with depth. Linear bounds carried back to the box through every activation's
lines (:func:`~onnxinv.partition.bounds.back_substitute`) tighten the differences' ranges, and
a last linear program asks for all of them at once.
"""

from __future__ import annotations

import numpy as np

from ...partition.bounds import back_substitute, centre_spread, intervals, sampled_lines, widen
from ...partition.chain import Affine, Select

SLACK = 1e-5
MAX_PAIRS_K = 64  # all pairs up to this many classes; above, each class against the largest


def _upper(queries: np.ndarray, ops, lines, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Upper bounds of ``queries @ z_top`` over the box, by back-substitution."""
    W, const = back_substitute(ops, lines, queries.astype(np.float64), np.zeros(len(queries)))
    centre, spread = centre_spread(W, const, lo, hi)
    return centre + spread


def _joint(last, p: np.ndarray, t: float, lo, hi, where: str, box: str) -> str | None:
    """All logit differences at once: an LP (HiGHS) over the last layer's input box.

    Each class against the most likely one must fall in the range the target allows; when no
    point of the (over-approximating) box satisfies them together, nothing in the input box can.
    """
    from scipy.optimize import linprog

    ref = int(np.argmax(p))
    others = np.array([i for i in range(len(p)) if i != ref and p[i] > t])
    if others.size == 0 or p[ref] <= t:
        return None
    rows = last.M[others] - last.M[ref]
    offset = last.c[others] - last.c[ref]
    need_lo = np.log((p[others] - t) / (p[ref] + t)) - offset
    need_hi = np.log((p[others] + t) / (p[ref] - t)) - offset
    slack = SLACK * (1 + np.abs(need_lo) + np.abs(need_hi))
    a_ub = np.concatenate([rows, -rows])
    b_ub = np.concatenate([need_hi + slack, -(need_lo - slack)])
    res = linprog(np.zeros(rows.shape[1]), A_ub=a_ub, b_ub=b_ub,
                  bounds=list(zip(lo, hi, strict=True)), method="highs")  # fmt: skip
    if res.status != 2:  # 2: proven infeasible; anything else proves nothing
        return None
    return (
        f"target proven unreachable within the bounds {box}: at {where}, no value the box "
        f"allows there gives every logit minus logit {ref} the range the target needs at once "
        "(linear program, HiGHS: infeasible)"
    )


def proof_chain(problem, select: bool = False) -> list | None:
    """The chain's ops below its top when the whole model is one chain ending in an affine map
    under a Softmax or LogSoftmax (a distribution target) or nothing (the logits, or a values
    target), with max pools only if ``select``; else None."""
    part, obj = problem.partition, problem.objective
    found = problem.chain
    if len(part.blocks) != 1 or found is None:
        return None
    ops, top = found
    if not ops or not isinstance(ops[-1], Affine):
        return None
    if not select and any(isinstance(o, Select) for o in ops):
        return None  # (a max pool is not elementwise: no per-neuron relaxation for it)
    tops = {s.rule.op_type for s in top}
    if obj.kind == "distribution" and not (tops <= {"Softmax", "LogSoftmax"}):
        return None
    if obj.kind == "distribution" and not tops and obj.output_space != "logits":
        return None
    if obj.kind == "values" and top:
        return None
    return ops


def certify(problem) -> str | None:
    """A one-line proof that ``problem``'s target is out of reach in its bounds, or None."""
    if problem.bounds is None:
        return None
    ops = proof_chain(problem)
    if ops is None:
        return None
    part, obj = problem.partition, problem.objective
    top = problem.chain[1]
    n = problem.n
    box_lo, box_hi = np.full(n, float(problem.bounds[0])), np.full(n, float(problem.bounds[1]))
    # Every op's input interval, from the box up (each widened by SLACK), up to the last map's.
    found = intervals(ops[:-1], box_lo, box_hi, slack=SLACK, finite=True)
    if len(found) < len(ops) - 1:
        return None
    ins = [(box_lo, box_hi), *found]
    lo, hi = ins[-1]
    last = ops[-1]
    where = f"the last linear layer (output {part.blocks[0].steps[-1 - len(top)].output!r})"
    box = f"[{problem.bounds[0]:g}, {problem.bounds[1]:g}]"
    t = obj.tolerance
    if obj.kind == "values":
        centre, spread = centre_spread(last.M, last.c, lo, hi)
        want = obj.target.ravel()
        gap = np.maximum(centre - spread - (want + t), (want - t) - (centre + spread))
        gap -= SLACK * (1 + np.abs(centre) + spread)
        i = int(np.argmax(gap))
        if gap[i] > 0:
            return (
                f"target proven unreachable within the bounds {box}: at {where}, output {i} "
                f"lies in [{centre[i] - spread[i]:.4g}, {centre[i] + spread[i]:.4g}] for every "
                f"input in the box, the target needs {want[i]:.4g} (±{t:g})"
            )
        return None
    p = obj.target.ravel().astype(np.float64)
    k = len(p)
    pairs = (
        [(i, j) for i in range(k) for j in range(k) if i != j]
        if k <= MAX_PAIRS_K
        else [(i, int(np.argmax(p))) for i in range(k) if i != int(np.argmax(p))]
    )
    a = np.array([i for i, _ in pairs])
    b = np.array([j for _, j in pairs])
    ok = (p[a] > t) & (p[b] > t)
    a, b = a[ok], b[ok]
    if a.size == 0:
        return None
    rows = last.M[a] - last.M[b]  # logit a minus logit b: rows h + c_a − c_b
    centre, spread = centre_spread(rows, last.c[a], lo, hi)
    centre = centre - last.c[b]
    slack = SLACK * (1 + np.abs(centre) + spread)
    d_lo, d_hi = centre - spread - slack, centre + spread + slack
    # Tighter: linear bounds carried back through every activation to the box (CROWN-style,
    # with the interval bounds above as each activation's input range).
    lines = {
        i: sampled_lines(op.rule, *ins[i])
        for i, op in enumerate(ops[:-1])
        if not isinstance(op, Affine)
    }
    queries = np.zeros((len(a), k))
    queries[np.arange(len(a)), a] = 1.0
    queries[np.arange(len(a)), b] = -1.0
    upper = _upper(queries, ops, lines, box_lo, box_hi)
    lower = -_upper(-queries, ops, lines, box_lo, box_hi)
    lower, upper = widen(lower, upper, SLACK)
    d_hi = np.minimum(d_hi, upper)
    d_lo = np.maximum(d_lo, lower)
    need_lo = np.log((p[a] - t) / (p[b] + t))
    need_hi = np.log((p[a] + t) / (p[b] - t))
    gap = np.maximum(d_lo - need_hi, need_lo - d_hi)
    e = int(np.argmax(gap))
    if gap[e] <= 0:
        return _joint(last, p, t, lo, hi, where, box)
    i, j = int(a[e]), int(b[e])
    return (
        f"target proven unreachable within the bounds {box}: at {where}, logit {i} minus "
        f"logit {j} lies in [{d_lo[e]:.4g}, {d_hi[e]:.4g}] for every input in the box, the "
        f"target needs log(p{i}/p{j}) in [{need_lo[e]:.4g}, {need_hi[e]:.4g}]"
    )
