"""Jacobians of one node by central finite differences, for vector-Jacobian products.

The node's Jacobian is taken one input coordinate at a time: each coordinate is moved up and
down by ``h = eps**(1/3) * max(1, |x|)`` (eps of the precision the node computes in), so it
costs two node runs per input value. When the node's inputs and outputs have a batch axis along
which samples do not interact (checked numerically once per node), all samples' coordinate
``j`` move at once, and many coordinates are stacked along that axis into one run: the cost is
then two node runs per value of *one* sample, in few onnxruntime calls. Otherwise every value
of the whole input is a coordinate.

A node whose coordinates exceed :data:`MAX_FD_VALUES` is refused: its Jacobian by differences
would cost more than differencing the whole model usually does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConversionError

#: Most input values one node's Jacobian is differenced over (per sample when batched).
MAX_FD_VALUES = 4096

#: Values held by one stacked run (inputs and outputs of all stacked copies).
STACK_VALUES = 1 << 20

#: Largest cached Jacobian (values); reused by every backward pass of one forward.
CACHE_VALUES = 1 << 23

Run = Callable[[list[np.ndarray]], list[np.ndarray | None]]


def too_many_values(
    name: str, op_type: str, values: int, batched: bool, reason: str = ""
) -> ConversionError:
    """The refusal of a node whose Jacobian needs more than :data:`MAX_FD_VALUES` coordinates.

    Args:
        name: the node's name.
        op_type: its operator.
        values: how many input values its Jacobian would be differenced over.
        batched: whether that count is per sample.
        reason: why the node is not converted (a one-line error message), if known.
    """
    per = " per sample" if batched else ""
    why = reason or f"node '{name}' ({op_type}) has no working PyTorch conversion"
    return ConversionError(
        f"{why}; running node '{name}' alone in onnxruntime instead would take {2 * values} "
        f"node runs{per} per Jacobian ({values} input values, limit {MAX_FD_VALUES}); "
        "Jacobians will use finite differences",
        op_type=op_type,
        node=name,
    )


@dataclass(frozen=True)
class Layout:
    """Where the batch axis is in each fed input and each output (None: no batch axis)."""

    inputs: tuple[int | None, ...]
    outputs: tuple[int | None, ...]

    def batched(self, fed: list[np.ndarray], used: list[int]) -> bool:
        """Whether every fed input and every used output has a batch axis of one common size."""
        axes = self.inputs + tuple(self.outputs[o] for o in used)
        if not fed or any(a is None for a in axes):
            return False
        sizes = {x.shape[a] for x, a in zip(fed, self.inputs, strict=True) if a < x.ndim}
        return len(sizes) == 1 and all(a < x.ndim for x, a in zip(fed, self.inputs, strict=True))


def _to_front(x: np.ndarray, axis: int | None) -> np.ndarray:
    """``x`` with its batch axis first; a batch of one in front when it has none."""
    return x[None] if axis is None else np.moveaxis(x, axis, 0)


def _from_front(x: np.ndarray, axis: int | None) -> np.ndarray:
    return x[0] if axis is None else np.moveaxis(x, 0, axis)


def _per_sample(shape: tuple[int, ...], axis: int | None) -> int:
    """Values of one sample of a tensor of ``shape`` with its batch axis at ``axis``."""
    return int(np.prod(shape)) // (1 if axis is None else max(1, shape[axis]))


def precision(dtypes: list[np.dtype]) -> float:
    """The machine epsilon of the coarsest floating dtype among ``dtypes``."""
    floats = [np.finfo(d).eps for d in dtypes if np.issubdtype(d, np.floating)]
    return float(max(floats, default=np.finfo(np.float64).eps))


def _step(x: np.ndarray, eps: float) -> np.ndarray:
    return np.cbrt(eps) * np.maximum(1.0, np.abs(x))


class Differencer:
    """Vector-Jacobian products of one node's outputs w.r.t. some of its fed inputs.

    Args:
        run: the node on its fed inputs (each in the dtype it computes in).
        fed: the fed inputs, cast to the dtypes the node computes in.
        wrt: indices into ``fed`` of the inputs to differentiate (floating point).
        used: indices of the outputs that have gradients (floating point).
        out_shapes: the shapes of the node's outputs in the forward run (None where omitted).
        eps: the precision the node computes in: that of the coarsest dtype among the inputs
            differentiated and the outputs used (float32 outputs of float64 inputs are common:
            ai.onnx.ml operators always return float32).
        layout: batch axes, or None to difference every value of the inputs.
        node: ``(name, op_type, why it is not converted)`` for error messages.
    """

    def __init__(
        self,
        run: Run,
        fed: list[np.ndarray],
        wrt: list[int],
        used: list[int],
        out_shapes: list[tuple[int, ...] | None],
        eps: float,
        layout: Layout | None,
        node: tuple[str, str, str],
    ):
        self.run, self.wrt, self.used, self.eps = run, wrt, used, eps
        self.in_axes = layout.inputs if layout else (None,) * len(fed)
        self.out_axes = layout.outputs if layout else None
        self.front = [_to_front(x, a) for x, a in zip(fed, self.in_axes, strict=True)]
        self.batch = self.front[0].shape[0] if self.front else 1
        self.sizes = [int(np.prod(self.front[k].shape[1:])) for k in wrt]
        self.n = sum(self.sizes)
        if self.n > MAX_FD_VALUES:
            name, op_type, reason = node
            raise too_many_values(name, op_type, self.n, layout is not None, reason)
        self.out_size = sum(_per_sample(out_shapes[o] or (), self._out_axis(o)) for o in used)
        self.jacobian: list[np.ndarray] | None = None  # per used output: (B, m_o, n)

    def _outputs(self, values: list[np.ndarray | None]) -> list[np.ndarray]:
        axes = self.out_axes or (None,) * len(values)
        out = []
        for o in self.used:
            value = values[o]
            assert value is not None
            out.append(_to_front(np.asarray(value, dtype=np.float64), axes[o]))
        return out

    def _coordinates(self) -> list[tuple[int, int]]:
        return [(k, j) for k, size in zip(self.wrt, self.sizes, strict=True) for j in range(size)]

    def _columns(self, chunk: list[tuple[int, int]]) -> list[np.ndarray]:
        """d(used outputs)/d(coordinates in ``chunk``): per output an array (c, B, m_o)."""
        c, b = len(chunk), self.batch
        stacked, denominators = [], np.empty((c, b))
        for k, x in enumerate(self.front):
            copies = np.repeat(x[None], 2 * c, axis=0)  # (2c, B, ...)
            flat = copies.reshape(2 * c, b, -1)
            for t, (kk, j) in enumerate(chunk):
                if kk != k:
                    continue
                h = _step(x.reshape(b, -1)[:, j], self.eps).astype(x.dtype)
                flat[t, :, j] += h
                flat[c + t, :, j] -= h
                denominators[t] = flat[t, :, j].astype(np.float64) - flat[c + t, :, j]
            stacked.append(flat.reshape(2 * c * b, *x.shape[1:]))
        if self.out_axes is None:  # no batch axis: every copy is its own run
            runs = [self._outputs(self.run([s[i] for s in stacked])) for i in range(2 * c)]
            ys = [np.stack([r[o] for r in runs]) for o in range(len(self.used))]
        else:
            back = [_from_front(s, a) for s, a in zip(stacked, self.in_axes, strict=True)]
            ys = self._outputs(self.run(back))
        columns = []
        for y in ys:
            y = y.reshape(2, c, b, -1)
            columns.append((y[0] - y[1]) / denominators[:, :, None])
        return columns

    def _chunks(self) -> list[list[tuple[int, int]]]:
        coords = self._coordinates()
        if self.out_axes is None:
            width = 1
        else:
            per_copy = sum(x[0].size for x in self.front) + self.out_size
            width = max(1, STACK_VALUES // max(1, 2 * self.batch * per_copy))
        return [coords[i : i + width] for i in range(0, len(coords), width)]

    def vjp(self, grads: list[np.ndarray | None]) -> list[np.ndarray]:
        """Gradients of ``sum(grads[o] * output used[o])`` w.r.t. each ``wrt`` input, as fed."""
        g = [
            None if gr is None else _to_front(np.asarray(gr, np.float64), self._out_axis(i))
            for i, gr in zip(self.used, grads, strict=True)
        ]
        total = np.zeros((self.batch, self.n))
        if self.jacobian is not None:
            for go, jac in zip(g, self.jacobian, strict=True):
                if go is not None:
                    total += np.einsum("bm,bmn->bn", go.reshape(self.batch, -1), jac)
            return self._split(total)
        keep = self.batch * self.out_size * self.n <= CACHE_VALUES
        parts: list[list[np.ndarray]] = [[] for _ in self.used]
        start = 0
        for chunk in self._chunks():
            columns = self._columns(chunk)
            for o, (go, col) in enumerate(zip(g, columns, strict=True)):
                if go is not None:
                    total[:, start : start + len(chunk)] += np.einsum(
                        "bm,cbm->bc", go.reshape(self.batch, -1), col
                    )
                if keep:
                    parts[o].append(col)
            start += len(chunk)
        if keep:
            self.jacobian = [np.concatenate(p).transpose(1, 2, 0) for p in parts]
        return self._split(total)

    def _out_axis(self, output: int) -> int | None:
        return None if self.out_axes is None else self.out_axes[output]

    def _split(self, total: np.ndarray) -> list[np.ndarray]:
        grads, start = [], 0
        for k, size in zip(self.wrt, self.sizes, strict=True):
            block = total[:, start : start + size].reshape(self.front[k].shape)
            grads.append(_from_front(block, self.in_axes[k]))
            start += size
        return grads


def independent(run: Run, fed: list[np.ndarray], layout: Layout, used: list[int]) -> bool:
    """Whether samples along the batch axes neither interact nor depend on their position.

    The batch runs as it is, then next to a perturbed copy of itself, once after it and once
    before it: its own outputs must not change (Trilu on a ``[batch, n]`` matrix, or a
    normalisation over the batch axis, fail this).
    """
    rng = np.random.default_rng(0)
    fronts, others = [], []
    for x, axis in zip(fed, layout.inputs, strict=True):
        front = _to_front(x, axis)
        other = front
        if np.issubdtype(x.dtype, np.floating):
            noise = rng.standard_normal(front.shape) * (1.0 + np.abs(front))
            other = (front + noise).astype(x.dtype)
        fronts.append(front)
        others.append(other)

    def joined(first: list[np.ndarray], second: list[np.ndarray]) -> list[np.ndarray]:
        return [
            _from_front(np.concatenate([a, b]), axis)
            for a, b, axis in zip(first, second, layout.inputs, strict=True)
        ]

    try:
        plain = run(fed)
        after, before = run(joined(fronts, others)), run(joined(others, fronts))
    except Exception:
        return False
    for o in used:
        axis = layout.outputs[o]
        a = _to_front(np.asarray(plain[o], np.float64), axis)
        b = len(a)
        for doubled, part in ((after, slice(0, b)), (before, slice(b, 2 * b))):
            d = _to_front(np.asarray(doubled[o], np.float64), axis)
            if d.shape != (2 * b, *a.shape[1:]):
                return False
            if not np.allclose(d[part], a, rtol=1e-4, atol=1e-6, equal_nan=True):
                return False
    return True
