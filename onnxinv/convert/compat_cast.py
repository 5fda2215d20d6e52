"""Cast (all versions) whose float32 target follows the module's precision, and CastLike.

onnx2torch's Cast hard-codes the target dtype, so a ``Cast(to=FLOAT)`` (skl2onnx puts one on the
input) turns the values back to float32 after ``module.double()`` and the next MatMul fails on
mixed dtypes. Here ``to=FLOAT`` casts to the dtype of a non-persistent buffer instead: float32
as converted, float64 after ``.double()``. Other targets keep onnx2torch's module.

Cast-19 to 28 only add float8/int4/float4/int2/float6 types (``saturate`` and ``round_mode``
only affect float8 targets, which are rejected). CastLike (15-25, types only) is not in
onnx2torch at all; it casts to the dtype of its second input, which follows ``.double()`` too.
"""

from __future__ import annotations

import torch
from onnx import TensorProto
from onnx2torch.node_converters.cast import OnnxCast
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from . import registry

_ONNX2TORCH_MODULE = "onnx2torch.node_converters.cast"

#: newest since_versions reviewed.
CAST_REVIEWED_UP_TO = 28
CASTLIKE_REVIEWED_UP_TO = 25


class CastToWorkingFloat(nn.Module):
    """Cast to the module's working float dtype (float32 unless the module was converted)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("precision", torch.empty(0, dtype=torch.float32), persistent=False)

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """``input_tensor`` as the dtype of the ``precision`` buffer."""
        return input_tensor.to(self.precision.dtype)


class CastLike(nn.Module):
    """ONNX CastLike: cast the first input to the dtype of the second."""

    def forward(self, input_tensor: torch.Tensor, target_type: torch.Tensor) -> torch.Tensor:
        """``input_tensor`` as ``target_type``'s dtype."""
        return input_tensor.to(target_type.dtype)


def convert_cast(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for Cast of any version."""
    del graph
    to = node.attributes.get("to")
    module = CastToWorkingFloat() if to == TensorProto.FLOAT else OnnxCast(to)
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


def convert_cast_like(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """Converter for CastLike of any version."""
    del graph
    return OperationConverterResult(
        torch_module=CastLike(), onnx_mapping=onnx_mapping_from_node(node)
    )


def install() -> list[tuple[str, int]]:
    """Use :func:`convert_cast` for every Cast version >= 9 and add CastLike."""
    added = []
    for version in registry.since_versions("Cast"):
        if not 9 <= version <= CAST_REVIEWED_UP_TO:
            continue
        if registry.supersede("Cast", version, convert_cast, _ONNX2TORCH_MODULE):
            added.append(("Cast", version))
    for version in registry.since_versions("CastLike"):
        if version <= CASTLIKE_REVIEWED_UP_TO and registry.register(
            "CastLike", version, convert_cast_like
        ):
            added.append(("CastLike", version))
    return added
