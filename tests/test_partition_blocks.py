"""``graph.partition`` on any DAG onnxruntime runs: contiguous blocks that compose to the model.

The property test builds random small ONNX graphs with ``onnx.helper`` (float input [N, d],
N symbolic or, as the dynamo exporter writes it, a fixed 1): a chain of operators with and without inverse rules, branches off earlier tensors,
residual sums, tensors read by several nodes, Concat of two branches, Split then Add (or Split
with an output left unused), a detour through a tensor sequence, Reshape targets computed from ``Shape`` (as the TorchScript
exporter writes them, sometimes from an earlier tensor than the one reshaped), constants as
``Constant`` nodes or initializers, and sometimes several graph outputs of which one is chosen.
For each, the partition must be contiguous from the input to the chosen output, and running its
blocks one after another (each invertible step's ``rule.forward`` in numpy, each opaque block's
sub-model in onnxruntime) must reproduce onnxruntime on the whole pruned model. ``load`` or
``partition`` may refuse a model with a :class:`ModelError`, never with anything else; neither
may ``describe`` nor the construction of a :class:`BackwardPass`.

The ViT tests are the regression for a crash: a ``Shape`` node reading a data tensor used to be
taken for a cut with no data output (``StopIteration`` in ``partition``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_solved, export, make_model, value_info
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import onnxinv
from onnxinv import objective as objective_mod
from onnxinv.errors import ModelError
from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import describe, partition
from onnxinv.rules import default_registry
from onnxinv.settings import Settings
from onnxinv.solvers.backward.plan import BackwardPass
from onnxinv.solvers.base import ModelProblem
from onnxinv.target import Target

REGISTRY = default_registry()
BATCH = 3
RTOL = 1e-4

# ------------------------------------------------------------------------------ graph generator

UNARY = (
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "Selu",
    "Elu",
    "Softplus",
    "Relu",
    "Abs",
    "Cos",
    "Sin",
    "Erf",
)
OPS = (
    "gemm",
    "matmul",
    "add_const",
    "mul_const",
    "sub_const",
    "div_const",
    "unary",
    "reshape",
    "reshape_from_shape",
    "reshape_from_shape",
    "flatten",
    "transpose",
    "softmax",
    "layernorm",
    "residual",
    "residual",
    "sum_two",
    "concat_gemm",
    "split_add",
    "split_one",
    "scale_from_shape",
    "sequence",
)


@dataclass
class Graph:
    """A model under construction: tensors with their per-sample shapes."""

    draw: object
    opset: int
    rng: np.random.Generator
    batch: int | str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    count: int = 0
    ops: list[str] = field(default_factory=list)

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array, dtype=np.float32) -> str:
        """A constant input, as an initializer or a Constant node (drawn)."""
        name = self.name("c")
        tensor = numpy_helper.from_array(np.asarray(array, dtype=dtype), name)
        if self.draw(st.booleans()):
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        return name

    def weights(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        fan_in = shape[0] if shape else 1
        return self.rng.normal(0, scale / np.sqrt(fan_in), shape).astype(np.float32)

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.add(out, shape)
        return out

    def add(self, name: str, shape: tuple[int, ...]) -> None:
        self.shapes[name] = tuple(shape)
        self.order.append(name)

    def pick(self, want=None) -> str | None:
        """The newest tensor, or (drawn) an earlier one: branches and multiple consumers."""
        names = [n for n in self.order if want is None or want(self.shapes[n])]
        if not names:
            return None
        if self.draw(st.integers(0, 2)) == 0:
            return self.draw(st.sampled_from(names))
        return names[-1]

    def flat(self, t: str) -> str:
        """``t`` as [N, k] (a Flatten when it has more dimensions)."""
        if len(self.shapes[t]) == 1:
            return t
        return self.node("Flatten", [t], (int(np.prod(self.shapes[t])),), axis=1)

    # -- operators ----------------------------------------------------------------------------
    def gemm(self, t: str, m: int | None = None) -> str:
        t = self.flat(t)
        (k,) = self.shapes[t]
        m = m or self.draw(st.integers(1, 5))
        trans = self.draw(st.booleans())
        w = self.weights(k, m)
        inputs = [t, self.const(w.T if trans else w)]
        if self.draw(st.booleans()):
            bias = self.weights(m, scale=0.3)
            inputs.append(self.const(bias.reshape(1, m) if self.draw(st.booleans()) else bias))
        attrs = {"transB": 1} if trans else {}
        if self.draw(st.booleans()):
            attrs["alpha"] = self.draw(st.sampled_from([0.5, 2.0]))
        return self.node("Gemm", inputs, (m,), **attrs)

    def matmul(self, t: str) -> str:
        *lead, k = self.shapes[t]
        m = self.draw(st.integers(1, 5))
        return self.node("MatMul", [t, self.const(self.weights(k, m))], (*lead, m))

    def elementwise_const(self, t: str, op: str) -> str:
        shape = self.shapes[t]
        form = self.draw(st.sampled_from(["scalar", "last", "full", "batch1"]))
        cshape = {"scalar": (), "last": shape[-1:], "full": shape, "batch1": (1, *shape)}[form]
        c = self.weights(*cshape, scale=1.0) if cshape else np.float32(self.weights(1)[0])
        if op == "Div":
            c = np.where(np.abs(c) < 0.2, 0.5, c).astype(np.float32)
        name = self.const(c)
        first = op == "Div" or self.draw(st.booleans())
        return self.node(op, [t, name] if first else [name, t], shape)

    def unary(self, t: str) -> str:
        op = self.draw(st.sampled_from(UNARY))
        attrs = {}
        if op == "LeakyRelu":
            attrs["alpha"] = self.draw(st.sampled_from([0.01, 0.2, 1.5]))
        return self.node(op, [t], self.shapes[t], **attrs)

    def reshape(self, t: str) -> str:
        """A constant target; with a fixed batch of 1 sometimes [1, ..., -1], which cannot run
        batches (the model is then run one sample at a time)."""
        shape = self.shapes[t]
        size = int(np.prod(shape))
        first = self.draw(st.sampled_from([0, -1] if self.batch != 1 else [1, 0, -1, 1]))
        if len(shape) == 1:
            a = self.draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
            new = (a, size // a)
            target = [first, a, -1 if first == 1 else size // a]
        else:
            new = (size,)
            target = [first, size] if first == -1 else [first, -1]
        return self.node("Reshape", [t, self.const(target, np.int64)], new)

    def reshape_from_shape(self, t: str, to: tuple[int, ...] | None = None) -> str:
        """Reshape to [batch, *to] with the batch read by Shape (of ``t`` or an earlier tensor).

        As the TorchScript exporter writes ``x.view(x.size(0), a, b)``; from an earlier tensor
        the shape path goes around the tensors in between.
        """
        size = int(np.prod(self.shapes[t]))
        if to is None:
            a = self.draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
            to = (a, size // a)
        source = self.draw(st.sampled_from([t, *self.order]))
        dims = self.name("shape")
        self.nodes.append(helper.make_node("Shape", [source], [dims]))
        batch = self.name("batch")
        starts, ends = self.const([0], np.int64), self.const([1], np.int64)
        self.nodes.append(helper.make_node("Slice", [dims, starts, ends], [batch]))
        target = self.name("target")
        rest = self.const(list(to), np.int64)
        self.nodes.append(helper.make_node("Concat", [batch, rest], [target], axis=0))
        return self.node("Reshape", [t, target], to)

    def scale_from_shape(self, t: str) -> str:
        """Multiply by 1/sqrt(the last dimension of ``t`` or an earlier tensor), read by Shape.

        As attention scales are written; from an earlier tensor the shape path goes around
        the tensors in between.
        """
        dims, last, cast = self.name("shape"), self.name("last"), self.name("cast")
        root, scale = self.name("sqrt"), self.name("scale")
        source = self.draw(st.sampled_from([t, *self.order]))
        self.nodes.append(helper.make_node("Shape", [source], [dims]))
        index = self.const(-1, np.int64)
        self.nodes.append(helper.make_node("Gather", [dims, index], [last], axis=0))
        self.nodes.append(helper.make_node("Cast", [last], [cast], to=TensorProto.FLOAT))
        self.nodes.append(helper.make_node("Sqrt", [cast], [root]))
        one = self.const(1.0)
        self.nodes.append(helper.make_node("Div", [one, root], [scale]))
        return self.node("Mul", [t, scale], self.shapes[t])

    def flatten(self, t: str) -> str:
        return self.node("Flatten", [t], (int(np.prod(self.shapes[t])),), axis=1)

    def transpose(self, t: str) -> str:
        rank = len(self.shapes[t])
        if rank == 1:
            return self.node("Transpose", [t], self.shapes[t], perm=[0, 1])
        a, b = self.shapes[t]
        return self.node("Transpose", [t], (b, a), perm=[0, 2, 1])

    def softmax(self, t: str) -> str:
        axis = self.draw(st.sampled_from([-1, len(self.shapes[t])]))
        return self.node("Softmax", [t], self.shapes[t], axis=axis)

    def layernorm(self, t: str) -> str:
        if self.opset < 17:
            return self.unary(t)
        k = self.shapes[t][-1]
        gamma = self.const(1 + self.weights(k, scale=0.3))
        beta = self.const(self.weights(k, scale=0.3))
        return self.node("LayerNormalization", [t, gamma, beta], self.shapes[t], axis=-1)

    def residual(self, t: str) -> str:
        """t + f(t), f a short chain that keeps the shape (shape paths may enter it)."""
        h = t
        kinds = ["unary", "mul_const", "scale", "reshape", "square_gemm"]
        for _ in range(self.draw(st.integers(1, 2))):
            kind = self.draw(st.sampled_from(kinds))
            if kind == "unary":
                h = self.unary(h)
            elif kind == "mul_const":
                h = self.elementwise_const(h, "Mul")
            elif kind == "scale":
                h = self.scale_from_shape(h)
            elif kind == "reshape":
                shape = self.shapes[h]
                h = self.reshape_from_shape(self.reshape_from_shape(h), to=shape)
            elif len(self.shapes[h]) == 1:
                h = self.gemm(h, self.shapes[h][0])
            else:
                h = self.unary(h)
        inputs = [t, h] if self.draw(st.booleans()) else [h, t]
        return self.node("Add", inputs, self.shapes[t])

    def sum_two(self, t: str) -> str:
        """Add or Mul of two data tensors of the same shape (possibly the same tensor)."""
        shape = self.shapes[t]
        other = self.pick(lambda s: s == shape)
        op = self.draw(st.sampled_from(["Add", "Mul"]))
        return self.node(op, [t, other], shape)

    def concat_gemm(self, t: str) -> str:
        t = self.flat(t)
        other = self.flat(self.pick())
        k = self.shapes[t][0] + self.shapes[other][0]
        cat = self.node("Concat", [t, other], (k,), axis=self.draw(st.sampled_from([1, -1])))
        return self.gemm(cat)

    def _split(self, t: str, sizes: list[int]) -> list[str]:
        *lead, _ = self.shapes[t]
        outs = [self.name("split") for _ in sizes]
        inputs = [t, self.const(sizes, np.int64)]
        attrs = {"axis": -1}
        self.nodes.append(helper.make_node("Split", inputs, outs, **attrs))
        for o, s in zip(outs, sizes, strict=True):
            self.shapes[o] = (*lead, s)
        return outs

    def split_add(self, t: str) -> str:
        k = self.shapes[t][-1]
        if k % 2:
            t = self.matmul(t) if self.draw(st.booleans()) else self.gemm(t, 2 * k)
            k = self.shapes[t][-1]
            if k % 2:
                return t
        a, b = self._split(t, [k // 2, k // 2])
        for o in (a, b):
            self.order.append(o)
        return self.node("Add", [a, b], self.shapes[a])

    def sequence(self, t: str) -> str:
        """SplitToSequence, perhaps an Identity on the sequence, ConcatFromSequence back."""
        k = self.shapes[t][-1]
        seq = self.name("seq")
        self.nodes.append(helper.make_node("SplitToSequence", [t], [seq], axis=-1))
        if self.opset >= 14 and self.draw(st.booleans()):  # Identity takes sequences from 14
            same = self.name("seq")
            self.nodes.append(helper.make_node("Identity", [seq], [same]))
            seq = same
        out = self.node("ConcatFromSequence", [seq], self.shapes[t], axis=-1)
        assert self.shapes[out][-1] == k
        return out

    def split_one(self, t: str) -> str:
        """Split in two and continue from one part only: the other output is unused."""
        k = self.shapes[t][-1]
        if k < 2:
            return self.unary(t)
        cut = self.draw(st.integers(1, k - 1))
        parts = self._split(t, [cut, k - cut])
        keep = self.draw(st.sampled_from(parts))
        self.order.append(keep)
        return self.unary(keep)


@dataclass
class Case:
    model: onnx.ModelProto
    output: str | None
    ops: list[str]

    def __repr__(self) -> str:
        nodes = [
            f"{n.op_type}({', '.join(n.input)}) -> {', '.join(n.output)}"
            for n in self.model.graph.node
        ]
        return f"Case(output={self.output!r}, ops={self.ops}, nodes={nodes})"


@st.composite
def graphs(draw) -> Case:
    opset = draw(st.sampled_from([13, 17, 18]))
    batch = draw(st.sampled_from(["N", "N", 1]))  # 1: a fixed batch, as dynamo writes it
    g = Graph(draw, opset, np.random.default_rng(draw(st.integers(0, 2**16))), batch)
    d = draw(st.integers(1, 5))
    g.add("x", (d,))
    ops = draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=7))
    last = "x"
    for op in ops:
        t = g.pick()
        if op in ("add_const", "mul_const", "sub_const", "div_const"):
            last = g.elementwise_const(t, op.split("_")[0].capitalize())
        else:
            last = getattr(g, op)(t)
    if batch == 1 and draw(st.booleans()):  # [1, -1]: the model runs one sample at a time
        flat = (int(np.prod(g.shapes[last])),)
        last = g.node("Reshape", [last, g.const([1, -1], np.int64)], flat)
    outputs = [last]
    for _ in range(draw(st.integers(0, 2))):
        extra = draw(st.sampled_from(g.order))
        if extra not in outputs:
            outputs.append(extra)
    chosen = None if len(outputs) == 1 else draw(st.sampled_from(outputs))
    if chosen == "x" or draw(st.integers(0, 9)) == 0:  # an inner tensor, named with output=
        inner = [o for o in g.order if o != "x"]
        chosen = draw(st.sampled_from(inner)) if inner else None
    outputs = [o for o in outputs if o != "x"] or [last]
    model = make_model(
        g.nodes,
        [value_info("x", [batch, d])],
        [value_info(o, [batch, *g.shapes[o]]) for o in outputs],
        g.inits,
        opset=opset,
    )
    return Case(model, chosen, ops)


# ---------------------------------------------------------------------------------- the property


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, src: str, dst: str, x: np.ndarray, batched: bool) -> np.ndarray:
    """onnxruntime on ``model`` from ``src`` to ``dst`` for samples ``x`` (B, *sample shape).

    A model that does not run batches is run one sample at a time, with the leading 1 its
    input has.
    """
    sess = _session(model)
    x = x.astype(np.float32)
    if batched:
        return sess.run([dst], {src: x})[0].astype(np.float64)
    rank = len(model.graph.input[0].type.tensor_type.shape.dim)
    ys = [sess.run([dst], {src: xi.reshape((1,) * (rank - xi.ndim) + xi.shape)})[0] for xi in x]
    return np.stack(ys).astype(np.float64).reshape((len(x), -1))


def compose(part, lm, x: np.ndarray) -> np.ndarray:
    """The partition's blocks run one after another on ``x`` (B, *input shape)."""
    b = len(x)
    name, value = part.input, x.astype(np.float64)
    for block in part.blocks:
        assert block.input == name
        if block.kind == "invertible":
            for step in block.steps:
                assert step.input == name
                value = step.rule.forward(value.reshape((b, *part.shapes[name])))
                assert value.shape == (b, *part.shapes[step.output])
                name = step.output
            assert name == block.output
        else:
            sub = model_mod.extract(part.model, block.input, block.output, False)
            # The sub-model's input declares one sample's shape, as the plan's LM needs it.
            dims = sub.graph.input[0].type.tensor_type.shape.dim
            assert tuple(d.dim_value for d in dims[1:]) == part.shapes[name], sub.graph.input
            feed = value.reshape((b, *part.shapes[name]))
            value = run(sub, block.input, block.output, feed, lm.batched)
            name = block.output
    assert name == part.output
    return value


def check_partition(case: Case) -> str:
    """The property for one model; returns what happened (an ``event`` for the statistics)."""
    try:
        lm = model_mod.load(case.model, output=case.output)
        part = partition(lm, REGISTRY)
    except ModelError as exc:
        return f"ModelError: {str(exc)[:60]}"
    describe(part)
    blocks = part.blocks
    assert blocks, "no blocks"
    assert blocks[0].input == lm.input_name
    assert blocks[-1].output == lm.output_name
    for a, b in zip(blocks, blocks[1:], strict=False):
        assert a.output == b.input
        assert a.kind != b.kind, "consecutive blocks of one kind are not merged"
    x = np.random.default_rng(0).normal(0, 1, (BATCH, *part.shapes[part.input])).astype(np.float32)
    want = run(lm.pruned, lm.input_name, lm.output_name, x, lm.batched).reshape(BATCH, -1)
    got = compose(part, lm, x).reshape(BATCH, -1)
    scale = 1 + np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)

    # The plan is built as invert() builds it, for a target the model reaches.
    y0 = lm.run(x[:1].reshape((1, *lm.input_shape)))[0].astype(np.float64)
    target = Target.from_dict({"values": y0.ravel().tolist()})
    bounds = None if case.ops[0] in ("gemm", "unary") else (-2.0, 2.0)
    try:
        obj = objective_mod.build(lm, target)
        problem = ModelProblem(
            Settings(bounds=bounds), lm, obj, deadline=None, max_memory=None, registry=REGISTRY
        )
        BackwardPass(problem)
    except ModelError as exc:
        return f"plan ModelError: {str(exc)[:60]}"
    kinds = "+".join(b.kind[0] for b in blocks)
    kinds = kinds if len(kinds) < 6 else "long"
    return f"partitioned ({kinds}){'' if lm.batched else ', one sample at a time'}"


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(graphs())
def test_partition_composes_to_the_model(case):
    event(check_partition(case))


def test_output_that_depends_on_the_input_only_through_its_shape_is_refused():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "two"], ["y"]),
    ]
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    model = make_model(nodes, [value_info("x", ["N", 3])], [value_info("y", [2])], [two])
    with pytest.raises(ModelError, match="only through its shape"):
        partition(model_mod.load(model), REGISTRY)


# ------------------------------------------------------------------------------------- tiny ViT


class _Attention(nn.Module):
    """Hand-written multi-head self-attention (one fused qkv projection)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))


class _Layer(nn.Module):
    """Pre-norm encoder layer: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mha: bool):
        super().__init__()
        self.norm1, self.norm2, self.mha = nn.LayerNorm(dim), nn.LayerNorm(dim), mha
        self.attn = (
            nn.MultiheadAttention(dim, heads, batch_first=True) if mha else _Attention(dim, heads)
        )
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.norm1(x)
        x = x + (self.attn(h, h, h, need_weights=False)[0] if self.mha else self.attn(h))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Conv patch embedding, class token, position embedding, 2 layers, LayerNorm, head, Softmax."""

    def __init__(self, mha: bool, image: int = 8, patch: int = 4, dim: int = 16, classes: int = 10):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, patch)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.layers = nn.ModuleList([_Layer(dim, 2, mha) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():  # a confident head, so that a 0.6 class probability is reachable
            self.head.weight.mul_(4.0)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0]).softmax(-1)


VIT = [
    pytest.param(False, True, id="torchscript-mha"),
    pytest.param(False, False, id="torchscript-handwritten"),
    pytest.param(True, False, id="dynamo-handwritten"),
]


@pytest.mark.parametrize(("dynamo", "mha"), VIT)
def test_vit_partitions_and_inverts(tmp_path, dynamo, mha):
    torch.manual_seed(0)
    path = export(TinyViT(mha).eval(), tmp_path / "vit.onnx", dynamo)  # own folder: .data file
    lm = model_mod.load(path)
    part = partition(lm, REGISTRY)
    describe(part)
    assert part.blocks[0].input == lm.input_name and part.blocks[-1].output == lm.output_name
    assert [b.ops for b in part.blocks if b.kind == "invertible"][-1][-2:] == ["Gemm", "Softmax"]

    result = onnxinv.invert(path, {"class": 3, "confidence": 0.6}, samples=4, seed=0, method="auto")
    assert result.verified.any()
    p = np.full(10, 0.4 / 9)
    p[3] = 0.6
    ok = result.verified
    verified = SimpleNamespace(inputs=result.inputs[ok], verified=ok[ok], errors=result.errors[ok])
    assert_solved(path, verified, p, "probabilities", tol=1e-4)
