"""Name ONNX nodes the way users and onnx2torch see them."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx2torch.onnx_graph import OnnxGraph

from ..schema import schema_version


@dataclass(frozen=True)
class NodeInfo:
    """One ONNX node with what error messages need to say about it.

    Attributes:
        proto: the node itself.
        module_name: the name of the onnx2torch submodule converted from it.
        opset: the model's opset for the node's domain, or None if it imports none.
        version: since_version of the operator's schema at that opset, if onnx knows it.
    """

    proto: onnx.NodeProto
    module_name: str
    opset: int | None
    version: int | None

    @property
    def op_type(self) -> str:
        """The node's operator."""
        return self.proto.op_type

    @property
    def name(self) -> str:
        """The node's name, or onnx2torch's generated name when it has none."""
        return self.proto.name or self.module_name

    @property
    def domain_label(self) -> str:
        """The domain as written in messages (``ai.onnx`` for the default domain)."""
        return self.proto.domain or "ai.onnx"

    def where(self) -> str:
        """``domain 'd', opset N[, version V], node 'name'`` for one-line messages."""
        opset = "not imported" if self.opset is None else str(self.opset)
        version = ""
        if self.version is not None and self.version != self.opset:
            version = f", version {self.version}"
        return f"domain '{self.domain_label}', opset {opset}{version}, node '{self.name}'"

    def short(self) -> str:
        """``Op, opset N`` for one-line messages."""
        opset = "?" if self.opset is None else str(self.opset)
        return f"{self.op_type}, opset {opset}"


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opset imports, ``ai.onnx`` folded into the default domain ``''``."""
    result = {}
    for opset in model.opset_import:
        result["" if opset.domain == "ai.onnx" else opset.domain] = opset.version
    return result


def node_infos(model: onnx.ModelProto) -> list[NodeInfo]:
    """Every top-level node of ``model`` in graph (topological) order."""
    imports = opsets(model)
    infos = []
    for module_name, node in OnnxGraph(model.graph).nodes.items():
        proto = node.proto
        opset = imports.get(proto.domain or "")
        version = None
        if opset is not None:
            version = schema_version(proto.op_type, opset, proto.domain)
        infos.append(NodeInfo(proto, module_name, opset, version))
    return infos


def producers(model: onnx.ModelProto) -> dict[str, tuple[NodeInfo, int]]:
    """Output value name -> (producing node, output index)."""
    return {
        output: (info, index)
        for info in node_infos(model)
        for index, output in enumerate(info.proto.output)
        if output
    }
