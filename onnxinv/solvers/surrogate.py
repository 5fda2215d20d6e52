"""ReLUs whose derivatives have a slope on the inactive side: LM's linear model sees dead units.

A ReLU that is off has a zero derivative, so where every unit feeding an output is off at the
current point, no Jacobian (dense or matrix-free) can move that output. A dense-prediction net
then stalls with a few pixels stuck at the value its bias gives (the 64×256 U-Net: 5e-3, every
later step rejected), and a recognizer with ReLUs before its per-step head stalls the same way.

The converted model's ``nn.ReLU`` modules are swapped for :class:`SurrogateReLU`: the *value* is
the exact ReLU, so every residual, every accept/reject decision and every check is unchanged.
Inside :func:`relu_slopes` the derivatives (backward, forward-mode and double-vjp products) use
slope :data:`RELU_SLOPE` where the input is negative, as a leaky ReLU would; a step computed
from that linear model is still accepted only when the true residual falls, so LM stays
monotone. The forward pass bends them only in its endgame, for samples that exact derivatives
left unsolved: on the U-Net that verifies them, while bending them from the start cost
MobileNetV3 (whose squeeze-excite gates have ReLUs) 3 of its 4 samples in 500 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["RELU_SLOPE", "SurrogateReLU", "has_relus", "relu_slopes", "surrogate_relus"]

#: The derivative of a ReLU where its input is negative, in Jacobians only.
RELU_SLOPE = 0.1


class _LeakyDerivative(torch.autograd.Function):
    """``max(x, 0)``, differentiated as ``1`` for x > 0 and ``slope`` elsewhere."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, slope: float) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, slope = inputs
        ctx.slope = slope
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def _factor(ctx, like: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        one = torch.ones((), dtype=like.dtype, device=like.device)
        return torch.where(x > 0, one, one * ctx.slope)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * _LeakyDerivative._factor(ctx, grad), None

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, _slope):
        return tangent * _LeakyDerivative._factor(ctx, tangent)


class SurrogateReLU(nn.Module):
    """An exact ReLU whose derivative is ``slope`` on the inactive side (0: the ReLU's own)."""

    def __init__(self, slope: float = 0.0):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LeakyDerivative.apply(x, self.slope)


def surrogate_relus(module: nn.Module, slope: float = 0.0) -> int:
    """Swap every ``nn.ReLU`` inside ``module`` for :class:`SurrogateReLU` (in place, exact
    derivatives until :func:`relu_slopes` says otherwise); returns how many were swapped."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, SurrogateReLU(slope))
                swapped += 1
    return swapped


def _units(residual) -> list[SurrogateReLU]:
    modules = [getattr(residual, "module", None), getattr(residual, "fast", None)]
    return [
        u for m in modules if m is not None for u in m.modules() if isinstance(u, SurrogateReLU)
    ]


def has_relus(residual) -> bool:
    """Whether ``residual``'s model has ReLUs whose derivatives :func:`relu_slopes` can bend."""
    return bool(_units(residual))


@contextmanager
def relu_slopes(residual, slope: float = RELU_SLOPE) -> Iterator[None]:
    """Within the block, ``residual``'s ReLUs are differentiated with ``slope`` on their
    inactive side (values unchanged)."""
    units = _units(residual)
    saved = [u.slope for u in units]
    for u in units:
        u.slope = slope
    try:
        yield
    finally:
        for u, s in zip(units, saved, strict=True):
            u.slope = s
