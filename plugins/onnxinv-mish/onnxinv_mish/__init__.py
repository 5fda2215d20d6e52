"""onnxinv-mish: an inverse rule for the Mish activation, as an onnxinv plugin.

Mish is ``y = x · tanh(softplus(x))`` (ONNX ``Mish``, default domain, since opset 18). It is not
monotone on all of ℝ: it falls from 0 (at −∞) to its minimum ``Y_MIN ≈ −0.308843`` at
``X_MIN ≈ −1.192431``, then increases without bound. Every ``y > Y_MIN`` has a preimage on the
increasing branch ``x > X_MIN``, and that is the one this rule returns (exactly, by safeguarded
Newton iteration). Values ``Y_MIN < y < 0`` have a second preimage on the decreasing branch
``x < X_MIN``; it exists but this rule never produces it. Values below ``Y_MIN`` have none and
are refused with :class:`onnxinv.rules.OutsideDomain`.

onnxinv finds the rule through the entry point declared in ``pyproject.toml``::

    [project.entry-points."onnxinv.rules"]
    mish = "onnxinv_mish:register"
"""

from __future__ import annotations

import numpy as np

from onnxinv.rules import ElementwiseRule, Interval

__all__ = ["X_MIN", "Y_MIN", "ExampleMish", "Mish", "mish", "mish_inverse", "register"]
__version__ = "0.1.0"

X_MIN = -1.1924312145154956  # where Mish has its minimum (Mish'(X_MIN) = 0)
Y_MIN = -0.30884341301725043  # the minimum value, Mish(X_MIN)
TOLERANCE = 1e-12  # |Mish(x) − y| the inverse reaches, relative to max(1, |y|)
MAX_ITER = 100
_TANH_LOG2 = 0.6  # tanh(softplus(0)) = tanh(log 2) = 3/5: Mish(x) ≥ 0.6·x for x ≥ 0
_CURVATURE = 0.13347  # Mish(x) ≈ Y_MIN + _CURVATURE·(x − X_MIN)² near the minimum


def mish(x: np.ndarray) -> np.ndarray:
    """Mish in float64 (softplus through logaddexp: no overflow)."""
    return x * np.tanh(np.logaddexp(0.0, x))


def _mish_prime(x: np.ndarray) -> np.ndarray:
    t = np.tanh(np.logaddexp(0.0, x))
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
    return t + x * (1.0 - t * t) * sigmoid


def mish_inverse(y: np.ndarray) -> np.ndarray:
    """The preimage of each ``y > Y_MIN`` on the increasing branch ``x ≥ X_MIN``.

    Newton's method inside a bracket that always contains the root, with a bisection step
    whenever Newton would leave it (near the minimum, where Mish' → 0). Vectorised: all
    entries iterate together until each satisfies ``|Mish(x) − y| ≤ 1e-12·max(1, |y|)``.
    """
    y = np.asarray(y, dtype=np.float64)
    # Bracket: y ≤ 0 → x in [X_MIN, 0]; y > 0 → x in [y, y/0.6] (0.6·x ≤ Mish(x) ≤ x there).
    lo = np.where(y > 0, y, X_MIN)
    hi = np.where(y > 0, y / _TANH_LOG2 * (1 + 1e-12) + 1e-300, 0.0)
    # Start: near the minimum Mish ≈ Y_MIN + (x − X_MIN)²·c, elsewhere the bracket's middle.
    x = np.where(y > 0, y, X_MIN + np.sqrt(np.maximum(y - Y_MIN, 0.0) / _CURVATURE))
    x = np.clip(x, lo, hi)
    tol = TOLERANCE * np.maximum(1.0, np.abs(y))
    for _ in range(MAX_ITER):
        r = mish(x) - y
        done = np.abs(r) <= tol
        if done.all():
            break
        lo = np.where(r < 0, x, lo)
        hi = np.where(r > 0, x, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - r / _mish_prime(x)
        inside = np.isfinite(newton) & (newton > lo) & (newton < hi)
        x = np.where(done, x, np.where(inside, newton, 0.5 * (lo + hi)))
    return x


class Mish(ElementwiseRule):
    """Mish on its increasing branch: y = x·tanh(softplus(x)) for y > −0.30884 (x > −1.19243)."""

    op_type = "Mish"
    versions = (18, 22)  # the since_version values of ONNX's Mish schema
    lossless = True  # on the increasing branch the inverse reproduces y to 1e-12

    def output_domain(self) -> Interval:
        # Open: the planner keeps its points a margin above the minimum, where the inverse is
        # well conditioned (near Y_MIN, dx/dy → ∞).
        return Interval(Y_MIN, np.inf)

    def forward(self, x):
        return mish(np.asarray(x, dtype=np.float64))

    def inverse(self, y):
        return mish_inverse(y)

    def forward_interval(self, lo, hi):
        # Not monotone: the default (ends map to ends) would be wrong across the minimum.
        f_lo, f_hi = mish(lo), mish(hi)
        low = np.where((lo < X_MIN) & (hi > X_MIN), Y_MIN, np.minimum(f_lo, f_hi))
        return low, np.maximum(f_lo, f_hi)


class ExampleMish(Mish):
    """Mish as a custom-domain operator com.example.Mish (version 1)."""

    domain = "com.example"
    versions = (1,)


def register(registry) -> None:
    """The entry point: onnxinv calls this with its registry when the plugin is loaded."""
    registry.register(Mish)
    registry.register(ExampleMish)
