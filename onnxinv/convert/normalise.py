"""Rewrite what common exporters write into the graph form onnx2torch converts.

:func:`normalise` returns a copy of the model that onnxruntime runs to the same outputs, with:

* weights written as ``Constant`` nodes (paddle2onnx; the TorchScript exporter's ``Clip`` bounds)
  moved to initializers under the same names; onnx2torch reads Conv weights, Clip bounds and
  similar inputs from initializers only. Constants inside subgraphs stay as they are;
* initializers that are also listed as graph inputs (old exporters,
  ``keep_initializers_as_inputs``) no longer listed as inputs;
* nodes sorted topologically (tf2onnx, some Keras exporters write them unsorted);
* ``Identity`` nodes and chains of them bypassed (tf2onnx, dynamo), unless they write a graph
  output;
* values computable from constants alone folded into initializers (:mod:`.fold`): weights stored
  as float16 and cast in the graph, transposed weights, shapes read from static dimensions;
* nodes whose outputs nothing reads removed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .fold import fold_constants
from .graph_walk import reads, set_nodes, topological_sort

__all__ = ["normalise"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node holds, named as its output; None for the kinds left alone."""
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
        elif attr.name == "value_float":
            tensor = numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        elif attr.name == "value_floats":
            tensor = numpy_helper.from_array(np.array(attr.floats, dtype=np.float32))
        elif attr.name == "value_int":
            tensor = numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        elif attr.name == "value_ints":
            tensor = numpy_helper.from_array(np.array(attr.ints, dtype=np.int64))
        else:  # sparse_value, value_string(s): onnx2torch's Constant converter handles them
            continue
        tensor.name = node.output[0]
        return tensor
    return None


def constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Move the main graph's ``Constant`` nodes to initializers, in place; how many moved.

    A Constant that writes a graph output stays a node.
    """
    outputs = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    moved = 0
    for node in graph.node:
        tensor = None
        is_constant = node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS
        if is_constant and node.output[0] not in outputs:
            tensor = _constant_value(node)
        if tensor is None:
            keep.append(node)
        else:
            graph.initializer.append(tensor)
            moved += 1
    if moved:
        set_nodes(graph, keep)
    return moved


def drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """Stop listing initializers as graph inputs, in place; how many were dropped."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    keep = [i for i in graph.input if i.name not in initializers]
    dropped = len(graph.input) - len(keep)
    if dropped:
        del graph.input[:]
        graph.input.extend(keep)
    return dropped


def _rename_reads(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Replace every read of a renamed value, in ``graph`` and all its subgraphs."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename_reads(sub, renames)


def bypass_identities(graph: onnx.GraphProto) -> int:
    """Read the sources of main-graph ``Identity`` nodes directly and drop them; how many.

    An Identity that writes a graph output is kept, so the graph keeps its interface.
    """
    outputs = {o.name for o in graph.output}
    renames: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        bypass = (
            node.op_type == "Identity"
            and node.domain in _DEFAULT_DOMAINS
            and node.input[0]
            and node.output[0] not in outputs
        )
        if bypass:
            renames[node.output[0]] = renames.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    if renames:
        set_nodes(graph, keep)
        _rename_reads(graph, renames)
        gone = set(renames)
        kept_info = [vi for vi in graph.value_info if vi.name not in gone]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return len(renames)


def drop_dead_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes whose outputs nothing reads and that write no graph output; how many."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(reads(node))
    dropped = len(graph.node) - len(keep)
    if dropped:
        keep.reverse()
        set_nodes(graph, keep)
    return dropped


def drop_unused_initializers(graph: onnx.GraphProto) -> int:
    """Remove initializers that no node (or subgraph) reads and no graph output is; how many."""
    used = {name for node in graph.node for name in reads(node)}
    used |= {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    dropped = len(graph.initializer) - len(keep)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return dropped


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in the form onnx2torch converts, with the same outputs.

    The steps are listed in the module docstring; ``model`` itself is never changed. A model
    with an IR version below 4 is raised to 4, the first that allows initializers that are not
    graph inputs.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants_to_initializers(graph)
    drop_initializer_inputs(out)
    topological_sort(graph)
    bypass_identities(graph)
    fold_constants(out)
    drop_dead_nodes(graph)
    drop_unused_initializers(graph)
    if graph.initializer and out.ir_version < 4:
        out.ir_version = 4
    return out
