"""Strictly increasing elementwise activations, inverted exactly inside their range."""

from __future__ import annotations

import numpy as np

from .base import ElementwiseRule, Interval, NodeContext, RuleNotApplicable, per_sample

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_GAMMA = 1.0507009873554804934193349852946


def _exp_linear(x: np.ndarray, g: float, ga: float) -> tuple[np.ndarray, np.ndarray]:
    """``g·x`` (x > 0), ``ga·(eˣ − 1)`` otherwise, and its slope (SELU, ELU).

    Arithmetic instead of ``np.where`` (three times faster on the chain pass's batches): with
    ``m = min(x, 0)``, the value is ``g·max(x, 0) + ga·(eᵐ − 1)`` and the slope ``ga·eᵐ``,
    plus ``g − ga`` where x > 0.
    """
    m = np.minimum(x, 0.0)
    y = np.maximum(x, 0.0)
    y *= g
    e = np.exp(m, out=m)
    e *= ga
    y += e
    y -= ga
    e += (x > 0) * (g - ga)
    return y, e


class Selu(ElementwiseRule):
    """SELU: y = γx (x > 0), γα(eˣ − 1) otherwise; output > −γα."""

    op_type = "Selu"
    versions = (1, 6, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        a, g = self._ag()
        if a <= 0 or g <= 0:
            raise RuleNotApplicable("Selu with alpha <= 0 or gamma <= 0 is not invertible")

    def _ag(self) -> tuple[float, float]:
        return self.ctx.attr("alpha", SELU_ALPHA), self.ctx.attr("gamma", SELU_GAMMA)

    def output_domain(self) -> Interval:
        a, g = self._ag()
        return Interval(-a * g, np.inf)

    def forward(self, x):
        a, g = self._ag()
        return np.where(x > 0, g * x, g * a * np.expm1(np.minimum(x, 0)))

    def inverse(self, y):
        a, g = self._ag()
        return np.where(y > 0, y / g, np.log1p(np.minimum(y, 0) / (g * a)))

    def forward_with_slope(self, x):
        a, g = self._ag()
        return _exp_linear(x, g, g * a)


class Elu(ElementwiseRule):
    """ELU: y = x (x > 0), α(eˣ − 1) otherwise; output > −α."""

    op_type = "Elu"
    versions = (1, 6, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if self.alpha <= 0:
            raise RuleNotApplicable("Elu with alpha <= 0 is not invertible")

    @property
    def alpha(self) -> float:
        return self.ctx.attr("alpha", 1.0)

    def output_domain(self) -> Interval:
        return Interval(-self.alpha, np.inf)

    def forward(self, x):
        return np.where(x > 0, x, self.alpha * np.expm1(np.minimum(x, 0)))

    def inverse(self, y):
        return np.where(y > 0, y, np.log1p(np.minimum(y, 0) / self.alpha))

    def forward_with_slope(self, x):
        return _exp_linear(x, 1.0, self.alpha)


class LeakyRelu(ElementwiseRule):
    """LeakyReLU with slope α > 0: y = x (x ≥ 0), αx otherwise; a bijection of ℝ."""

    op_type = "LeakyRelu"
    versions = (1, 6, 16)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if self.alpha <= 0:
            raise RuleNotApplicable("LeakyRelu with alpha <= 0 is not invertible (use an LP rule)")

    @property
    def alpha(self) -> float:
        return self.ctx.attr("alpha", 0.01)

    def forward(self, x):
        return np.where(x >= 0, x, self.alpha * x)

    def inverse(self, y):
        return np.where(y >= 0, y, y / self.alpha)

    def forward_with_slope(self, x):
        pos = x >= 0
        return np.where(pos, x, self.alpha * x), np.where(pos, 1.0, self.alpha)

    def breakpoints(self):
        return np.zeros(1)


class PRelu(ElementwiseRule):
    """PRelu with a constant, positive slope: y = x (x ≥ 0), slope·x otherwise."""

    op_type = "PRelu"
    versions = (1, 6, 7, 9, 16)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if ctx.data_input != 0 or 1 not in ctx.constants:
            raise RuleNotApplicable("PRelu needs a constant slope")

        self.slope = per_sample(ctx.constants[1], ctx.input_shape, ctx.batched).ravel()
        if np.any(self.slope <= 0):
            raise RuleNotApplicable("PRelu with a slope <= 0 is not invertible")

    def forward(self, x):
        flat = x.reshape(len(x), -1)
        return np.where(flat >= 0, flat, self.slope * flat).reshape(x.shape)

    def inverse(self, y):
        flat = y.reshape(len(y), -1)
        return np.where(flat >= 0, flat, flat / self.slope).reshape(y.shape)

    def forward_with_slope(self, x):
        flat = x.reshape(len(x), -1)
        slope = np.where(flat >= 0, 1.0, self.slope)
        return (slope * flat).reshape(x.shape), slope.reshape(x.shape)

    def breakpoints(self):
        return np.zeros(1)


class Sigmoid(ElementwiseRule):
    """Sigmoid: output in (0, 1), inverse logit."""

    op_type = "Sigmoid"
    versions = (1, 6, 13)

    def output_domain(self) -> Interval:
        return Interval(0.0, 1.0)

    def forward(self, x):
        return 0.5 * (1 + np.tanh(0.5 * x))

    def inverse(self, y):
        return np.log(y) - np.log1p(-y)

    def forward_with_slope(self, x):
        y = self.forward(x)
        return y, y * (1 - y)


class Tanh(ElementwiseRule):
    """Tanh: output in (−1, 1), inverse artanh."""

    op_type = "Tanh"
    versions = (1, 6, 13)

    def output_domain(self) -> Interval:
        return Interval(-1.0, 1.0)

    def forward(self, x):
        return np.tanh(x)

    def inverse(self, y):
        return np.arctanh(y)

    def forward_with_slope(self, x):
        y = np.tanh(x)
        return y, 1 - y * y


class Softplus(ElementwiseRule):
    """Softplus: y = log(1 + eˣ) > 0, inverse log(eʸ − 1)."""

    op_type = "Softplus"
    versions = (1, 22)

    def output_domain(self) -> Interval:
        return Interval(0.0, np.inf)

    def forward(self, x):
        return np.logaddexp(0, x)

    def inverse(self, y):
        # log(expm1(y)) without overflow for large y.
        return y + np.log(-np.expm1(-y))

    def forward_with_slope(self, x):
        return np.logaddexp(0, x), 0.5 * (1 + np.tanh(0.5 * x))


class HardSigmoid(ElementwiseRule):
    """HardSigmoid inside its linear range: y = αx + β for y in (0, 1)."""

    op_type = "HardSigmoid"
    versions = (1, 6, 22)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if self.ab[0] <= 0:
            raise RuleNotApplicable("HardSigmoid with alpha <= 0 is not invertible")

    @property
    def ab(self) -> tuple[float, float]:
        return self.ctx.attr("alpha", 0.2), self.ctx.attr("beta", 0.5)

    def output_domain(self) -> Interval:
        return Interval(0.0, 1.0)

    def forward(self, x):
        a, b = self.ab
        return np.clip(a * x + b, 0, 1)

    def inverse(self, y):
        a, b = self.ab
        return (y - b) / a

    def forward_with_slope(self, x):
        a, b = self.ab
        t = a * x + b
        return np.clip(t, 0, 1), np.where((t > 0) & (t < 1), a, 0.0)

    def breakpoints(self):
        a, b = self.ab
        return np.array([-b / a, (1 - b) / a])


class Clip(ElementwiseRule):
    """Clip inside its linear range: the identity for values strictly between min and max."""

    op_type = "Clip"
    versions = (1, 6, 11, 12, 13)

    def __init__(self, ctx: NodeContext):
        super().__init__(ctx)
        if ctx.data_input != 0:
            raise RuleNotApplicable("Clip of constant data")
        for i in (1, 2):
            if len(ctx.node.input) > i and ctx.node.input[i] and i not in ctx.constants:
                raise RuleNotApplicable("Clip bounds are not constant")

    @property
    def bounds(self) -> tuple[float, float]:
        if self.ctx.since_version < 11:
            return self.ctx.attr("min", -np.inf), self.ctx.attr("max", np.inf)
        lo = self.ctx.constants.get(1)
        hi = self.ctx.constants.get(2)
        return (
            float(lo) if lo is not None else -np.inf,
            float(hi) if hi is not None else np.inf,
        )

    def output_domain(self) -> Interval:
        lo, hi = self.bounds
        return Interval(lo, hi)

    def forward(self, x):
        lo, hi = self.bounds
        return np.clip(x, lo, hi)

    def inverse(self, y):
        return y.copy()

    def forward_with_slope(self, x):
        lo, hi = self.bounds
        return np.clip(x, lo, hi), np.where((x > lo) & (x < hi), 1.0, 0.0)

    def breakpoints(self):
        return np.array([b for b in self.bounds if np.isfinite(b)])


RULES = (Selu, Elu, LeakyRelu, PRelu, Sigmoid, Tanh, Softplus, HardSigmoid, Clip)
