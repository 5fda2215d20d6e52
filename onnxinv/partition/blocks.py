"""Partition a pruned model into invertible and opaque blocks.

1. One onnxruntime run of a single random sample gives every tensor's value and shape.
2. *Data* tensors are those computed from the input's values; ``Shape``/``Size`` outputs and
   anything computed only from them and constants are folded into constants (the per-sample
   shape is static), though they still hang off the input in the graph.
3. *Cut* tensors are data tensors every input→output path passes through, paths through
   ``Shape`` included (so the graph above a cut can be cut out and run from it alone).
   Between two consecutive cuts lies a segment: one node computing data, with one data input
   (a rule candidate, perhaps with shape nodes computing its constants), or a subgraph
   (branches, residual sums, attention: opaque).
4. A one-node segment whose operator has a registered rule that accepts this node becomes an
   invertible step; consecutive steps form an invertible block, consecutive other segments an
   opaque block.
5. The partition's model declares the shapes of data tensors as the probe run showed them
   where shape inference cannot (a ``Shape`` → ``Concat`` → ``Reshape`` chain), so a sub-model
   cut out at any block boundary has an input of known shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import ModelError
from ..load import runtime
from ..load.graphs import reads
from ..load.model import LoadedModel
from ..rules import InverseRule, NodeContext, Registry, RuleNotApplicable
from ..rules.registry import RuleEntry

SHAPE_ONLY = ("Shape", "Size")


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
    nodes: list[onnx.NodeProto] = field(default_factory=list)  # opaque: the nodes computing data

    @property
    def ops(self) -> list[str]:
        nodes = [s.node for s in self.steps] if self.kind == "invertible" else self.nodes
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


def _downstream(model: onnx.ModelProto, x: str) -> tuple[set[str], set[str]]:
    """(data, flow): tensors computed from the *values* of ``x``, and from ``x`` at all.

    ``flow`` adds what depends on ``x`` only through ``Shape``/``Size`` (static per sample,
    so folded into constants for the rules, but still computed from ``x`` in the graph).
    """
    data, flow = {x}, {x}
    for node in model.graph.node:
        names = reads(node)
        if any(i in flow for i in names):
            flow.update(o for o in node.output if o)
        if node.op_type not in SHAPE_ONLY and any(i in data for i in names):
            data.update(o for o in node.output if o)
    return data, flow


def _data_tensors(model: onnx.ModelProto, x: str) -> set[str]:
    return _downstream(model, x)[0]


def _cuts(
    nodes: list[onnx.NodeProto], tensors: set[str], flow: set[str], x: str, y: str
) -> list[tuple[int, str]]:
    """``(i, t)``: after node ``i`` everything still to compute depends on ``x`` through ``t``.

    A cut is a data tensor ``t`` that every path from ``x`` to ``y`` passes through, shape
    paths included: the graph from ``t`` to ``y`` needs nothing else computed from ``x`` (a
    ``Shape`` of an earlier tensor read after ``t`` would make that sub-graph unextractable).
    Only ``tensors`` (data tensors whose value the probe run gave: not sequences) can be cuts.
    """
    consumers: dict[str, int] = {}
    for n in nodes:
        for i in set(reads(n)) & flow:
            consumers[i] = consumers.get(i, 0) + 1
    consumers[y] = consumers.get(y, 0) + 1  # the graph output is consumed by the target
    open_ = {x: consumers.get(x, 0)}
    cuts: list[tuple[int, str]] = []
    last = x
    for k, n in enumerate(nodes):
        for i in set(reads(n)) & flow:
            open_[i] -= 1
            if open_[i] == 0:
                del open_[i]
        for o in n.output:
            if o in flow and consumers.get(o, 0) > 0:
                open_[o] = consumers[o]
        if len(open_) == 1:
            (t,) = open_
            if t in tensors and t != last:
                cuts.append((k, t))
                last = t
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


def partition(loaded: LoadedModel, registry: Registry, seed: int = 0) -> Partition:
    """Partition ``loaded.pruned`` into blocks using the rules of ``registry``."""
    model = loaded.pruned
    x, y = loaded.input_name, loaded.output_name
    batched = loaded.batch_axis
    rng = np.random.default_rng(seed + 3)
    feed = rng.random(loaded.run_shape).astype(loaded.input_dtype)
    values = runtime.all_values(model, {x: feed})
    values[x] = feed
    for init in model.graph.initializer:
        values[init.name] = numpy_helper.to_array(init)
    data = _data_tensors(model, x)
    shapes = {
        t: tuple(v.shape[1:] if batched and v.ndim and v.shape[0] == 1 else v.shape)
        for t, v in values.items()
        if t in data
    }
    if y not in data:
        raise ModelError(
            f"output {y!r} depends on input {x!r} only through its shape, not its values: "
            "there is nothing to invert"
        )
    flow = _downstream(model, x)[1]
    nodes = [n for n in model.graph.node if any(i in flow for i in reads(n))]
    opsets = {o.domain or "": o.version for o in model.opset_import}

    segments: list[tuple[str, str, list[onnx.NodeProto]]] = []
    start, entry_tensor = 0, x
    cuts = _cuts(nodes, set(shapes), flow, x, y)
    for k, t in cuts:
        segments.append((entry_tensor, t, nodes[start : k + 1]))
        start, entry_tensor = k + 1, t
    if entry_tensor != y:  # not reached in a pruned graph, where y is the last cut
        segments.append((entry_tensor, y, nodes[start:]))

    # A top-only rule may sit below Identity nodes that end the graph.
    tops, producer = {y}, {o: n for n in nodes for o in n.output}
    while y in producer and producer[y].op_type == "Identity":
        y = producer[y].input[0]
        tops.add(y)
    y = loaded.output_name

    blocks: list[Block] = []
    for s_in, s_out, seg in segments:
        # The nodes computing data; the others compute shapes (folded into constants).
        core = [n for n in seg if any(o in data for o in n.output)]
        step = None
        if len(core) == 1:
            node = core[0]
            step = Step(node, s_in, s_out)
            domain = node.domain or ""
            entry = registry.resolve(domain, node.op_type, opsets.get(domain, 1))
            if entry is None:
                step.reason = "no inverse rule registered"
            elif entry.rule.top_only and s_out not in tops:
                step.reason = f"{node.op_type} inside the graph is solved numerically"
            elif s_out != node.output[0]:
                step.reason = f"the data continues from its output {s_out!r}, not its first"
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
            blocks[-1].nodes.extend(core)
            blocks[-1].output = s_out
            if step is not None:
                blocks[-1].steps.append(step)
        else:
            blocks.append(
                Block("opaque", s_in, s_out, steps=[step] if step else [], nodes=list(core))
            )
    boundaries = {t for _, t in cuts}  # where blocks (and LM within a block) may start
    return Partition(blocks, shapes, _with_shapes(model, values, boundaries, loaded.batched), x, y)


def _with_shapes(
    model: onnx.ModelProto, values: dict[str, np.ndarray], names: set[str], batched: bool
) -> onnx.ModelProto:
    """A copy of ``model`` declaring the shapes of tensors ``names`` as the probe run saw them.

    Shape inference cannot follow shapes computed at run time (``Shape`` → ``Concat`` →
    ``Reshape``, as the TorchScript exporter writes them), and a sub-model cut out at such a
    tensor would get an input of unknown shape. A model run one sample at a time always sees
    the probe's shapes, so they are declared as they are; in a batched model only where
    inference left a dimension after the first unknown, with a symbolic leading (batch)
    dimension.
    """
    inferred = _inferred_shapes(model) if batched else {}
    batch = "N"
    for vi in model.graph.input:
        if vi.type.tensor_type.shape.dim:
            d0 = vi.type.tensor_type.shape.dim[0]
            batch = d0.dim_param if d0.HasField("dim_param") else batch
    io = {vi.name for vi in model.graph.input} | {vi.name for vi in model.graph.output}
    declared = []
    for name in sorted(names - io):
        v = values.get(name)
        if not isinstance(v, np.ndarray) or v.dtype.kind not in "fiub":
            continue
        dims: list[int | str] = list(v.shape)
        if batched:
            known = inferred.get(name)
            if known is not None and all(isinstance(d, int) for d in known[1:]):
                continue
            if not dims or dims[0] != 1:
                continue
            dims[0] = batch
        elem = onnx.helper.np_dtype_to_tensor_dtype(v.dtype)
        declared.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    if not declared:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    replaced = {vi.name for vi in declared}
    kept = [vi for vi in out.graph.value_info if vi.name not in replaced]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept + declared)
    return out


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Tensor name → dims as shape inference finds them (an int per known dimension)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    shapes = {}
    for vi in inferred.graph.value_info:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            shapes[vi.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            ]
    return shapes


def _keeps_batch(values: dict[str, np.ndarray], node: onnx.NodeProto, data: set[str]) -> bool:
    """With a batch of one, data tensors must keep a leading dimension of 1."""
    return all(
        values[t].ndim >= 1 and values[t].shape[0] == 1
        for t in [*node.input, *node.output]
        if t in data and t in values
    )


def describe(part: Partition, max_condition: float = 100.0, probe: bool = True) -> list[str]:
    """Lines for ``onnxinv inspect``: each block, its method and its operators.

    ``probe=False`` leaves out whether affine maps too large for a matrix are onto (each such
    check is an iterative solve: minutes for the convolutions of a 224×224 CNN).
    """
    lines = []
    for i, b in enumerate(part.blocks):
        method = "backward (exact inverse rules)" if b.kind == "invertible" else "forward (LM)"
        ops = " → ".join(b.ops)
        lines.append(f"  block {i}: {b.kind:<10} {method:<30} {b.input!r} → {b.output!r}: {ops}")
        for step in b.steps if b.kind == "invertible" else []:
            if step.rule.kind != "affine" or (not probe and getattr(step.rule, "large", False)):
                continue
            if not step.rule.onto(max_condition):
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
