"""Make a converted GraphModule return exactly the model's graph output.

onnx2torch makes the GraphModule return the whole result of the node producing the graph output,
so when that node has several outputs (Split, TopK, ...) the module returns all of them. This
appends a selection of the right one.
"""

from __future__ import annotations

from typing import Any

import onnx
from torch import fx

from .nodes import producers


def pick(value: Any, index: int) -> Any:
    """``value[index]`` when ``value`` is a tuple or list, else ``value`` itself."""
    return value[index] if isinstance(value, (tuple, list)) else value


def select_graph_output(module: fx.GraphModule, model: onnx.ModelProto) -> fx.GraphModule:
    """Return ``module`` changed in place to output only ``model``'s single graph output."""
    name = model.graph.output[0].name
    produced = producers(model).get(name)
    if produced is None or len([o for o in produced[0].proto.output if o]) < 2:
        return module
    index = list(produced[0].proto.output).index(name)
    graph = module.graph
    output_node = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output_node):
        picked = graph.call_function(pick, args=(output_node.args[0], index))
    output_node.args = (picked,)
    graph.lint()
    module.recompile()
    return module
