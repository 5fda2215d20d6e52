"""Find the node that stops an ONNX model from converting to PyTorch, and say so in one line."""

from __future__ import annotations

import onnx
from onnx2torch.node_converters.registry import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.utils.safe_shape_inference import safe_shape_inference

from ..errors import ConversionError
from .nodes import NodeInfo, node_infos

FALLBACK = "Jacobians will use finite differences"


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (its type name when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def missing_converter_error(info: NodeInfo) -> ConversionError:
    """The error for a node whose operator version has no registered converter."""
    return ConversionError(
        f"no PyTorch converter for operator {info.op_type} ({info.where()}); {FALLBACK}",
        op_type=info.op_type,
        node=info.name,
    )


def failed_converter_error(info: NodeInfo, exc: BaseException) -> ConversionError:
    """The error for a node whose converter exists but refused or crashed."""
    return ConversionError(
        f"PyTorch converter for operator {info.op_type} ({info.where()}) failed: "
        f"{one_line(exc)}; {FALLBACK}",
        op_type=info.op_type,
        node=info.name,
    )


def missing_converters(model: onnx.ModelProto) -> list[NodeInfo]:
    """Every node (in graph order) whose operator version has no registered converter."""
    missing = []
    for info in node_infos(model):
        if info.opset is None:
            missing.append(info)
            continue
        try:
            get_converter(operation_type=info.op_type, version=info.opset, domain=info.proto.domain)
        except NotImplementedError:
            missing.append(info)
    return missing


def find_missing_converter(model: onnx.ModelProto) -> ConversionError | None:
    """The error for the first node (in graph order) with no converter, or None."""
    missing = missing_converters(model)
    return missing_converter_error(missing[0]) if missing else None


def failing_node(model: onnx.ModelProto) -> tuple[NodeInfo, BaseException] | None:
    """Run each node's converter alone; the first node whose converter fails, and how.

    Converters see the same shape-inferred graph as in ``onnx2torch.convert``.
    """
    try:
        inferred = safe_shape_inference(model)
    except Exception:  # fall back to the uninferred graph
        inferred = model
    graph = OnnxGraph(inferred.graph)
    by_name = {info.module_name: info for info in node_infos(model)}
    for module_name, node in graph.nodes.items():
        info = by_name[module_name]
        try:
            converter = get_converter(
                operation_type=info.op_type, version=info.opset, domain=node.domain
            )
            converter(node, graph)
        except Exception as node_exc:  # any failure names the node
            return info, node_exc
    return None


def find_failing_converter(model: onnx.ModelProto, exc: BaseException) -> ConversionError:
    """Run each node's converter alone to name the one that made ``onnx2torch.convert`` fail.

    If none fails on its own, the error reports ``exc`` without naming a node.
    """
    found = failing_node(model)
    if found is not None:
        return failed_converter_error(*found)
    return ConversionError(f"conversion to PyTorch failed: {one_line(exc)}; {FALLBACK}")
