"""Submodule names for nodes of dotted domains (``ai.onnx.ml``, ``com.microsoft``).

onnx2torch names each submodule ``domain/node name`` and replaces the dots of the node name, but
not those of the domain, and PyTorch refuses a module name with a dot: every node of a
scikit-learn model's ``ai.onnx.ml`` domain (Scaler, LinearClassifier, ...) made conversion fail
with ``module name can't contain "."``. :func:`install` makes the domain's dots slashes too.
"""

from __future__ import annotations

import onnx
from onnx2torch.onnx_graph import OnnxGraph


def generate_node_name(node: onnx.NodeProto) -> str:
    """onnx2torch's submodule name for ``node``, with the dots of its domain made slashes."""
    name = node.name.replace(".", "/") or node.op_type
    return f"{node.domain.replace('.', '/')}/{name}".lstrip("/")


def install() -> list[tuple[str, int]]:
    """Use :func:`generate_node_name` in onnx2torch; adds no converter."""
    OnnxGraph.generate_node_name = staticmethod(generate_node_name)
    return []
