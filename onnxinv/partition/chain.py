"""The chain: an invertible block as composed affine maps, activations and selections.

A *chain* is the intermediate representation that the backward pass (:mod:`onnxinv.solvers.\
backward`) and the exact solver (:mod:`onnxinv.solvers.exact`) share for MLP- and CNN-like nets.
:func:`chain_of` reads a block of the partition from its input up and returns

* ``ops``: the steps below the top, each one of

  - :class:`Affine` ``z = M h + c`` on flat values: consecutive affine rules (Gemm, MatMul, Add,
    Conv, BatchNormalization, reshapes ...) composed into one dense matrix once per run
    (:func:`compose`, which the backward pass also uses below a block's first nonlinearity);
  - :class:`Activation`: an elementwise rule differentiable almost everywhere (SELU, Tanh,
    ReLU ...), applied through the rule's ``forward_with_slope``;
  - :class:`Select`: a rule whose every output copies one of its inputs (MaxPool);

* ``top``: the top-only rules (Softmax) and the rearrangements after them, whose preimage of a
  point is an affine family.

The structure holds numbers and rules only; what a solver needs beyond them (single-precision
copies, bounds) it keeps itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rules.base import AffineRule, InverseRule
from ..rules.linalg import DENSE_LIMIT

SELECT_LIMIT = DENSE_LIMIT // 64  # widest input of a max pool inside a chain


def rearranges(rule) -> bool:
    """Whether an affine rule only rearranges values (its matrix is a permutation)."""
    if not isinstance(rule, AffineRule) or rule.ctx.input_size != rule.ctx.output_size:
        return False
    if rule.ctx.input_size > 4096:
        return False
    mc = rule.dense()
    return mc is not None and not mc[1].any() and is_permutation(mc[0])


@dataclass
class Affine:
    """Composed affine steps ``z = M h + c`` on flat values."""

    M: np.ndarray
    c: np.ndarray


@dataclass
class Activation:
    rule: InverseRule


@dataclass
class Select:
    """A rule whose every output copies one of its inputs (MaxPool): its Jacobian is a
    selection, recorded per sample as the copied input's index."""

    rule: InverseRule
    n_in: int


def compose(rules) -> tuple[np.ndarray, np.ndarray] | None:
    """The dense ``(M, c)`` of affine rules applied one after the other (the first is applied
    first): ``M = M_k ⋯ M_1``, ``c`` carried along. None when a rule has no dense matrix or one
    would have more than :data:`~onnxinv.rules.linalg.DENSE_LIMIT` entries (composing matrices
    that size costs more than it saves), or when there is no rule. A single rule's matrix is its
    own (not a copy)."""
    M = c = None
    for rule in rules:
        if rule.ctx.input_size * rule.ctx.output_size > DENSE_LIMIT:
            return None
        mc = rule.dense()
        if mc is None:
            return None
        M, c = mc if M is None else (mc[0] @ M, mc[0] @ c + mc[1])
    return None if M is None else (M, c)


def chain_of(block) -> tuple[list, list] | None:
    """The block's steps as ([affine or activation ops from the input up], [top rules]).

    None when a step is neither a dense affine map nor an elementwise activation that is
    differentiable almost everywhere nor a max pool (below the block's top-only rules), or a
    matrix would be too large to hold densely.
    """
    steps = list(block.steps)
    top = []
    # Top-only rules (Softmax), and the shape-only steps after them (a final Identity).
    last = max((i for i, s in enumerate(steps) if s.rule.top_only), default=None)
    if last is not None and all(rearranges(s.rule) for s in steps[last + 1 :]):
        top = steps[last:]
        steps = steps[:last]
        while steps and steps[-1].rule.top_only:
            top.insert(0, steps.pop())
    if not steps:
        return None
    ops: list = []
    pending: list = []  # consecutive affine steps, composed when the run ends

    def close() -> bool:
        if pending:
            mc = compose([step.rule for step in pending])
            if mc is None:
                return False
            ops.append(Affine(np.ascontiguousarray(mc[0]), mc[1]))
        pending.clear()
        return True

    for step in steps:
        if isinstance(step.rule, AffineRule):
            pending.append(step)
            continue
        if not close():
            return None
        if step.rule.selective():
            if step.rule.ctx.input_size > SELECT_LIMIT:
                return None  # (no affine map below bounds it: the Jacobian would be too wide)
            ops.append(Select(step.rule, step.rule.ctx.input_size))
            continue
        if not step.rule.differentiable():
            return None
        ops.append(Activation(step.rule))
    if not close():
        return None
    for i, op in enumerate(ops):
        if isinstance(op, Select) or (
            isinstance(op, Activation) and op.rule.smooth_inverse() is None
        ):
            # A piecewise-linear activation (ReLU) has slope 0 where it is off, a max pool
            # for every entry below its window's maximum: Newton can only move those through a
            # layer above that mixes them with others. Without one, the exact pointwise
            # preimage (the greedy pass) is the better route.
            after = next((o for o in ops[i + 1 :] if not isinstance(o, Select)), None)
            if not isinstance(after, Affine) or is_permutation(after.M):
                return None
    return ops, top


def is_permutation(M: np.ndarray) -> bool:
    """Whether ``M`` only rearranges values (one 1 per row, zeros elsewhere)."""
    return bool(((M == 0) | (M == 1)).all() and (M.sum(1) == 1).all())
