"""Small helpers around onnx2torch's converter registry and ONNX's schema history.

onnx2torch looks a converter up by the *since_version* of the operator's schema at the model's
opset, and needs an exact ``(domain, op_type, since_version)`` key in its registry. These helpers
read and extend that registry without ever replacing an entry by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from onnx import defs
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

ONNX_DOMAIN = ""


def key(op_type: str, version: int, domain: str = ONNX_DOMAIN) -> OperationDescription:
    """The registry key of ``op_type`` at schema ``version`` in ``domain``."""
    return OperationDescription(domain=domain, operation_type=op_type, version=version)


def lookup(op_type: str, version: int, domain: str = ONNX_DOMAIN) -> Converter | None:
    """The converter registered for exactly this since_version, or None."""
    return _CONVERTER_REGISTRY.get(key(op_type, version, domain))


def registered_versions(op_type: str, domain: str = ONNX_DOMAIN) -> list[int]:
    """Sorted since_versions of ``op_type`` that have a converter."""
    return sorted(
        k.version for k in _CONVERTER_REGISTRY if k.operation_type == op_type and k.domain == domain
    )


@cache
def since_versions(op_type: str, domain: str = ONNX_DOMAIN) -> tuple[int, ...]:
    """Every since_version of ``op_type`` that the installed onnx knows, ascending."""
    return tuple(
        sorted(
            {
                schema.since_version
                for schema in defs.get_all_schemas_with_history()
                if schema.name == op_type and schema.domain == domain
            }
        )
    )


def newest_below(op_type: str, version: int, domain: str = ONNX_DOMAIN) -> Converter | None:
    """The converter of the newest registered since_version strictly below ``version``."""
    older = [v for v in registered_versions(op_type, domain) if v < version]
    return lookup(op_type, older[-1], domain) if older else None


def register(op_type: str, version: int, converter: Converter, domain: str = ONNX_DOMAIN) -> bool:
    """Register ``converter`` unless the key already has one; True if it was added."""
    description = key(op_type, version, domain)
    if description in _CONVERTER_REGISTRY:
        return False
    _CONVERTER_REGISTRY[description] = converter
    return True


def replace(op_type: str, version: int, converter: Converter, domain: str = ONNX_DOMAIN) -> None:
    """Put ``converter`` at an existing key (used only where ours is a strict superset)."""
    _CONVERTER_REGISTRY[key(op_type, version, domain)] = converter


def unregister(op_type: str, version: int, domain: str = ONNX_DOMAIN) -> None:
    """Remove the converter at this key, if any (used to undo a temporary registration)."""
    _CONVERTER_REGISTRY.pop(key(op_type, version, domain), None)


def lookup_version(op_type: str, opset: int, domain: str = ONNX_DOMAIN) -> int:
    """The registry version onnx2torch looks ``op_type`` up by at the model's ``opset``.

    That is the since_version of the operator's schema at ``opset``, or ``opset`` itself for an
    operator onnx has no schema for (as ``onnx2torch...registry.get_converter`` does).
    """
    try:
        return defs.get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
    except (RuntimeError, defs.SchemaError):
        return opset


def supersede(op_type: str, version: int, converter: Converter, original_module: str) -> bool:
    """Register ``converter``, replacing an entry only if it comes from ``original_module``.

    Used where our converter is a strict superset of onnx2torch's own; an entry someone else put
    there (another library, a test) is left alone. True if the registry changed.
    """
    current = lookup(op_type, version)
    if current is converter:
        return False
    if current is None or current.__module__ == original_module:
        replace(op_type, version, converter)
        return True
    return False
