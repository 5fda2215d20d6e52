"""ONNX graph surgery: cut a model down to one input and one output (:func:`extract`), bake
fixed inputs in (:func:`bake_fixed`), make the batch axis symbolic (:func:`make_batch_symbolic`),
expose an inner tensor (:func:`expose_output`), find a Softmax/LogSoftmax or Sigmoid tail
(:func:`output_tail`).

Only :func:`make_batch_symbolic` changes the model it is given; the others return a copy (or
the model itself when nothing is to change). None changes what the part that is kept computes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError, first_line
from .graphs import graph_inputs, infer_shapes, reads

#: The name of the symbolic batch dimension onnxinv gives the chosen input.
BATCH = "onnxinv_batch"


def extract(
    model: onnx.ModelProto,
    input_name: str,
    output_name: str,
    symbolic_batch: bool,
    inferred: onnx.ModelProto | None = None,
) -> onnx.ModelProto:
    """The subgraph computing ``output_name`` from ``input_name`` (and constants only).

    ``inferred`` is ``model`` with shapes already inferred, when the caller has it.
    """
    inferred = infer_shapes(model) if inferred is None else inferred
    known = {vi.name for g in (inferred.graph.value_info, inferred.graph.input) for vi in g}
    known |= {vi.name for vi in inferred.graph.output}
    if output_name not in known:
        # Shape inference knows nothing of some operators' outputs (e.g. ai.onnx.ml's
        # Normalizer before a ZipMap); the Extractor needs a value_info for every output, and
        # onnxruntime infers the type of an untyped one.
        typed = onnx.ModelProto()
        typed.CopyFrom(inferred)  # the caller's model stays as it was
        typed.graph.value_info.append(onnx.ValueInfoProto(name=output_name))
        inferred = typed
    try:
        sub = onnx.utils.Extractor(inferred).extract_model([input_name], [output_name])
    except Exception as exc:
        raise ModelError(
            f"cannot cut the graph from {input_name!r} to {output_name!r}: {first_line(exc)}"
        ) from None
    # The Extractor makes the chosen input the only graph input and stops its search there, so
    # another graph input the output depends on is left as a dangling node input; it would have
    # to be fed, which we cannot do.
    available = {"", *(o for n in sub.graph.node for o in n.output)}
    available |= {i.name for i in sub.graph.initializer} | {vi.name for vi in sub.graph.input}
    consumed = [name for node in sub.graph.node for name in reads(node)]
    model_inputs = {vi.name for vi in graph_inputs(model)}
    others = sorted({i for i in consumed if i not in available and i in model_inputs})
    if others:
        raise ModelError(
            f"output {output_name!r} also depends on input(s) {', '.join(others)}: hold "
            f"{'them' if len(others) > 1 else 'it'} at a value with --fix "
            f"{others[0]}=FILE.npy (API: fixed={{{others[0]!r}: array}})"
        )
    if input_name not in consumed and input_name != output_name:
        raise ModelError(f"output {output_name!r} does not depend on input {input_name!r}")
    del sub.opset_import[:]
    sub.opset_import.extend(model.opset_import)
    sub.ir_version = model.ir_version
    if symbolic_batch:
        make_batch_symbolic(sub, input_name)
    return sub


def make_batch_symbolic(model: onnx.ModelProto, input_name: str) -> None:
    """Turn a leading dimension of 1 into a symbolic batch dimension, in place.

    Reshape targets that start with 1 (as the dynamo exporter writes them) become -1 when they
    have no -1 already. Whether the result is right is checked numerically by the caller.
    """
    for vi in model.graph.input:
        if vi.name == input_name:
            d0 = vi.type.tensor_type.shape.dim[0]
            d0.Clear()
            d0.dim_param = BATCH
    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        src = node.input[1]
        if src in inits:
            _batch_first(inits[src])
        elif src in consts:
            attr = next((a for a in consts[src].attribute if a.name == "value"), None)
            if attr is not None:
                _batch_first(attr.t)
    del model.graph.value_info[:]
    for o in model.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")


def _batch_first(shape_tensor: onnx.TensorProto) -> None:
    """A Reshape target starting with 1 and without -1 made to start with -1, in place."""
    shape = numpy_helper.to_array(shape_tensor)
    if shape.size and shape[0] == 1 and -1 not in shape:
        new = shape.copy()
        new[0] = -1
        shape_tensor.CopyFrom(numpy_helper.from_array(new, shape_tensor.name))


def bake_fixed(
    model: onnx.ModelProto,
    input_name: str,
    dims: list[int | str | None],
    fixed: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """A copy of ``model`` with ``fixed`` inputs as initializers and the input's dims set."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    keep = [vi for vi in copy.graph.input if vi.name not in fixed]
    del copy.graph.input[:]
    copy.graph.input.extend(keep)
    for name, value in fixed.items():
        inits = [i for i in copy.graph.initializer if i.name != name]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend([*inits, numpy_helper.from_array(value, name)])
    for vi in copy.graph.input:
        if vi.name == input_name:
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, int) and d > 0:
                    dim.dim_value = d
                else:
                    dim.dim_param = BATCH
    if copy.ir_version < 4 and fixed:
        copy.ir_version = 4  # the baked constants are initializers that are not inputs
    return copy


def expose_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` unchanged, or a copy that also lists the inner tensor ``name`` as a graph output.

    The chosen output may be an inner tensor (a ZipMap's input, or one named with ``output=``);
    exposing it changes nothing that the model computes.
    """
    if name in {o.name for o in model.graph.output}:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy


def output_tail(model: onnx.ModelProto, output_name: str) -> tuple[str | None, str | None]:
    """The Softmax/LogSoftmax producing ``output_name`` over its last axis, or the Sigmoid
    producing it, if any: (its op_type, its input).

    Identity nodes between it and the output (scikit-learn exports end with one) are looked
    through.
    """
    producer = next((n for n in model.graph.node if output_name in n.output), None)
    while producer is not None and producer.op_type == "Identity":
        output_name = producer.input[0]
        producer = next((n for n in model.graph.node if output_name in n.output), None)
    if producer is not None and producer.op_type == "Sigmoid":
        return "Sigmoid", producer.input[0]
    if producer is None or producer.op_type not in ("Softmax", "LogSoftmax"):
        return None, None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    rank = None
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.name == output_name and vi.type.tensor_type.HasField("shape"):
            rank = len(vi.type.tensor_type.shape.dim)
    if rank is None:
        return None, None
    if axis in (-1, rank - 1) or (opset < 13 and axis == rank - 1):
        return producer.op_type, producer.input[0]
    return None, None
