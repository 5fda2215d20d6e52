"""Partition a pruned model into invertible and opaque blocks.

1. One onnxruntime run of a single random sample gives every tensor's value and shape.
2. *Data* tensors are those computed from the input; ``Shape``/``Size`` outputs and anything
   computed only from them and constants are folded into constants (the per-sample shape is
   static).
3. *Cut* tensors are data tensors every input→output path passes through. Between two
   consecutive cuts lies a segment: one node with one data input (a rule candidate) or a
   subgraph (branches, residual sums, attention: opaque).
4. A one-node segment whose operator has a registered rule that accepts this node becomes an
   invertible step; consecutive steps form an invertible block, consecutive other segments an
   opaque block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from . import _ort
from .model import LoadedModel
from .rules import InverseRule, NodeContext, Registry, RuleNotApplicable
from .rules.registry import RuleEntry

SHAPE_ONLY = ("Shape", "Size")
TOP_ONLY = ("Softmax", "LogSoftmax")  # need a point on the probability simplex above them


@dataclass
class Step:
    """One node on the data path with its rule (or why it has none)."""

    node: onnx.NodeProto
    input: str
    output: str
    entry: RuleEntry | None = None
    rule: InverseRule | None = None
    reason: str | None = None

    @property
    def label(self) -> str:
        return f"{self.node.op_type} {self.node.name!r}" if self.node.name else self.node.op_type


@dataclass
class Block:
    """A maximal run of invertible steps, or of nodes solved numerically (opaque)."""

    kind: str  # "invertible" | "opaque"
    input: str
    output: str
    steps: list[Step] = field(default_factory=list)
    nodes: list[onnx.NodeProto] = field(default_factory=list)

    @property
    def ops(self) -> list[str]:
        nodes = [s.node for s in self.steps] if self.steps else self.nodes
        return [n.op_type for n in nodes]


@dataclass
class Partition:
    """The blocks of a model from input to output, and what each tensor looks like."""

    blocks: list[Block]
    shapes: dict[str, tuple[int, ...]]  # per-sample shapes of data tensors
    model: onnx.ModelProto
    input: str
    output: str

    @property
    def first_without_rule(self) -> Step | None:
        """The first single-node segment that has no usable rule, if any."""
        return next((s for b in self.blocks if b.kind == "opaque" for s in b.steps), None)

    @property
    def fully_invertible(self) -> bool:
        return all(b.kind == "invertible" for b in self.blocks)


def _data_tensors(model: onnx.ModelProto, x: str) -> set[str]:
    data = {x}
    for node in model.graph.node:
        if node.op_type in SHAPE_ONLY:
            continue
        if any(i in data for i in node.input if i):
            data.update(o for o in node.output if o)
    return data


def _cuts(nodes: list[onnx.NodeProto], data: set[str], x: str, y: str) -> list[int]:
    """Indices i such that after data-path node i only one data tensor is still needed."""
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in {i for i in n.input if i in data}:
            consumers[i] = consumers.get(i, 0) + 1
    consumers[y] = consumers.get(y, 0) + 1  # the graph output is consumed by the target
    open_ = {x: consumers.get(x, 0)}
    cuts = []
    for k, n in enumerate(nodes):
        for i in {i for i in n.input if i in data}:
            open_[i] -= 1
            if open_[i] == 0:
                del open_[i]
        for o in n.output:
            if o in data and consumers.get(o, 0) > 0:
                open_[o] = consumers[o]
        if len(open_) == 1:
            cuts.append(k)
    return cuts


def _context(
    node: onnx.NodeProto,
    data: set[str],
    values: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    opset: int,
    since: int,
    batched: bool,
) -> NodeContext:
    data_inputs = [k for k, i in enumerate(node.input) if i in data]
    constants = {
        k: values[i] for k, i in enumerate(node.input) if i and i not in data and i in values
    }
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    return NodeContext(
        node=node,
        opset=opset,
        since_version=since,
        attrs=attrs,
        constants=constants,
        data_input=data_inputs[0],
        input_shape=shapes[node.input[data_inputs[0]]],
        output_shape=shapes[node.output[0]],
        batched=batched,
    )


def partition(lm: LoadedModel, registry: Registry, seed: int = 0) -> Partition:
    """Partition ``lm.pruned`` into blocks using the rules of ``registry``."""
    model = lm.pruned
    x, y = lm.input_name, lm.output_name
    batched = lm.batch_axis
    rng = np.random.default_rng(seed + 3)
    feed = rng.random(lm.run_shape).astype(lm.input_dtype)
    values = _ort.all_values(model, {x: feed})
    values[x] = feed
    for init in model.graph.initializer:
        values[init.name] = numpy_helper.to_array(init)
    data = _data_tensors(model, x)
    shapes = {
        t: tuple(v.shape[1:] if batched and v.ndim and v.shape[0] == 1 else v.shape)
        for t, v in values.items()
        if t in data
    }
    nodes = [n for n in model.graph.node if any(i in data for i in n.input if i)]
    opsets = {o.domain or "": o.version for o in model.opset_import}
    cuts = _cuts(nodes, data, x, y)

    segments: list[tuple[str, str, list[onnx.NodeProto]]] = []
    start, entry_tensor = 0, x
    for k in cuts:
        seg = nodes[start : k + 1]
        out = next(o for o in nodes[k].output if o in data)
        segments.append((entry_tensor, out, seg))
        start, entry_tensor = k + 1, out
    if start < len(nodes):
        segments.append((entry_tensor, y, nodes[start:]))

    blocks: list[Block] = []
    for s_in, s_out, seg in segments:
        step = None
        if len(seg) == 1:
            node = seg[0]
            step = Step(node, s_in, s_out)
            domain = node.domain or ""
            entry = registry.resolve(domain, node.op_type, opsets.get(domain, 1))
            if entry is None:
                step.reason = "no inverse rule registered"
            elif node.op_type in TOP_ONLY and s_out != y:
                step.reason = f"{node.op_type} inside the graph is solved numerically"
            elif batched and not _keeps_batch(values, node, data):
                step.reason = "it mixes samples of the batch"
            else:
                step.entry = entry
                try:
                    ctx = _context(
                        node, data, values, shapes, opsets.get(domain, 1), entry.version, batched
                    )
                    step.rule = entry.rule(ctx)
                except RuleNotApplicable as exc:
                    step.reason = str(exc)
        if step is not None and step.rule is not None:
            if blocks and blocks[-1].kind == "invertible":
                blocks[-1].steps.append(step)
                blocks[-1].output = s_out
            else:
                blocks.append(Block("invertible", s_in, s_out, steps=[step]))
            continue
        if blocks and blocks[-1].kind == "opaque":
            blocks[-1].nodes.extend(seg)
            blocks[-1].output = s_out
            if step is not None:
                blocks[-1].steps.append(step)
        else:
            blocks.append(
                Block("opaque", s_in, s_out, steps=[step] if step else [], nodes=list(seg))
            )
    return Partition(blocks, shapes, model, x, y)


def _keeps_batch(values: dict[str, np.ndarray], node: onnx.NodeProto, data: set[str]) -> bool:
    """With a batch of one, data tensors must keep a leading dimension of 1."""
    return all(
        values[t].ndim >= 1 and values[t].shape[0] == 1
        for t in [*node.input, *node.output]
        if t in data and t in values
    )


def describe(part: Partition, max_condition: float = 100.0) -> list[str]:
    """Lines for ``onnxinv inspect``: each block, its method and its operators."""
    lines = []
    for i, b in enumerate(part.blocks):
        method = "backward (exact inverse rules)" if b.kind == "invertible" else "forward (LM)"
        ops = " → ".join(b.ops)
        lines.append(f"  block {i}: {b.kind:<10} {method:<30} {b.input!r} → {b.output!r}: {ops}")
        for step in b.steps if b.kind == "invertible" else []:
            if step.rule.kind == "affine" and not step.rule.onto(max_condition):
                lines.append(
                    f"    {step.label} is not onto (its output has more dimensions than its "
                    "rank): LM solves from the block's input up to a family above it"
                )
    first = part.first_without_rule
    if first is not None:
        lines.append(f"  first node without a rule: {first.label} ({first.reason})")
    elif any(b.kind == "opaque" for b in part.blocks):
        b = next(b for b in part.blocks if b.kind == "opaque")
        lines.append(
            f"  first opaque node: {b.nodes[0].op_type} {b.nodes[0].name!r} (a branch "
            "or a node with several data inputs)"
        )
    return lines
