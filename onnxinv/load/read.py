"""Read a model from a path (with its external data), bytes or a ModelProto, checked and repaired.

What :func:`read_model` returns is a copy: the repairs of :mod:`onnxinv.load.repair` never
touch the caller's model, and each one is a note.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from ..errors import ModelError, first_line
from . import repair

ModelLike = str | os.PathLike | bytes | onnx.ModelProto


def read_model(model: ModelLike) -> tuple[onnx.ModelProto, str, list[str]]:
    """Read a path, bytes or ModelProto into a checked ModelProto, a short name and notes.

    Safe repairs (topological order, old-IR initializers) are made on a copy and described in
    the notes; a checker complaint that onnxruntime does not share becomes a note too.
    """
    if isinstance(model, onnx.ModelProto):
        proto, name = model, (model.graph.name or "model")
    elif isinstance(model, bytes | bytearray):
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:
            raise ModelError(f"the bytes given are not an ONNX model ({first_line(exc)})") from None
        name = proto.graph.name or "model"
    elif isinstance(model, str | os.PathLike):
        path = Path(model)
        proto = _read_file(path)
        name = path.stem
    else:
        raise ModelError(
            f"model must be a path, bytes or onnx.ModelProto, not {type(model).__name__}"
        )
    if not proto.graph.node:
        raise ModelError(f"model {name!r} has no nodes")
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # repairs never touch the caller's model
    notes = repair.check(copy, name)
    return copy, name, notes


def _read_file(path: Path) -> onnx.ModelProto:
    """The model in file ``path``, its external data (files beside it) loaded."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelError(f"model path is not a file: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path} is not an ONNX model ({first_line(exc)})") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path} is not an ONNX model (no graph in it)")
    for tensor in proto.graph.initializer:
        if onnx.external_data_helper.uses_external_data(tensor):
            location = onnx.external_data_helper.ExternalDataInfo(tensor).location
            if not (path.parent / location).is_file():
                raise ModelError(
                    f"{path} refers to external data {location!r} that is not beside it"
                )
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except FileNotFoundError as exc:
        missing = Path(exc.filename).name if exc.filename else "a data file"
        raise ModelError(
            f"{path} refers to external data {missing!r} that is not beside it"
        ) from None
    except Exception as exc:
        raise ModelError(f"cannot load external data of {path}: {first_line(exc)}") from None
    return proto
