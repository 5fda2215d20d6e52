"""Questions about an ONNX graph that loading, repair and partitioning all ask.

* :func:`reads` – the names a node reads, its subgraphs' outer-scope names included;
* :func:`graph_inputs` – the graph inputs that are real inputs (not initializers);
* :func:`declared_dims`, :func:`is_float_tensor`, :func:`describe_type` – what a value is declared as;
* :func:`infer_shapes` – ONNX shape inference that never fails.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

#: ONNX element types that can be inverted, and their numpy types.
FLOAT_TYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}


def reads(node: onnx.NodeProto) -> list[str]:
    """The names ``node`` reads: its inputs and the outer-scope names read inside its subgraphs.

    Each subgraph (an ``If`` branch, a ``Loop``/``Scan`` body, at any depth) is its own scope:
    a name it reads is its own when one of its inputs, initializers or nodes (wherever the node
    stands in it) defines that name, and the outer scope's otherwise. A sibling subgraph's
    names (an ``If``'s other branch) are not in scope. Empty names (omitted optional inputs)
    are left out.
    """
    names = [i for i in node.input if i]
    for attr in node.attribute:
        for graph in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            inner = {o for n in graph.node for o in n.output}
            inner |= {i.name for i in graph.input} | {i.name for i in graph.initializer}
            names += [i for n in graph.node for i in reads(n) if i not in inner]
    return names


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real inputs (not initializers listed as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def declared_dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """A tensor's declared dimensions: an int, a symbolic name, or None where unnamed."""
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def is_float_tensor(vi: onnx.ValueInfoProto) -> bool:
    """Whether ``vi`` is declared a tensor of one of the :data:`FLOAT_TYPES`."""
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in FLOAT_TYPES


def describe_type(vi: onnx.ValueInfoProto) -> str:
    """``vi``'s type for a message: the element type (``int64``) or the kind (``sequence_type``)."""
    if vi.type.HasField("tensor_type"):
        return TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
    return vi.type.WhichOneof("value") or "unknown"


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes, or as it is when inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model
