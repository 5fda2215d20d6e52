"""Accept what onnxruntime accepts: small, safe repairs of a model before it is used.

Exporters write graphs that the ONNX checker rejects but onnxruntime runs (nodes out of
topological order, old-IR models whose initializers are not listed as inputs), and old models
use operator versions onnxruntime no longer has kernels for. Each repair here leaves what the
model computes unchanged, and each one is reported as a note, never done silently:

* :func:`topological_sort` – reorder nodes so every input is produced before it is read;
* :func:`list_initializers_as_inputs` – IR < 4 requires initializers to be graph inputs;
* :func:`check` – the checker after those repairs; a complaint left that onnxruntime does not
  share becomes a note, one it shares is a :class:`~onnxinv.errors.ModelError`;
* :func:`runnable` – when onnxruntime has no kernel for an operator version, the model is
  upgraded with ``onnx.version_converter`` (the note names the operator and both opsets).
"""

from __future__ import annotations

import re

import onnx

from ..errors import ModelError, first_line
from . import runtime
from .graphs import reads

#: Opsets tried, in order, when onnxruntime has no kernel for an old operator version.
UPGRADE_OPSETS = (13, 17, 11, 21)


def is_sorted(graph: onnx.GraphProto) -> bool:
    """Whether every node's inputs are graph inputs, initializers or earlier nodes' outputs."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        if any(name not in known for name in reads(node)):
            return False
        known.update(node.output)
    return True


def topological_sort(graph: onnx.GraphProto) -> bool:
    """Reorder ``graph.node`` in place so producers come first (stable); True if it changed.

    Nodes whose inputs nothing produces keep their relative order at the end, so the checker
    can still name them.
    """
    if is_sorted(graph):
        return False
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    producers = {o for n in graph.node for o in n.output if o}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    progress = True
    while pending and progress:
        progress = False
        rest = []
        for node in pending:
            needs = [n for n in reads(node) if n in producers]
            if all(n in known for n in needs):
                ordered.append(node)
                known.update(node.output)
                progress = True
            else:
                rest.append(node)
        pending = rest
    ordered += pending
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return True


def list_initializers_as_inputs(model: onnx.ModelProto) -> list[str]:
    """For IR < 4, add a graph input for every initializer that has none; returns their names."""
    if model.ir_version >= 4:
        return []
    listed = {i.name for i in model.graph.input}
    added = []
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
            added.append(init.name)
    return added


def check(model: onnx.ModelProto, name: str) -> list[str]:
    """Repair ``model`` in place where it is safe and run the checker; returns notes.

    Raises:
        ModelError: the checker rejects the model and so does onnxruntime.
    """
    notes: list[str] = []
    if topological_sort(model.graph):
        notes.append("the graph's nodes were not in topological order; onnxinv sorted them")
    added = list_initializers_as_inputs(model)
    if added:
        notes.append(
            f"IR version {model.ir_version} model: listed {len(added)} initializer(s) as graph "
            "inputs, as that IR version requires"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        complaint = first_line(exc)
        try:
            runtime.session(model.SerializeToString(), quiet=True)
        except Exception as ort_exc:
            raise ModelError(
                f"model {name!r} fails the ONNX checker: {complaint} (onnxruntime cannot load "
                f"it either: {first_line(ort_exc)})"
            ) from None
        notes.append(f"the ONNX checker reports: {complaint}; onnxruntime runs the model")
    return notes


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")


def runnable(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model``, or an upgraded copy onnxruntime can load, with a note saying why.

    Raises:
        ModelError: onnxruntime cannot load the model and upgrading does not help; the message
            names the operator and its version when onnxruntime does.
    """
    try:
        runtime.session(model.SerializeToString(), quiet=True)
        return model, []
    except Exception as exc:
        reason = first_line(exc)
    missing = _NO_KERNEL.search(reason)
    if missing is None:
        raise ModelError(f"onnxruntime cannot load the model: {reason}")
    op, version = missing.group(1), missing.group(2)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    last = "no opset to upgrade from"
    for target in UPGRADE_OPSETS:
        if opset is None or target <= opset:
            continue
        try:
            upgraded = onnx.version_converter.convert_version(model, target)
            runtime.session(upgraded.SerializeToString(), quiet=True)
        except Exception as exc:
            last = first_line(exc)
            continue
        return upgraded, [
            f"onnxruntime has no kernel for {op}({version}); the model was upgraded from "
            f"opset {opset} to {target} with onnx.version_converter, and every run, "
            "verification included, uses the upgraded model"
        ]
    raise ModelError(
        f"onnxruntime has no kernel for {op} at version {version} (model opset {opset}) and "
        f"onnx.version_converter could not upgrade it ({last})"
    )
