"""Random starting points for the model's input: uniform noise, smooth random fields, or a prior.

LM converges from a start whose output is not too far from the target. Uniform noise in the box
is the neutral choice, and on small inputs (Fashion-MNIST's 28×28, tabular vectors) it works
well; on an image at the size CNNs are deployed (224×224) it is far outside what the network
was made for: every pixel independent gives each filter its largest response, and a ResNet-18's
centred logits on it are ten times larger than on any photograph (a MobileNetV3's a hundred
times), so LM spends its iterations only coming back. A *smooth random field* (one uniform value
per :data:`CELL` × :data:`CELL` cell of the two longest axes, interpolated linearly between the
cells' centres, every other axis such as colour independent) is as random, stays in the box
(interpolation is a convex combination), and its outputs lie where the network's usual outputs
lie. ``--starts auto`` (the default) probes :data:`PROBES` starts of each family on the model in
onnxruntime and takes smooth fields when their residuals are at most :data:`GAIN` times smaller
(:func:`nearer_family`); inputs without two axes of :data:`MIN_SIDE` or more keep uniform noise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "CELL",
    "GAIN",
    "MIN_SIDE",
    "PRIOR_SPREAD",
    "PROBES",
    "Starts",
    "field_axes",
    "nearer_family",
    "near_prior",
    "smooth_fields",
]

PRIOR_SPREAD = 0.01  # starts near a prior: its value plus noise of this size (of the box)
CELL = 8  # a smooth field has one random value per CELL × CELL cell
MIN_SIDE = 32  # ... on inputs with two axes at least this long (images, spectrograms)
PROBES = 4  # starts of each family that --starts auto runs through the model
GAIN = 2.0  # ... smooth fields win when their median residual norm is this many times smaller


def near_prior(prior: np.ndarray, k: int, rng: np.random.Generator, bounds) -> np.ndarray:
    """(k, n) points next to ``prior``: noise of ``PRIOR_SPREAD`` times the box's width (or
    the prior's largest value), kept strictly inside the box."""
    if bounds is not None:
        lo, hi = bounds
        scale = hi - lo
    else:
        scale = max(1.0, float(np.abs(prior).max()))
    x = prior[None] + PRIOR_SPREAD * scale * rng.standard_normal((k, len(prior)))
    if bounds is not None:
        pad = 1e-3 * (hi - lo)
        x = np.clip(x, lo + pad, hi - pad)
    return x


def field_axes(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The two longest axes of one sample's ``shape`` (in order) when both have at least
    :data:`MIN_SIDE` values, else None: the axes a smooth field varies slowly along."""
    if len(shape) < 2:
        return None
    a, b = sorted(sorted(range(len(shape)), key=lambda i: -shape[i])[:2])
    return (a, b) if min(shape[a], shape[b]) >= MIN_SIDE else None


def _hats(length: int) -> np.ndarray:
    """(length, knots) weights of linear interpolation from one knot per :data:`CELL` values
    (knots at the cells' centres, constant beyond the outer ones); rows sum to one."""
    knots = -(-length // CELL)
    w = np.zeros((length, knots))
    if knots == 1:
        w[:, 0] = 1.0
        return w
    pos = np.clip((np.arange(length) + 0.5) / CELL - 0.5, 0, knots - 1)  # (in knot units)
    left = np.minimum(np.floor(pos).astype(int), knots - 2)
    frac = pos - left
    w[np.arange(length), left] = 1.0 - frac
    w[np.arange(length), left + 1] = frac
    return w


def smooth_fields(
    k: int, shape: tuple[int, ...], rng: np.random.Generator, bounds=None, std: float = 1.0
) -> np.ndarray:
    """(k, n) smooth random fields of one sample's ``shape`` (which must have
    :func:`field_axes`): uniform knots in ``bounds`` (or normal(0, ``std``) without), linearly
    interpolated along the two field axes."""
    a, b = field_axes(shape)
    ha, hb = _hats(shape[a]), _hats(shape[b])
    coarse = list(shape)
    coarse[a], coarse[b] = ha.shape[1], hb.shape[1]
    if bounds is not None:
        knots = rng.uniform(bounds[0], bounds[1], size=(k, *coarse))
    else:
        knots = rng.normal(0.0, std, size=(k, *coarse))
    g = np.moveaxis(knots, (a + 1, b + 1), (-2, -1))
    x = np.einsum("pa,...ab,qb->...pq", ha, g, hb)
    x = np.moveaxis(x, (-2, -1), (a + 1, b + 1))
    if bounds is not None:
        x = np.clip(x, bounds[0], bounds[1])  # (round-off only)
    return x.reshape(k, -1)


class Starts:
    """Random starting points: next to the prior when there is one (see :func:`near_prior`),
    else smooth random fields of ``shape`` when ``shape`` is given, else uniform inside the
    bounds, else normal(0, ``std``).

    Calling it with ``k`` returns a (k, n) float64 torch tensor; every draw comes from ``rng``,
    so a seeded generator gives the same starts.
    """

    def __init__(
        self, n: int, rng: np.random.Generator, bounds=None, std: float = 1.0, prior=None,
        shape: tuple[int, ...] | None = None,
    ):  # fmt: skip
        self.n, self.rng, self.bounds, self.std, self.prior = n, rng, bounds, std, prior
        self.shape = shape

    def __call__(self, k: int):
        import torch

        return torch.from_numpy(self.draw(k))

    def draw(self, k: int) -> np.ndarray:
        """The same as calling, as a (k, n) numpy array."""
        if self.prior is not None:
            return near_prior(self.prior, k, self.rng, self.bounds)
        if self.shape is not None:
            return smooth_fields(k, self.shape, self.rng, self.bounds, self.std)
        if self.bounds is not None:
            lo, hi = self.bounds
            return self.rng.uniform(lo, hi, size=(k, self.n))
        return self.rng.normal(0.0, self.std, size=(k, self.n))


def nearer_family(
    shape: tuple[int, ...],
    residual_norms: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    bounds=None,
    std: float = 1.0,
) -> tuple[str, str | None]:
    """``--starts auto``: ``"smooth"`` when :data:`PROBES` smooth fields of ``shape`` have a
    median residual norm at most 1/:data:`GAIN` of uniform noise's, else ``"uniform"``; and a
    note saying what was measured (None when ``shape`` has no field axes).

    ``residual_norms`` maps (k, n) inputs to (k,) norms of their residuals.
    """
    if field_axes(shape) is None:
        return "uniform", None
    n = int(np.prod(shape))
    uniform = np.median(residual_norms(Starts(n, rng, bounds, std).draw(PROBES)))
    smooth = np.median(residual_norms(Starts(n, rng, bounds, std, shape=shape).draw(PROBES)))
    if not np.isfinite(smooth) or not smooth * GAIN <= uniform:
        return "uniform", (
            f"starts: uniform noise (smooth random fields were not nearer the target: median "
            f"residual {smooth:.3g} against {uniform:.3g})"
        )
    return "smooth", (
        f"starts: smooth random fields (one random value per {CELL}x{CELL} cell, "
        f"interpolated): their outputs lay {uniform / smooth:.3g}x nearer the target than "
        f"uniform noise's (median residual {smooth:.3g} against {uniform:.3g})"
    )
