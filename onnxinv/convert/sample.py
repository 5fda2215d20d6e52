"""The one graph input of a model and a seeded random value for it."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import ModelError

#: batch size used when the first input dimension is symbolic.
SYMBOLIC_BATCH = 3


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single graph input that is not an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"expected exactly one graph input to invert, found {len(inputs)}")
    return inputs[0]


def check_single_output(model: onnx.ModelProto) -> None:
    """Raise ModelError unless the model has exactly one graph output."""
    if len(model.graph.output) != 1:
        raise ModelError(f"expected exactly one graph output, found {len(model.graph.output)}")


def input_dtype(model: onnx.ModelProto) -> np.dtype:
    """numpy dtype of the graph input."""
    elem_type = graph_input(model).type.tensor_type.elem_type
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def sample_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The input shape, with :data:`SYMBOLIC_BATCH` for a symbolic first dimension."""
    value = graph_input(model)
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ModelError(f"input '{value.name}' has no shape; pass sample_input")
    shape = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif axis == 0:
            shape.append(SYMBOLIC_BATCH)
        else:
            raise ModelError(
                f"input '{value.name}' has a symbolic dimension {axis} (only the first, batch, "
                "dimension may be symbolic); pass sample_input"
            )
    return tuple(shape)


def sample_input(model: onnx.ModelProto, seed: int = 0) -> np.ndarray:
    """Uniform [0, 1) values of the input's shape and dtype from ``default_rng(seed)``."""
    values = np.random.default_rng(seed).random(sample_shape(model))
    return values.astype(input_dtype(model))
