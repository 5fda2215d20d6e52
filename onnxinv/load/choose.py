"""Choose what to invert and what to match: the input, the inputs held fixed, the output, and
the shape of one sample (:func:`choose_sample`).

Each choice is the user's (``--input``, ``--fix``, ``--output``, ``--input-shape``) or, where
there is one, the only sensible one; otherwise a :class:`~onnxinv.errors.ModelError` or
:class:`~onnxinv.errors.OptionError` says what to give.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..errors import ModelError, OptionError
from .graphs import declared_dims, describe_type, graph_inputs, is_float_tensor


def choose_input(
    model: onnx.ModelProto, name: str | None, fixed: Iterable[str] = ()
) -> onnx.ValueInfoProto:
    """The graph input to invert: ``name``, or the single float input not held ``fixed``."""
    inputs = graph_inputs(model)
    fixed = set(fixed)
    if name is not None:
        for vi in inputs:
            if vi.name == name:
                if name in fixed:
                    raise OptionError(f"input {name!r} is both inverted and held fixed")
                if not is_float_tensor(vi):
                    raise ModelError(
                        f"input {name!r} is {describe_type(vi)}: only continuous (float) inputs "
                        "can be inverted, not integer ids or strings"
                    )
                return vi
        raise ModelError(
            f"no input named {name!r}; inputs are: {', '.join(i.name for i in inputs)}"
        )
    floats = [vi for vi in inputs if is_float_tensor(vi) and vi.name not in fixed]
    if not floats:
        kinds = ", ".join(f"{vi.name} ({describe_type(vi)})" for vi in inputs)
        raise ModelError(
            f"the model has no float input left to invert ({kinds}): only continuous inputs "
            "can be inverted, not integer token ids or strings"
        )
    if len(floats) > 1:
        raise ModelError(
            "the model has several float inputs "
            f"({', '.join(vi.name for vi in floats)}): choose one with --input NAME and hold "
            "the others that the output needs with --fix NAME=FILE.npy"
        )
    return floats[0]


def check_fixed(model: onnx.ModelProto, fixed: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """``fixed`` as arrays of each input's declared type, checked against its declared shape."""
    if not fixed:
        return {}
    if not isinstance(fixed, dict):
        raise OptionError(f"fixed must map input names to arrays, not {type(fixed).__name__}")
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    out: dict[str, np.ndarray] = {}
    for name, value in fixed.items():
        if name not in inputs:
            raise OptionError(
                f"--fix {name}: the model has no input named {name!r}; inputs are: "
                + ", ".join(inputs)
            )
        vi = inputs[name]
        if not vi.type.HasField("tensor_type"):
            raise OptionError(f"--fix {name}: input {name!r} is not a tensor")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        try:
            array = np.asarray(value)
            lossy = array.dtype.kind in "fc" and np.dtype(dtype).kind in "iub"
            if lossy and not np.array_equal(array, np.round(array)):
                raise ValueError("non-integer values for an integer input")
            array = array.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise OptionError(
                f"--fix {name}: cannot use the value as {np.dtype(dtype).name} ({exc})"
            ) from None
        dims = declared_dims(vi)
        if vi.type.tensor_type.HasField("shape"):
            ok = array.ndim == len(dims) and all(
                not (isinstance(d, int) and d > 0) or d == s
                for d, s in zip(dims, array.shape, strict=False)
            )
            if not ok:
                declared = ", ".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims)
                raise OptionError(
                    f"--fix {name}: value has shape {list(array.shape)} but the input is "
                    f"declared [{declared}]"
                )
        out[name] = array
    return out


def choose_output(model: onnx.ModelProto, name: str | None) -> str:
    """The graph output to match: ``name``, or the single float tensor output.

    An output produced by ``ZipMap`` (scikit-learn's dict-of-probabilities) is replaced by the
    ZipMap's input tensor, which holds the same probabilities as a tensor.
    """
    outputs = list(model.graph.output)
    producers = {o: n for n in model.graph.node for o in n.output}
    if name is not None:
        if name not in {o.name for o in outputs} and name not in producers:
            raise ModelError(
                f"no output named {name!r}; outputs are: {', '.join(o.name for o in outputs)}"
            )
        chosen = name
    else:
        candidates = []
        for o in outputs:
            node = producers.get(o.name)
            if is_float_tensor(o) or (node is not None and node.op_type == "ZipMap"):
                candidates.append(o.name)
        if not candidates:
            raise ModelError("the model has no float tensor output to match")
        if len(candidates) > 1:
            raise ModelError(
                f"the model has several float outputs ({', '.join(candidates)}): choose one with "
                '--output NAME or the target\'s "output" key'
            )
        chosen = candidates[0]
    node = producers.get(chosen)
    if node is not None and node.op_type == "ZipMap":
        chosen = node.input[0]
    return chosen


def _sample_dims(
    vi: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None
) -> list[int | str | None]:
    """The chosen input's dims: declared, or ``input_shape`` where the user gave one.

    ``input_shape`` is the input's full shape, or one sample's shape: one dimension fewer than
    declared, where the declared first dimension is a batch axis (symbolic, or a fixed 1).
    """
    declared = declared_dims(vi) if vi.type.tensor_type.HasField("shape") else None
    if input_shape is None:
        if declared is None:
            raise ModelError(
                f"input {vi.name!r} has no declared shape; give it with --input-shape "
                "(API: input_shape=), e.g. --input-shape 1,3,224,224"
            )
        return declared
    given = [int(d) for d in input_shape]
    text = ",".join(map(str, given))
    if declared is None:
        dims: list[int | str | None] = [g if g > 0 else None for g in given]
    else:
        shown = "[" + ", ".join(str(d) if d and d != -1 else "?" for d in declared) + "]"
        d0 = declared[0] if declared else None
        batch_first = len(declared) >= 2 and not (isinstance(d0, int) and d0 > 1)
        if len(given) == len(declared) - 1 and batch_first:  # one sample, batch axis left out
            if given[0] <= 0:
                raise OptionError(
                    f"--input-shape {text}: as the shape of one sample of input {vi.name!r} "
                    f"(declared {shown}) it must not start with -1"
                )
            full = [d0 if isinstance(d0, int) and d0 > 0 else -1, *given]
        elif len(given) == len(declared):
            full = given
        else:
            sample = f", or the {len(declared) - 1} of one sample" if batch_first else ""
            raise OptionError(
                f"--input-shape {text} has {len(given)} dimensions but input {vi.name!r} is "
                f"declared {shown} with {len(declared)}: give all {len(declared)}{sample}"
            )
        for i, (g, d) in enumerate(zip(full, declared, strict=True)):
            if isinstance(d, int) and d > 0 and g != d:
                raise OptionError(
                    f"--input-shape {text}: dimension {i} of input {vi.name!r} is declared {d} "
                    f"({shown}), not {g}"
                )
        dims = [g if g > 0 else None for g in full]
    if any(d is None for d in dims[1:]):
        raise OptionError("--input-shape: only the first dimension may be -1 (a batch axis)")
    return dims


@dataclass(frozen=True)
class SampleShape:
    """The chosen input's dimensions, and what one sample of it is.

    Attributes:
        first: the input's first dimension, or None where it is symbolic.
        rest: its other dimensions (all static).
        sample: the shape of one sample: ``rest`` when ``first`` is symbolic (the batch axis),
            else the whole input.
        unit: one sample's shape along the batch axis (``rest`` where there is one).
        batch_axis: whether the first dimension is a batch axis: symbolic, or a fixed 1 (as
            exporters write a batch of one) in front of more dimensions.
        note: what was assumed, for the report (a 1-D input of symbolic length).
    """

    first: int | None
    rest: tuple[int, ...]
    sample: tuple[int, ...]
    unit: tuple[int, ...]
    batch_axis: bool
    note: str | None = None

    @property
    def symbolic(self) -> bool:
        """Whether the input's first dimension is symbolic."""
        return self.first is None


def choose_sample(vi: onnx.ValueInfoProto, input_shape: tuple[int, ...] | None) -> SampleShape:
    """The shape of one sample of input ``vi``, from its declared shape or ``input_shape``.

    Raises:
        ModelError: the input is a scalar or has a dynamic dimension after its first.
        OptionError: ``input_shape`` disagrees with the declared shape.
    """
    dims = _sample_dims(vi, input_shape)
    if not dims:
        raise ModelError(f"input {vi.name!r} is a scalar; there is nothing to invert")
    for i, d in enumerate(dims[1:], start=1):
        if not isinstance(d, int) or d <= 0:
            raise ModelError(
                f"input {vi.name!r} has dynamic dimension {i} ({d!r}); give its shape with "
                "--input-shape (API: input_shape=), e.g. --input-shape "
                + ",".join(str(v) if isinstance(v, int) and v > 0 else "1" for v in dims)
            )
    d0 = dims[0]
    first = int(d0) if isinstance(d0, int) and d0 > 0 else None
    rest = tuple(int(d) for d in dims[1:])
    if first is None and len(dims) >= 2:
        return SampleShape(first, rest, rest, rest, True)  # the symbolic axis is the batch
    if first is None:
        note = (
            f"input {vi.name!r} is 1-D with a symbolic length; inverting length 1 "
            "(give another with --input-shape)"
        )
        return SampleShape(first, rest, (1,), (1,), False, note)  # a 1-D input, unknown length
    sample = (first, *rest)
    batch_axis = first == 1 and len(dims) >= 2  # a fixed batch of one, as exporters write it
    return SampleShape(first, rest, sample, rest if batch_axis else sample, batch_axis)
