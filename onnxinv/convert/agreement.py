"""Check a converted module against onnxruntime; on disagreement, name the node responsible."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import fx

from ..errors import ConversionError, ModelError
from ..load import runtime
from .compare import agrees
from .diagnose import NodeRunError, first_disagreement, ort_values, torch_values
from .locate import one_line
from .nodes import node_infos
from .sample import graph_input


def run_torch(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """``module``'s output on ``x`` as a numpy array."""
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"converted module returned {type(out).__name__}, not a tensor")
    return out.detach().cpu().numpy()


def run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The model's single output on ``x`` according to onnxruntime.

    Raises:
        ModelError: onnxruntime cannot load or run the model on ``x``.
    """
    try:
        session = runtime.session(model.SerializeToString())
        return np.asarray(session.run(None, {graph_input(model).name: x})[0])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {one_line(exc)}") from exc


def _run_error(model: onnx.ModelProto, exc: BaseException) -> ConversionError:
    """The error for a module that raised; names the node when ``exc`` is a NodeRunError."""
    info, cause = None, exc
    if isinstance(exc, NodeRunError):
        info = {i.module_name: i for i in node_infos(model)}.get(exc.module_name)
        cause = exc.cause
    if info is None:
        return ConversionError(f"PyTorch conversion fails when run: {one_line(cause)}")
    return ConversionError(
        f"PyTorch conversion of node '{info.name}' ({info.short()}) fails when run: "
        f"{one_line(cause)}",
        op_type=info.op_type,
        node=info.name,
    )


def _diagnose(
    module: fx.GraphModule, model: onnx.ModelProto, x: np.ndarray, atol: float, difference: float
) -> ConversionError:
    try:
        found = first_disagreement(model, torch_values(module, x), ort_values(model, x), atol)
    except NodeRunError as exc:
        return _run_error(model, exc)
    except Exception as exc:  # onnxruntime could not run the probe model: report without a node
        return ConversionError(
            f"PyTorch conversion disagrees with onnxruntime (max difference {difference:.3g}); "
            f"no node-level diagnosis: {one_line(exc)}"
        )
    if found is None:
        return ConversionError(
            f"PyTorch conversion disagrees with onnxruntime (max difference {difference:.3g}) "
            "although no single node exceeds the tolerance"
        )
    info = found.node
    return ConversionError(
        f"PyTorch conversion of node '{info.name}' ({info.short()}) disagrees with onnxruntime "
        f"(max difference {found.difference:.3g})",
        op_type=info.op_type,
        node=info.name,
    )


def check(
    module: fx.GraphModule,
    model: onnx.ModelProto,
    x: np.ndarray,
    atol: float,
    reference: onnx.ModelProto | None = None,
) -> None:
    """Raise ConversionError unless ``module`` matches onnxruntime on ``x``.

    The outputs must agree within ``atol * max(1, max |onnxruntime output|)``. When they do not,
    or the module raises, the error names the first node of ``model`` (the model that was
    converted) that disagrees (or raises). ``reference``, when given, is the model whose
    onnxruntime output the module must match (the model as the user gave it).
    """
    expected = run_ort(model if reference is None else reference, x)
    try:
        actual = run_torch(module, x)
    except Exception as exc:
        try:
            torch_values(module, x)
        except NodeRunError as node_exc:
            raise _run_error(model, node_exc) from exc
        except Exception:  # the plain run's error is the better report
            pass
        raise _run_error(model, exc) from exc
    ok, difference = agrees(actual, expected, atol)
    if not ok:
        raise _diagnose(module, model, x, atol, difference)
