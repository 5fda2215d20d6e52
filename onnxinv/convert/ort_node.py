"""A PyTorch module that runs one ONNX node in onnxruntime, differentiable by finite differences.

:class:`OrtNode` stands in for a node that onnx2torch cannot convert. Its forward pass is the
node run alone by onnxruntime (:class:`~.single_node.NodeRunner`); its backward pass is the
vector-Jacobian product of that node's own Jacobian, taken by central differences
(:mod:`.node_jacobian`). The module follows ``.float()``/``.double()``/``.to(device)``: floating
outputs come back in the module's dtype, on its inputs' device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from .node_jacobian import Differencer, Layout, independent, precision
from .single_node import NodeRunner


class OrtNode(torch.nn.Module):
    """One ONNX node run by onnxruntime; gradients by central differences of that node alone.

    Args:
        runner: runs the node on its fed inputs.
        name: the node's name, for messages.
        op_type: the node's operator, for messages.
        layout: the batch axes of its fed inputs and outputs, or None when unknown.
        reason: why the node is not converted, for messages.

    Calling it returns the node's output, or a tuple of its outputs (None where an optional
    output is omitted) when the node has several.
    """

    def __init__(
        self,
        runner: NodeRunner,
        name: str,
        op_type: str,
        layout: Layout | None,
        reason: str = "",
    ):
        super().__init__()
        self.runner = runner
        self.node_name = name
        self.op_type = op_type
        self.reason = reason
        self.layout = layout
        self.batch_independent: bool | None = None  # checked on the first batched backward
        # An empty buffer that .float(), .double() and .to() convert: the module's float dtype.
        self.register_buffer("working_dtype", torch.zeros(0), persistent=False)

    def extra_repr(self) -> str:
        return f"node={self.node_name!r}, op_type={self.op_type!r}"

    def forward(self, *inputs: torch.Tensor) -> Any:
        present = _NodeFunction.apply(self, *inputs)
        outputs: list[torch.Tensor | None] = []
        found = iter(present)
        for name in self.runner.spec.outputs:
            outputs.append(next(found) if name else None)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def layout_for(self, fed: list[np.ndarray], used: list[int]) -> Layout | None:
        """The batch layout to difference with, or None to difference every value."""
        layout = self.layout
        if layout is None or not layout.batched(fed, used):
            return None
        if self.batch_independent is None:
            self.batch_independent = independent(self.runner.run, fed, layout, used)
        return layout if self.batch_independent else None


class _NodeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, node: OrtNode, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays = [t.detach().cpu().numpy() for t in inputs]
        values = node.runner.run(arrays)
        dtypes = node.runner.compute_dtypes(arrays)  # after the run: the precision that worked
        fed = [np.asarray(a, dtype=d) for a, d in zip(arrays, dtypes, strict=True)]
        device = inputs[0].device if inputs else node.working_dtype.device
        outputs = []
        for value in values:
            if value is None:
                continue
            tensor = torch.from_numpy(np.array(value))
            if tensor.is_floating_point():
                tensor = tensor.to(node.working_dtype.dtype)
            outputs.append(tensor.to(device))
        ctx.node, ctx.fed, ctx.differencers = node, fed, {}
        ctx.positions = [i for i, v in enumerate(values) if v is not None]
        ctx.shapes = [None if v is None else tuple(np.shape(v)) for v in values]
        ctx.dtypes = [None if v is None else np.asarray(v).dtype for v in values]
        ctx.input_meta = [(t.dtype, t.device) for t in inputs]
        ctx.mark_non_differentiable(*[t for t in outputs if not t.is_floating_point()])
        return tuple(outputs)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        node: OrtNode = ctx.node
        wrt = [i for i, need in enumerate(ctx.needs_input_grad[1:]) if need]
        result: list[torch.Tensor | None] = [None] * len(ctx.fed)
        chosen = [
            (position, g)
            for position, g in zip(ctx.positions, grads, strict=True)
            if g is not None and g.is_floating_point() and bool(g.any())
        ]
        if wrt and not chosen:
            for i in wrt:
                result[i] = torch.zeros(ctx.fed[i].shape, dtype=ctx.input_meta[i][0])
        if wrt and chosen:
            used = [position for position, _ in chosen]
            key = tuple(used)
            if key not in ctx.differencers:
                layout = node.layout_for(ctx.fed, used)
                dtypes = [ctx.fed[i].dtype for i in wrt] + [ctx.dtypes[o] for o in used]
                ctx.differencers[key] = Differencer(
                    node.runner.run,
                    ctx.fed,
                    wrt,
                    used,
                    ctx.shapes,
                    precision(dtypes),
                    layout,
                    (node.node_name, node.op_type, node.reason),
                )
            arrays = [g.detach().cpu().numpy() for _, g in chosen]
            for i, grad in zip(wrt, ctx.differencers[key].vjp(arrays), strict=True):
                result[i] = torch.from_numpy(np.ascontiguousarray(grad))
        for i in wrt:
            dtype, device = ctx.input_meta[i]
            result[i] = result[i].to(dtype=dtype, device=device)  # type: ignore[union-attr]
        return (None, *result)
