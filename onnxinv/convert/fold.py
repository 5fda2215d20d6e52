"""Fold values that depend on constants alone into initializers.

A node is folded when it is a deterministic standard operator without subgraphs, every value it
reads is an initializer or already folded, it writes no graph output, and none of its outputs
has more than :data:`MAX_FOLDED_VALUES` values. All such nodes run together once in
onnxruntime, so folded values are exactly what onnxruntime would compute.

``Shape`` is folded when the dimensions it returns are static in the inferred shapes, and a
``Gather`` or ``Slice`` of a Shape when the dimensions it picks are: the TorchScript exporter
reads a static dimension that way (``x.shape[-1]``), while the batch dimension stays symbolic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .graph_walk import set_nodes, subgraphs

#: Largest number of values one folded tensor may have (larger ones stay computed).
MAX_FOLDED_VALUES = 1 << 22

_NEVER = frozenset(
    {
        "Bernoulli",
        "Multinomial",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Constant",  # the ones left are kinds onnx2torch's Constant converter reads itself
    }
)

Partial = list  # a Shape value with None where the dimension is symbolic


def _static_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Inferred dimensions (None where symbolic) of every value whose rank is known."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]  # exporters' own value_info may be stale
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:
        return {}
    graph = inferred.graph
    dims: dict[str, list[int | None]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tensor = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tensor.HasField("shape"):
            dims[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
            ]
    return dims


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shape_value(node: onnx.NodeProto, dims: list[int | None]) -> Partial:
    rank = len(dims)
    start, end = _attr(node, "start", 0), _attr(node, "end", rank)
    return list(dims[slice(start, end)])


def _picked(node: onnx.NodeProto, partial: Partial, known: Callable[[str], np.ndarray]):
    """Gather/Slice of a partial Shape: the picked value, or None unless all picked are static."""
    positions = np.arange(len(partial))
    try:
        if node.op_type == "Gather" and _attr(node, "axis", 0) == 0 and len(node.input) == 2:
            picked = positions[known(node.input[1])]
        elif node.op_type == "Slice" and len(node.input) >= 3:
            args = [known(name) if name else None for name in node.input[1:]]
            starts, ends = args[0], args[1]
            steps = args[3] if len(args) > 3 and args[3] is not None else [1] * len(starts)
            if len(args) > 2 and args[2] is not None and list(args[2]) not in ([0], [-1]):
                return None
            picked = positions[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
        else:
            return None
    except (KeyError, IndexError, ValueError, TypeError):
        return None
    values = np.asarray(partial, dtype=object)[picked]
    if any(v is None for v in np.ravel(values)):
        return None
    return np.asarray(values, dtype=np.int64).reshape(np.shape(picked))


def _candidates(
    model: onnx.ModelProto, initializers: dict[str, onnx.TensorProto]
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """(nodes to run in onnxruntime, values computed here from static shapes), in graph order."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    dims = _static_dims(model)
    partial: dict[str, Partial] = {}
    computed: dict[str, np.ndarray] = {}
    constant = set(initializers)
    to_run: list[onnx.NodeProto] = []

    def known(name: str) -> np.ndarray:
        if name in computed:
            return computed[name]
        return numpy_helper.to_array(initializers[name])

    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER or subgraphs(node):
            continue
        if any(o in outputs for o in node.output):
            continue
        if node.op_type == "Shape" and node.input[0] in dims:
            value = _shape_value(node, dims[node.input[0]])
            if None in value:
                partial[node.output[0]] = value
            else:
                computed[node.output[0]] = np.asarray(value, dtype=np.int64)
                constant.add(node.output[0])
            continue
        if node.input and node.input[0] in partial:
            value = _picked(node, partial[node.input[0]], known)
            if value is not None:
                computed[node.output[0]] = value
                constant.add(node.output[0])
            continue
        inputs = [i for i in node.input if i]
        if not inputs or any(i not in constant for i in inputs):
            continue
        sizes = [dims.get(o) for o in node.output if o]
        if any(s is not None and None not in s and np.prod(s) > MAX_FOLDED_VALUES for s in sizes):
            continue
        to_run.append(node)
        constant.update(o for o in node.output if o)
    return to_run, computed


def _run(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]
) -> dict[str, np.ndarray] | None:
    """Outputs of ``nodes`` run on ``initializers`` by onnxruntime; None if it cannot."""
    names = [o for n in nodes for o in n.output if o]
    graph = onnx.helper.make_graph(
        list(nodes),
        "fold",
        [],
        [onnx.ValueInfoProto(name=name) for name in names],
        initializer=initializers,
    )
    probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = max(model.ir_version, 4)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failure only means nothing is folded
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        values = session.run(names, {})
    except Exception:
        return None
    return dict(zip(names, values, strict=True))


def fold_constants(model: onnx.ModelProto) -> int:
    """Fold, in place, the values of ``model``'s main graph that constants alone determine.

    Returns:
        How many nodes were folded.
    """
    graph = model.graph
    known = {i.name: i for i in graph.initializer}
    to_run, computed = _candidates(model, known)
    ran: dict[str, np.ndarray] = {}
    if to_run:
        needed = {i for n in to_run for i in n.input if i}
        feeds = [known[name] for name in needed if name in known]
        feeds += [numpy_helper.from_array(computed[n], n) for n in needed if n in computed]
        ran = _run(model, to_run, feeds) or {}
    folded_values = dict(computed)
    for node in to_run:
        outs = [o for o in node.output if o]
        ok = all(o in ran and isinstance(ran[o], np.ndarray) for o in outs)
        ok = ok and all(ran[o].size <= MAX_FOLDED_VALUES for o in outs)
        ok = ok and all(i in known or i in folded_values for i in node.input if i)
        if ok:
            folded_values.update((o, ran[o]) for o in outs)
    if not folded_values:
        return 0
    keep, folded = [], 0
    for node in graph.node:
        if node.output and all(o in folded_values or not o for o in node.output):
            folded += 1
        else:
            keep.append(node)
    set_nodes(graph, keep)
    for name, value in folded_values.items():
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return folded
