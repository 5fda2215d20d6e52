"""The paper's BackPassInv, as published, for comparison with onnxinv's backward pass.

From the output down: Softmax inverted as ``log p`` (constant 0), every linear layer by the
minimum-norm pseudo-inverse (singular values below σ_max/100 cut) plus a random null-space
vector whose norm is ``std`` (0.1) times the particular solution's, every activation by its
inverse, and an error as soon as a value leaves the domain of the next inverse. It uses
onnxinv's own rules for the algebra (``InverseRule.invert`` is exactly that step), so the only
difference from onnxinv's backward pass is how the free choices are made.
"""

from __future__ import annotations

import numpy as np

from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.rules import OutsideDomain, default_registry


def paper_backward(
    model_path: str, target: np.ndarray, samples: int, seed: int, std: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (N, n), ok (N,)): ok is False where a value left the next inverse's domain.

    Raises:
        ValueError: the model is not one invertible block (the paper's method does not apply).
    """
    part = one_invertible_block(model_path)
    if part is None:
        raise ValueError("BackPassInv needs a model that is one invertible block")
    rng = np.random.default_rng(seed)
    y = np.repeat(np.asarray(target, dtype=np.float64).reshape(1, -1), samples, 0)
    ok = np.ones(samples, dtype=bool)
    for step in reversed(part.blocks[0].steps):
        rule = step.rule
        if rule.kind == "affine":
            y = rule.invert(y, rng, std=std).reshape(samples, -1)
            continue
        if step.node.op_type == "Softmax":
            y = np.log(y)  # the constant c = 0
            continue
        dom = rule.output_domain()
        bad = ~dom.contains(y)
        ok &= ~bad
        y = np.where(bad[:, None], 0.0, y)  # failed samples carry on only to keep shapes
        try:
            y = rule.preimage(y).v0
        except OutsideDomain:
            ok[:] = False
            break
    return y, ok


def one_invertible_block(model_path: str):
    """The model's partition when it is one invertible block (where the backward pass needs no
    LM), else None."""
    part = partition(model_mod.load(model_path), default_registry())
    return part if part.fully_invertible and len(part.blocks) == 1 else None
