"""The contract every inverse rule follows.

A rule inverts one ONNX node along its *data input* (the one input that is not a constant).
Going backward, what a rule receives for its output is an **affine family** of acceptable
values, ``{v0 + V u}`` (:class:`Family`): a point when ``V`` has no columns, and more when the
rules above left free directions (a softmax constant, a layer's null space). There are two kinds:

* :class:`AffineRule` – the node is an affine map ``y = M x + c`` of its data input (Gemm,
  MatMul/Add/Mul by constants, BatchNormalization, shape-only ops...). It maps a family at
  its output to the family of all its preimages (:meth:`AffineRule.pullback`), adding its
  null space as new free directions and reporting, for maps that are not onto, how far the
  family is from the map's range (``Family.residual``). No choice is made here.
* :class:`PointRule` – the node is nonlinear (activations, Softmax). It needs one *point* for
  its output, inside :meth:`PointRule.output_domain`, and returns the family of its preimages
  (a point for a bijective activation, ``log p + c`` for Softmax).

The planner (``onnxinv.solvers.backward.plan`` with ``onnxinv.solvers.backward.collapse``) collapses a family into a point just below each point
rule, choosing the free coefficients ``u`` so that the point lies in the rule's domain (and in
the input bounds at the graph input) – a small linear feasibility problem – and at random inside
that set, so samples differ.

Every rule also implements :meth:`InverseRule.forward` (numpy, batched): the round-trip tests use
it, and so does interval bound propagation (:meth:`InverseRule.forward_interval`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx

from ..errors import OnnxInvError
from ..shapes import SampleSizes


class RuleNotApplicable(OnnxInvError):
    """This node's attributes or inputs are outside what the rule can invert."""


class OutsideDomain(OnnxInvError):
    """A value asked of a rule lies outside the domain of its inverse."""


@dataclass(frozen=True)
class Interval:
    """Elementwise bounds a value must satisfy; ``open`` bounds are kept a margin away."""

    lo: float = -np.inf
    hi: float = np.inf
    open: bool = True

    def contains(self, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Per-sample: whether every entry of ``y`` (B, ...) lies inside (with ``margin``).

        An open bound is excluded (Sigmoid's 0 or SELU's −γα have no finite preimage), and
        with ``margin`` everything closer to it than that too.
        """
        flat = y.reshape(len(y), -1)
        ok = np.ones(len(y), dtype=bool)
        if np.isfinite(self.lo):
            ok &= (flat > self.lo + margin).all(1) if self.open else (flat >= self.lo).all(1)
        if np.isfinite(self.hi):
            ok &= (flat < self.hi - margin).all(1) if self.open else (flat <= self.hi).all(1)
        return ok


@dataclass
class NodeContext(SampleSizes):
    """What a rule knows about its node.

    Attributes:
        node: the ONNX node.
        opset: the model's opset for the node's domain.
        since_version: the schema version in force at that opset (the registry key).
        attrs: attribute values by name (defaults not filled in).
        constants: constant input values by input position.
        data_input: position of the input that carries data.
        input_shape: that input's shape for one sample (batch dimension removed).
        output_shape: the output's shape for one sample.
        batched: whether the node's tensors carry a leading batch dimension.
    """

    node: onnx.NodeProto
    opset: int
    since_version: int
    attrs: dict[str, Any]
    constants: dict[int, np.ndarray]
    data_input: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    batched: bool = True

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


@dataclass
class Family:
    """Per-sample affine families ``v0[b] + V @ u`` of flat values (shared directions ``V``).

    Attributes:
        v0: (B, d) particular values.
        V: (d, k) free directions, orthonormal columns (k may be 0).
        residual: (B,) distance of each sample's request from what the rules below can produce
            (0 when every step so far was exact).
    """

    v0: np.ndarray
    V: np.ndarray
    residual: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.residual is None:
            self.residual = np.zeros(len(self.v0))

    @classmethod
    def point(cls, y: np.ndarray) -> Family:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return cls(y, np.zeros((y.shape[1], 0)))

    @property
    def free(self) -> int:
        return self.V.shape[1]

    def sample(self, rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
        """The paper's choice: particular solution plus a random free-direction vector.

        The random vector's norm is ``std`` times the particular solution's norm.
        """
        if self.free == 0:
            return self.v0.copy()
        u = rng.standard_normal((len(self.v0), self.free))
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-300)
        scale = std * np.linalg.norm(self.v0, axis=1, keepdims=True)
        return self.v0 + (u * scale) @ self.V.T


def per_sample(c: np.ndarray, shape: tuple[int, ...], batched: bool) -> np.ndarray:
    """A broadcast constant as one sample's full-size array (it must not vary over the batch)."""
    c = np.asarray(c, dtype=np.float64)
    full = (1, *shape) if batched else shape
    if c.ndim > len(full) or (batched and c.ndim == len(full) and c.shape[0] != 1):
        raise RuleNotApplicable("constant varies along the batch dimension")
    try:
        out = np.broadcast_to(c, full)
    except ValueError:
        raise RuleNotApplicable(f"constant of shape {c.shape} does not broadcast") from None
    return (out[0] if batched else out).copy()


class InverseRule(ABC):
    """Base class of all inverse rules.

    Subclasses set ``op_type``, ``domain`` (ONNX domain, "" for the default) and ``versions``
    (the operator's ``since_version`` values the rule handles), and ``lossless`` (whether the
    inverse reproduces the output exactly, up to the linear-algebra cut-off; a rule written for
    an earlier release may still call it ``exact``). The constructor
    raises :class:`RuleNotApplicable` when this particular node cannot be inverted (e.g. Gemm
    whose weight is not constant), so the planner treats it as opaque.
    """

    op_type: ClassVar[str]
    domain: ClassVar[str] = ""
    versions: ClassVar[tuple[int, ...]]
    lossless: ClassVar[bool] = True
    kind: ClassVar[str]
    #: Invert this node only at the graph's output; elsewhere it is solved numerically.
    top_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "exact" in cls.__dict__ and "lossless" not in cls.__dict__:  # the earlier name
            cls.lossless = bool(cls.__dict__["exact"])

    def __init__(self, ctx: NodeContext):
        self.ctx = ctx

    @classmethod
    def describe(cls) -> str:
        """One line saying what the rule inverts (``onnxinv rules`` shows it)."""
        return (cls.__doc__ or cls.__name__).strip().splitlines()[0]

    @abstractmethod
    def forward(self, x: np.ndarray) -> np.ndarray:
        """The node's own computation on (B, *input_shape) values; numpy, float64."""

    def forward_interval(
        self, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Elementwise bounds of the output for inputs in [lo, hi] (flat, per sample), or None."""
        return None

    def family(self, y: np.ndarray, max_condition: float = 100.0) -> Family:
        """All inputs that give outputs ``y`` (B, *output_shape), as a family."""
        point = Family.point(np.asarray(y, dtype=np.float64))
        if isinstance(self, AffineRule):
            return self.pullback(point, max_condition)
        return self.preimage(point.v0)

    def invert(
        self,
        y: np.ndarray,
        rng: np.random.Generator,
        std: float = 0.1,
        max_condition: float = 100.0,
    ) -> np.ndarray:
        """One input per row of ``y``: the rule's whole contract in one call.

        The particular solution plus a random vector along the free directions whose norm is
        ``std`` times the particular solution's (the paper's BackPassInv step). The planner
        does better (it keeps values inside the next rule's domain); this is for plugin authors
        and round-trip tests.

        Returns:
            (B, *input_shape) inputs.
        """
        x = self.family(y, max_condition).sample(rng, std)
        return x.reshape((len(x), *self.ctx.input_shape))


class AffineRule(InverseRule):
    """A node that is an affine map of its data input: pulls families back to families."""

    kind = "affine"

    @abstractmethod
    def pullback(self, family: Family, max_condition: float) -> Family:
        """All inputs whose output lies in ``family``, as a family over this node's input."""

    def onto(self, max_condition: float) -> bool:
        """Whether every output is reachable (else :meth:`pullback` may be inexact)."""
        return True

    def nullity(self, max_condition: float) -> int:
        """How many free directions :meth:`pullback` adds (the null space's dimension)."""
        return max(0, self.ctx.input_size - self.ctx.output_size)

    def dense(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(M, c)`` with ``y = M x + c`` on flat values, when a dense matrix is sensible."""
        return None


SLOPE_STEP = 1e-6  # relative step of the default central-difference slope


class PointRule(InverseRule):
    """A nonlinear node: needs one point for its output and returns its preimage family.

    What the planner may ask of a point rule, declared here so that it never names rules:

    * :attr:`top_only` – the rule is inverted only at the graph's output (Softmax needs a point
      on the probability simplex, which only the target gives); elsewhere its node is solved
      numerically.
    * :meth:`free_directions` – directions along which every preimage family moves freely
      whatever the point (Softmax's additive constant); the planner counts them before running.
    * :meth:`smooth_inverse` – a smooth elementwise inverse, when there is one: the planner then
      chooses this rule's point jointly with the input below it (linearising the inverse)
      instead of greedily; :meth:`forward_with_slope` gives the forward map's slope for that.
    """

    kind = "point"

    def free_directions(self) -> np.ndarray:
        """(input_size, k) orthonormal directions every preimage family contains (default none)."""
        return np.zeros((self.ctx.input_size, 0))

    def smooth_inverse(self):
        """An elementwise, differentiable inverse ``f(y) -> x`` on flat (B, n) values, or None."""
        return None

    def differentiable(self) -> bool:
        """Whether the forward map is elementwise and differentiable almost everywhere, with
        :meth:`forward_with_slope`: the chain pass (Newton over the input) then admits it.

        True for rules with a smooth inverse; piecewise-linear ones (ReLU) declare it too.
        """
        return self.smooth_inverse() is not None

    def selective(self) -> bool:
        """Whether each output copies one input (a max pool): then :meth:`forward_with_selection`
        gives which, and the chain pass admits the rule."""
        return False

    def forward_with_selection(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat outputs (B, m) and, per output, the flat index of the input it copies (B, m)."""
        raise NotImplementedError(f"{self.op_type} does not select inputs")

    def windows(self) -> np.ndarray:
        """For a :meth:`selective` rule, (m, K): the flat inputs each output is the maximum
        of, ``-1`` where a window has fewer (the exact solver encodes the maximum with them)."""
        raise NotImplementedError(f"{self.op_type} does not select inputs")

    def breakpoints(self) -> np.ndarray | None:
        """Where an elementwise, continuous, piecewise-linear rule changes slope, or None.

        Sorted, shape (k,) for every value or (n, k) per flat value (``nan`` pads a row with
        fewer). With them and :meth:`forward` the exact solver writes the rule's graph as a
        mixed-integer program (one binary per linear piece a value may be on) and inverts it
        as a set; None means the rule is not piecewise linear.
        """
        return None

    def forward_with_slope(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(f(x), f'(x))`` for rules with a :meth:`smooth_inverse` (the chain pass's Jacobian).

        Central differences unless the rule knows its slope.
        """
        e = SLOPE_STEP * (1.0 + np.abs(x))
        with np.errstate(all="ignore"):
            slope = (self.forward(x + e) - self.forward(x - e)) / (2 * e)
        return self.forward(x), slope

    def output_domain(self) -> Interval:
        """Bounds every output value must satisfy for :meth:`preimage` to apply."""
        return Interval()

    @abstractmethod
    def preimage(self, y: np.ndarray) -> Family:
        """The family of inputs mapping to each point ``y`` (B, output_size); exact or raises."""

    def sample_preimage(self, y: np.ndarray, rng: np.random.Generator, std: float) -> Family:
        """Preimages of points ``y`` (B, output_size) drawn at random where there is a choice.

        Rules whose preimage of a point is a set rather than an affine family (ReLU's zeros
        come from any negative input, a max pool's non-maximal entries from anything below the
        maximum) override this to draw a member with ``rng`` (``std`` sets the spread relative
        to the values), so samples differ; the default is the deterministic :meth:`preimage`.
        """
        return self.preimage(y)

    def nearest(self, y: np.ndarray) -> np.ndarray:
        """A point of the domain near ``y`` (B, output_size), for requests that miss it."""
        dom = self.output_domain()
        return np.clip(y, dom.lo, dom.hi)

    def check_domain(self, y: np.ndarray) -> None:
        dom = self.output_domain()
        bad = ~dom.contains(y)
        if bad.any():
            raise OutsideDomain(
                f"{self.op_type} cannot be inverted at values outside "
                f"({dom.lo:g}, {dom.hi:g}) (sample {int(np.flatnonzero(bad)[0])})"
            )


class ElementwiseRule(PointRule):
    """A strictly monotone elementwise activation: its preimage of a point is a point."""

    @abstractmethod
    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Elementwise inverse of values inside the output domain."""

    def smooth_inverse(self):
        return self.inverse

    def preimage(self, y: np.ndarray) -> Family:
        y = np.asarray(y, dtype=np.float64)
        self.check_domain(y)
        return Family.point(self.inverse(y))

    def forward_interval(self, lo, hi):
        # Increasing activations map interval ends to interval ends.
        return self.forward(lo[None])[0], self.forward(hi[None])[0]
