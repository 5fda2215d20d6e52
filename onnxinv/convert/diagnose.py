"""Find the first node whose PyTorch conversion disagrees with onnxruntime.

Both sides are run once on the same input while keeping every intermediate value: onnxruntime on
a copy of the model whose node outputs are all graph outputs, PyTorch through a
:class:`torch.fx.Interpreter` that records each onnx2torch submodule's result under the ONNX
value names of its ``onnx_mapping``. Values are compared in graph (topological) order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import fx

from ..load import runtime
from .compare import agrees
from .nodes import NodeInfo, node_infos
from .sample import graph_input


class NodeRunError(RuntimeError):
    """A converted submodule raised while running.

    Attributes:
        module_name: the onnx2torch submodule (= the node's generated name).
    """

    def __init__(self, module_name: str, cause: BaseException):
        super().__init__(str(cause))
        self.module_name = module_name
        self.cause = cause


class _Recorder(fx.Interpreter):
    """Runs a GraphModule and keeps every submodule's output by ONNX value name."""

    def __init__(self, module: fx.GraphModule):
        super().__init__(module)
        self.values: dict[str, np.ndarray] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:
            if n.op == "call_module":
                raise NodeRunError(str(n.target), exc) from exc
            raise
        if n.op == "call_module":
            self._record(self.module.get_submodule(str(n.target)), result)
        return result

    def _record(self, submodule: torch.nn.Module, result: Any) -> None:
        mapping = getattr(submodule, "onnx_mapping", None)
        if mapping is None:
            return
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for name, value in zip(mapping.outputs, outputs, strict=False):
            if name and isinstance(value, torch.Tensor):
                self.values[name] = value.detach().cpu().numpy()


def torch_values(module: fx.GraphModule, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every recorded intermediate value of ``module`` on ``x``.

    Raises:
        NodeRunError: a submodule raised.
    """
    recorder = _Recorder(module)
    with torch.no_grad():
        recorder.run(torch.from_numpy(x))
    return recorder.values


def ort_values(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every node output of ``model`` on ``x`` according to onnxruntime."""
    return runtime.all_values(model, {graph_input(model).name: x})


@dataclass(frozen=True)
class Disagreement:
    """The first node whose output differs, and by how much."""

    node: NodeInfo
    output: str
    difference: float


def first_disagreement(
    model: onnx.ModelProto,
    torch_vals: dict[str, np.ndarray],
    ort_vals: dict[str, np.ndarray],
    atol: float,
) -> Disagreement | None:
    """The first node (graph order) with an output outside tolerance, or None."""
    for info in node_infos(model):
        for name in info.proto.output:
            if name in torch_vals and name in ort_vals:
                ok, difference = agrees(torch_vals[name], ort_vals[name], atol)
                if not ok:
                    return Disagreement(info, name, difference)
    return None
