"""ONNX operator schemas: which version of an operator is in force at a model's opset.

Inverse rules and torch converters are both keyed by ``(domain, op_type, since_version)``; both
resolve a model's node through :func:`schema_version`, so they agree on which version applies.
"""

from __future__ import annotations

from onnx import defs


def schema_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The since_version of ``op_type``'s schema at ``opset``, or None if onnx has no schema."""
    try:
        return defs.get_schema(op_type, max_inclusive_version=opset, domain=domain).since_version
    except (RuntimeError, defs.SchemaError):
        return None
