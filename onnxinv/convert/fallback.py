"""Let single nodes that onnx2torch cannot convert run in onnxruntime instead.

A node with no converter, whose converter fails, or whose converted module disagrees with
onnxruntime becomes an :class:`~.ort_node.OrtNode`: that node alone runs in onnxruntime and is
differentiated by central differences; the rest of the model is still converted. The converted
module lists those nodes, as ``"name (OpType)"``, in its ``onnxinv_fallback_nodes`` attribute;
:func:`fallback_nodes` gives the same list for any module (an empty list when every node
converted), copies included.

The fallback converters are registered with onnx2torch only while :meth:`Fallbacks.installed`
is active, and only for the chosen nodes: other nodes of the same operator keep their own
converter, and the registry is restored afterwards.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import numpy as np
import onnx
import torch
from onnx import helper
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

from ..errors import ConversionError
from . import node_jacobian, registry
from .graph_walk import subgraphs
from .locate import FALLBACK
from .node_jacobian import Layout, too_many_values
from .nodes import NodeInfo, node_infos, opsets
from .ort_node import OrtNode
from .single_node import NodeRunner, NodeSpec

#: The attribute of a converted module that lists its fallback nodes.
ATTRIBUTE = "onnxinv_fallback_nodes"

_LOCK = threading.RLock()  # one registry override at a time

#: Operators whose outputs do not depend on their input's values.
_SHAPE_ONLY = frozenset({"Shape", "Size"})

_FLOATS = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)


def fallback_nodes(module: torch.nn.Module) -> list[str]:
    """The nodes of a converted module that run in onnxruntime, as ``"name (OpType)"``.

    Read from the module's :class:`OrtNode` submodules (in graph order), so it also holds for
    copies of the module, which do not keep the ``onnxinv_fallback_nodes`` attribute.
    """
    return [f"{m.node_name} ({m.op_type})" for m in module.modules() if isinstance(m, OrtNode)]


def label(info: NodeInfo) -> str:
    """``"name (OpType)"`` of a node."""
    return f"{info.name} ({info.op_type})"


def _key(node: onnx.NodeProto) -> tuple[str, ...]:
    return tuple(node.output)


def _dims(value: onnx.ValueInfoProto | None) -> list[int | str | None] | None:
    if value is None or not value.type.HasField("tensor_type"):
        return None
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    ]


def _batch_axis(dims: list[int | str | None] | None, batch: str | None) -> int | None:
    if dims is None or batch is None:
        return None
    axes = [i for i, d in enumerate(dims) if d == batch]
    return axes[0] if len(axes) == 1 else None


class Fallbacks:
    """The nodes of one (normalised) model that fall back to onnxruntime.

    Args:
        model: the model that is converted.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.opsets = tuple(opsets(model).items())
        self.chosen: dict[tuple[str, ...], tuple[NodeInfo, NodeSpec, str]] = {}

    @cached_property
    def types(self) -> dict[str, onnx.ValueInfoProto]:
        """Inferred types of the model's values (computed once a node falls back)."""
        try:
            graph = onnx.shape_inference.infer_shapes(self.model).graph
        except Exception:
            graph = self.model.graph
        return {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}

    @cached_property
    def batch(self) -> str | None:
        """The symbolic name of the graph input's first dimension, if it has one."""
        inputs = self.model.graph.input
        first = _dims(self.types.get(inputs[0].name)) if inputs else None
        return first[0] if first and isinstance(first[0], str) else None

    @cached_property
    def variable(self) -> set[str]:
        """Values that depend on the graph inputs' values (not only their shapes)."""
        variable = {i.name for i in self.model.graph.input}
        for node in self.model.graph.node:
            if node.op_type not in _SHAPE_ONLY and any(i in variable for i in node.input):
                variable.update(o for o in node.output if o)
        return variable

    def labels(self) -> list[str]:
        """``"name (OpType)"`` of every chosen node, in graph order."""
        order = {_key(info.proto): i for i, info in enumerate(node_infos(self.model))}
        chosen = sorted(self.chosen.items(), key=lambda item: order[item[0]])
        return [label(info) for _, (info, *_) in chosen]

    def named(self, name: str | None) -> NodeInfo | None:
        """The first node (graph order) that messages call ``name``."""
        return next((info for info in node_infos(self.model) if info.name == name), None)

    def add(self, info: NodeInfo, reason: ConversionError) -> bool:
        """Choose ``info``'s node to fall back; False if it cannot (or already does).

        ``reason`` is the error that conversion would raise without the fallback.

        A node cannot when it holds subgraphs, reads or writes sequences, maps or optionals
        (which do not pass between modules), or onnxruntime cannot run it by itself.
        """
        node = info.proto
        if _key(node) in self.chosen or info.opset is None or subgraphs(node):
            return False
        for name in (*node.input, *node.output):
            value = self.types.get(name) if name else None
            if value is not None and not value.type.HasField("tensor_type"):
                return False
        spec = self._spec(node)
        if all(spec.declared):
            try:
                NodeRunner(spec).compute_dtypes(
                    [np.empty(0, helper.tensor_dtype_to_np_dtype(t)) for t in spec.declared]
                )
            except Exception:  # onnxruntime cannot run it alone (unknown domain, bad types)
                return False
        why = str(reason).removesuffix(f"; {FALLBACK}")
        self.chosen[_key(node)] = (info, spec, why)
        return True

    def _spec(self, node: onnx.NodeProto) -> NodeSpec:
        constants = {i.name: i for i in self.model.graph.initializer}
        fed = list(dict.fromkeys(n for n in node.input if n and n not in constants))
        declared = []
        for name in fed:
            value = self.types.get(name)
            known = value is not None and value.type.HasField("tensor_type")
            declared.append(value.type.tensor_type.elem_type if known else 0)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        return NodeSpec(
            node=copy,
            fed=tuple(fed),
            declared=tuple(declared),
            constants=tuple(constants[n] for n in dict.fromkeys(node.input) if n in constants),
            opsets=self.opsets,
            ir_version=self.model.ir_version,
        )

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route the chosen nodes to :meth:`convert` in onnx2torch's registry, temporarily."""
        keys = {
            (info.proto.domain, info.op_type, registry.lookup_version(info.op_type, info.opset))
            for info, *_ in self.chosen.values()
            if info.opset is not None
        }
        with _LOCK:
            saved = {k: registry.lookup(k[1], k[2], k[0]) for k in keys}
            try:
                for (domain, op_type, version), original in saved.items():
                    registry.replace(op_type, version, self._dispatch(original), domain)
                yield
            finally:
                for (domain, op_type, version), original in saved.items():
                    if original is None:
                        registry.unregister(op_type, version, domain)
                    else:
                        registry.replace(op_type, version, original, domain)

    def _dispatch(self, original: registry.Converter | None) -> registry.Converter:
        def converter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
            if _key(node.proto) in self.chosen:
                return self.convert(node, graph)
            if original is None:
                raise NotImplementedError(f"Converter is not implemented ({node.operation_type})")
            return original(node, graph)

        return converter

    def _layout(self, spec: NodeSpec) -> Layout | None:
        def axis(name: str) -> int | None:
            return _batch_axis(_dims(self.types.get(name)), self.batch)

        inputs = tuple(axis(n) for n in spec.fed)
        if self.batch is None or not inputs or None in inputs:
            return None
        return Layout(inputs, tuple(axis(n) if n else None for n in spec.outputs))

    def _check_size(self, info: NodeInfo, spec: NodeSpec, layout: Layout | None, why: str) -> None:
        """Refuse now a node whose input is known to exceed :data:`MAX_FD_VALUES` values."""
        total = 0
        for k, name in enumerate(spec.fed):
            if name not in self.variable or spec.declared[k] not in _FLOATS:
                continue
            dims = _dims(self.types.get(name))
            if dims is None:
                continue
            skip = layout.inputs[k] if layout is not None else None
            kept = [d for i, d in enumerate(dims) if i != skip]
            if all(isinstance(d, int) for d in kept):
                total += int(np.prod(kept))
        if total > node_jacobian.MAX_FD_VALUES:  # read now: tests may lower it
            raise too_many_values(info.name, info.op_type, total, layout is not None, why)

    def convert(self, node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        """The :class:`OrtNode` that stands in for a chosen node (onnx2torch converter API)."""
        info, spec, why = self.chosen[_key(node.proto)]
        layout = self._layout(spec)
        self._check_size(info, spec, layout, why)
        module = OrtNode(NodeRunner(spec), info.name, info.op_type, layout, why)
        return OperationConverterResult(module, OnnxMapping(spec.fed, spec.outputs))
