"""Every built-in inverse rule, on a one-node model per opset where its schema changed.

Each case is one ONNX node with a symbolic batch dimension ``N`` and its constants as seeded
random initializers. The rule is built the way the planner builds it (``graph.partition``); a
reachable target is onnxruntime's output for a random input; the rule's inverse is run back
through onnxruntime, never through onnxinv's own forward code. ``test_every_rule_has_a_case``
fails when a rule is registered without a case here.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import session
from onnx import TensorProto, defs, helper, numpy_helper

from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.rules import (
    AffineRule,
    ElementwiseRule,
    Family,
    InverseRule,
    NodeContext,
    OutsideDomain,
    PointRule,
    Registry,
    RuleNotApplicable,
    builtin,
    default_registry,
)
from onnxinv.rules import activations as act
from onnxinv.rules import linear as lin
from onnxinv.rules import piecewise as pw
from onnxinv.rules import select as slc
from onnxinv.rules import shape as shp
from onnxinv.rules import softmax as smx
from onnxinv.rules import spatial as cnv

ORT_MIN_OPSET = 7  # onnxruntime only guarantees opset 7 and later
BATCH = 3

# ------------------------------------------------------------------------------ model building


def _f32(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _i64(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, dtype=np.int64), name)


def one_node_model(
    node: onnx.NodeProto,
    inits: list[onnx.TensorProto],
    dims: list,
    opset: int,
    domain_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    """``x`` (dims, e.g. ["N", 5]) → node → ``y``, at ``opset``, with the smallest IR it allows."""
    graph = helper.make_graph(
        [node],
        "one_node",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, v) for d, v in (domain_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = max(7, helper.find_min_ir_version_for(imports))
    # Shape inference (strict: a wrong attribute or input for this opset fails here) gives
    # the output its shape, which older IR versions require.
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if sess.get_inputs()[0].shape[0] == 1 and len(x) > 1:  # a fixed batch of one
        return np.concatenate([run(sess, xi[None]) for xi in x])
    return sess.run(None, {"x": x})[0]


def fresh_registry() -> Registry:
    reg = Registry()
    builtin.register(reg)
    return reg


REGISTRY = fresh_registry()


def since_version(op_type: str, opset: int) -> int:
    return defs.get_schema(op_type, max_inclusive_version=opset).since_version


def runnable_opset(op_type: str, version: int) -> int | None:
    """The opset at which to test a rule's ``version``: itself, or 7 when the schema of an
    older version is still in force there; None when onnxruntime cannot run that schema."""
    opset = max(version, ORT_MIN_OPSET)
    return opset if since_version(op_type, opset) == version else None


# ----------------------------------------------------------------------------------- the cases

Build = Callable[[int, np.random.Generator], tuple[onnx.NodeProto, list[onnx.TensorProto]]]
Sampler = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape)


@dataclass(frozen=True)
class Case:
    """One node configuration of a rule; ``build(opset, rng)`` gives the node and constants."""

    name: str
    rule: type[InverseRule]
    shape: tuple[int, ...]  # per-sample input shape
    build: Build
    min_opset: int = ORT_MIN_OPSET
    sample: Sampler = _normal
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def opsets(self) -> list[int]:
        found = []
        for v in self.rule.versions:
            opset = runnable_opset(self.rule.op_type, v)
            if opset is not None and opset >= self.min_opset:
                found.append(opset)
        return found


CASES: list[Case] = []


def case(name, rule, shape, build, **kw) -> None:
    CASES.append(Case(name, rule, tuple(shape), build, **kw))


def N(op, inputs, **attrs) -> onnx.NodeProto:  # noqa: N802 - reads like a node constructor
    return helper.make_node(op, inputs, ["y"], **attrs)


def _nonzero(rng, shape, lo=0.5, hi=2.0):
    return rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)


# Gemm: data is A, B constant; with/without transB, alpha/beta, with C (required before opset 11).
def _gemm(n_in, n_out, trans_b=0, alpha=None, beta=None, c_shape=(-1,)):
    def build(opset, rng):
        w = rng.standard_normal((n_out, n_in) if trans_b else (n_in, n_out)) / np.sqrt(n_in)
        inits = [_f32("W", w)]
        inputs = ["x", "W"]
        if c_shape is not None:
            inits.append(
                _f32("C", rng.standard_normal(tuple(n_out if d < 0 else d for d in c_shape)))
            )
            inputs.append("C")
        attrs = {"transB": trans_b} if trans_b else {}
        attrs.update({k: v for k, v in (("alpha", alpha), ("beta", beta)) if v is not None})
        return N("Gemm", inputs, **attrs), inits

    return build


case("gemm-8to3", lin.Gemm, [8], _gemm(8, 3), extra={"null": 5})
case("gemm-5to4-transB-alpha-beta", lin.Gemm, [5], _gemm(5, 4, 1, 0.7, 1.3, (1, -1)))
case("gemm-6to4-noC", lin.Gemm, [6], _gemm(6, 4, c_shape=None), min_opset=11)
case("gemm-3to6-expanding", lin.Gemm, [3], _gemm(3, 6, trans_b=1, alpha=2.0))


def _matmul(k, m):
    def build(opset, rng):
        return N("MatMul", ["x", "W"]), [_f32("W", rng.standard_normal((k, m)) / np.sqrt(k))]

    return build


case("matmul-6to2", lin.MatMul, [6], _matmul(6, 2), extra={"null": 4})
case("matmul-rows-2x3", lin.MatMul, [2, 3], _matmul(3, 3))


# Add/Sub/Mul/Div with a broadcast constant on either side.
def _binary(op, side, c_shape, values=_normal):
    def build(opset, rng):
        c = _f32("c", values(rng, c_shape))
        return N(op, ["x", "c"] if side == "right" else ["c", "x"]), [c]

    return build


for _shape in ([5], [2, 3]):
    _tag = "x".join(map(str, _shape))
    case(f"add-x+c-full-{_tag}", lin.Add, _shape, _binary("Add", "right", tuple(_shape)))
    case(f"add-c+x-lastdim-{_tag}", lin.Add, _shape, _binary("Add", "left", (_shape[-1],)))
    case(f"sub-x-c-scalar-{_tag}", lin.Sub, _shape, _binary("Sub", "right", ()))
    case(f"sub-c-x-batch1-{_tag}", lin.Sub, _shape, _binary("Sub", "left", (1, *_shape)))
    case(f"mul-x*c-full-{_tag}", lin.Mul, _shape, _binary("Mul", "right", tuple(_shape), _nonzero))
    case(
        f"mul-c*x-lastdim-{_tag}", lin.Mul, _shape, _binary("Mul", "left", (_shape[-1],), _nonzero)
    )
    case(f"div-x/c-full-{_tag}", lin.Div, _shape, _binary("Div", "right", tuple(_shape), _nonzero))
    case(f"div-x/c-scalar-{_tag}", lin.Div, _shape, _binary("Div", "right", (), _nonzero))


def _batchnorm(channels, epsilon=None):
    def build(opset, rng):
        inits = [
            _f32("scale", _nonzero(rng, channels)),
            _f32("B", rng.standard_normal(channels)),
            _f32("mean", rng.standard_normal(channels)),
            _f32("var", rng.uniform(0.2, 2.0, channels)),
        ]
        attrs = {} if epsilon is None else {"epsilon": epsilon}
        return N("BatchNormalization", ["x", "scale", "B", "mean", "var"], **attrs), inits

    return build


case("batchnorm-NCHW", lin.BatchNormalization, [3, 2, 2], _batchnorm(3))
case("batchnorm-NC-eps", lin.BatchNormalization, [4], _batchnorm(4, epsilon=1e-3))


# Conv: constant weights (and bias), 1-D and 2-D, stride, padding, dilation, groups, auto_pad.
def _conv(w_shape, bias=True, **attrs):
    def build(opset, rng):
        fan_in = int(np.prod(w_shape[1:]))
        inits = [_f32("W", rng.standard_normal(w_shape) / np.sqrt(fan_in))]
        if bias:
            inits.append(_f32("B", rng.standard_normal(w_shape[0])))
        return N("Conv", ["x", "W", "B"] if bias else ["x", "W"], **attrs), inits

    return build


case("conv2d-1to4-channels-pad1", cnv.Conv, [1, 5, 5], _conv((4, 1, 3, 3), pads=[1, 1, 1, 1]))
case("conv2d-2to8-channels-pad1", cnv.Conv, [2, 6, 6], _conv((8, 2, 3, 3), pads=[1, 1, 1, 1]))
case("conv2d-1x1-groups", cnv.Conv, [6, 3, 4], _conv((4, 3, 1, 1), group=2), extra={"null": 24})
case(
    "conv2d-groups-stride-dilation",
    cnv.Conv,
    [2, 7, 6],
    _conv((4, 1, 2, 2), bias=False, group=2, strides=[2, 1], dilations=[1, 2], pads=[1, 0, 0, 1]),
)
case("conv1d-same-upper-stride2", cnv.Conv, [2, 7], _conv((3, 2, 3), auto_pad="SAME_UPPER",
                                                          strides=[2]))  # fmt: skip
case("conv1d-same-lower", cnv.Conv, [1, 6], _conv((2, 1, 2), auto_pad="SAME_LOWER"))
case("conv3d-pad", cnv.Conv, [1, 3, 3, 3], _conv((4, 1, 2, 2, 2), pads=[1, 0, 1, 0, 1, 0]))
case("conv2d-valid", cnv.Conv, [3, 4, 4], _conv((2, 3, 3, 3), auto_pad="VALID"),
     extra={"null": 48 - 8})  # fmt: skip


def _avgpool(kernel, **attrs):
    def build(opset, rng):
        kw = dict(attrs)
        if opset < 19:
            kw.pop("dilations", None)
        return N("AveragePool", ["x"], kernel_shape=kernel, **kw), []

    return build


def _pad(pads, value=None, axes=None):
    def build(opset, rng):
        if opset < 11:
            attrs = {"pads": pads} if value is None else {"pads": pads, "value": value}
            return N("Pad", ["x"], **attrs), []
        inits, inputs = [_i64("pads", pads)], ["x", "pads"]
        if value is not None or axes is not None:
            inits.append(_f32("value", np.float32(0.0 if value is None else value)))
            inputs.append("value")
        if axes is not None:
            inits.append(_i64("axes", axes))
            inputs.append("axes")
        return N("Pad", inputs), inits

    return build


case("avgpool2d-2x2", cnv.AveragePool, [2, 4, 4], _avgpool([2, 2], strides=[2, 2]),
     extra={"null": 32 - 8})  # fmt: skip
case("avgpool2d-pad-exclude", cnv.AveragePool, [1, 5, 5],
     _avgpool([3, 3], pads=[1, 1, 1, 1], strides=[2, 2]))  # fmt: skip
case("avgpool1d-pad-include", cnv.AveragePool, [2, 6],
     _avgpool([3], pads=[1, 1], count_include_pad=1))  # fmt: skip
case("avgpool2d-dilated", cnv.AveragePool, [1, 5, 5], _avgpool([2, 2], dilations=[2, 1]),
     min_opset=19)  # fmt: skip
case("globalavgpool", cnv.GlobalAveragePool, [3, 4, 4],
     lambda opset, rng: (N("GlobalAveragePool", ["x"]), []),
     extra={"null": 48 - 3})  # fmt: skip
case("pad-constant-2d", cnv.Pad, [2, 3, 3], _pad([0, 0, 1, 2, 0, 0, 2, 1], value=0.5))
case("pad-crop", cnv.Pad, [1, 4, 4], _pad([0, 0, 1, -1, 0, 0, -1, 2]))
case("pad-axes", cnv.Pad, [2, 3], _pad([1, 2], value=-1.0, axes=[2]), min_opset=18)


# ConvTranspose: stride, pads, output_padding, dilation, groups, output_shape and auto_pad.
def _convt(w_shape, bias=True, **attrs):
    def build(opset, rng):
        inits = [_f32("W", rng.standard_normal(w_shape) / np.sqrt(w_shape[0]))]
        if bias:
            inits.append(_f32("B", rng.standard_normal(w_shape[1] * attrs.get("group", 1))))
        return N("ConvTranspose", ["x", "W", "B"] if bias else ["x", "W"], **attrs), inits

    return build


case("convT2d-stride2-pads-outpad", cnv.ConvTranspose, [2, 3, 3],
     _convt((2, 3, 3, 3), strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]))  # fmt: skip
case("convT1d-group-dilation", cnv.ConvTranspose, [4, 5],
     _convt((4, 1, 2), bias=False, group=2, strides=[3], dilations=[2]))  # fmt: skip
case("convT2d-output-shape", cnv.ConvTranspose, [1, 3, 4],
     _convt((1, 2, 3, 2), strides=[2, 2], output_shape=[6, 7]))  # fmt: skip
case("convT2d-same-upper", cnv.ConvTranspose, [2, 3, 3],
     _convt((2, 1, 2, 2), strides=[2, 2], auto_pad="SAME_UPPER"))  # fmt: skip
case("convT3d", cnv.ConvTranspose, [1, 2, 2, 2], _convt((1, 2, 2, 2, 2), strides=[1, 2, 1]))
case("convT2d-channel-reducing", cnv.ConvTranspose, [4, 3, 3], _convt((4, 1, 2, 2)),
     extra={"null": 36 - 16})  # fmt: skip


# Selections: Slice (constant starts/ends/axes/steps), Concat with constants, Split's first part.
def _slice(starts, ends, axes=None, steps=None):
    def build(opset, rng):
        if opset < 10:
            attrs = {"starts": starts, "ends": ends}
            return N("Slice", ["x"], **attrs, **({"axes": axes} if axes else {})), []
        inits = [_i64("starts", starts), _i64("ends", ends)]
        inputs = ["x", "starts", "ends"]
        for name, v in (("axes", axes), ("steps", steps)):
            if v is not None:
                inits.append(_i64(name, v))
                inputs.append(name)
        return N("Slice", inputs), inits

    return build


case("slice-2d", slc.Slice, [4, 5], _slice([1, 0], [3, 5], axes=[1, 2]), extra={"null": 10})
case("slice-steps-negative", slc.Slice, [3, 6], _slice([-1, 0], [-1000, 2**62], axes=[2, 1],
     steps=[-2, 2]), min_opset=10, extra={"null": 18 - 6})  # fmt: skip
case("slice-last-axis-clamped", slc.Slice, [2, 4], _slice([-3], [100], axes=[-1]), min_opset=10)


def _concat(c_shapes, data_at=0, axis=1):
    def build(opset, rng):
        names = [f"c{i}" for i in range(len(c_shapes))]
        inits = [_f32(n, rng.standard_normal(s)) for n, s in zip(names, c_shapes, strict=True)]
        return N("Concat", [*names[:data_at], "x", *names[data_at:]], axis=axis), inits

    return build


# Concat needs its constants' batch axis to match the data's: a model with a fixed batch of one.
case("concat-x-c", slc.Concat, [2, 3], _concat([(1, 1, 3)]), extra={"batch": 1})
case("concat-c-x-c-last-axis", slc.Concat, [2, 3], _concat([(1, 2, 1), (1, 2, 2)], 1, axis=-1),
     min_opset=11, extra={"batch": 1})  # fmt: skip


def _split(axis, sizes):
    def build(opset, rng):
        outputs = ["y", "rest"]
        if opset >= 13:
            node = helper.make_node("Split", ["x", "split"], outputs, axis=axis)
            return node, [_i64("split", sizes)]
        return helper.make_node("Split", ["x"], outputs, axis=axis, split=sizes), []

    return build


case("split-first-part", slc.Split, [5, 2], _split(1, [2, 3]), extra={"null": 6})
case("split-last-axis", slc.Split, [2, 4], _split(-1, [1, 3]))


# Shape-only operators.
def _plain(op, **attrs):
    def build(opset, rng):
        return N(op, ["x"], **attrs), []

    return build


def _dropout(opset, rng):
    if opset >= 12:  # ratio became an input
        return N("Dropout", ["x", "ratio"]), [_f32("ratio", 0.3)]
    return N("Dropout", ["x"], ratio=0.3), []


def _reshape(target):
    def build(opset, rng):
        return N("Reshape", ["x", "shape"]), [_i64("shape", target)]

    return build


def _axes_op(op, axes):
    """Squeeze/Unsqueeze: axes an attribute before opset 13, an input from 13."""

    def build(opset, rng):
        if opset >= 13:
            return N(op, ["x", "axes"]), [_i64("axes", axes)]
        return N(op, ["x"], axes=axes), []

    return build


for _shape in ([5], [2, 3]):
    _tag = "x".join(map(str, _shape))
    case(f"identity-{_tag}", shp.Identity, _shape, _plain("Identity"))
    case(f"dropout-{_tag}", shp.Dropout, _shape, _dropout)
    case(f"cast-float-{_tag}", shp.Cast, _shape, _plain("Cast", to=onnx.TensorProto.FLOAT))
case("flatten-2x3", shp.Flatten, [2, 3], _plain("Flatten"))
case("flatten-axis1-4x1x2", shp.Flatten, [4, 1, 2], _plain("Flatten", axis=1))
case("flatten-axis-1-2x3", shp.Flatten, [2, 3], _plain("Flatten", axis=-2), min_opset=11)
case("reshape-5-to-5x1", shp.Reshape, [5], _reshape([-1, 5, 1]))
case("reshape-2x3-to-0x6", shp.Reshape, [2, 3], _reshape([0, 3, 2]))
case("squeeze-5x1", shp.Squeeze, [5, 1], _axes_op("Squeeze", [2]))
case("squeeze-2x1x3", shp.Squeeze, [2, 1, 3], _axes_op("Squeeze", [2]))
case("squeeze-negative-axis", shp.Squeeze, [2, 1, 3], _axes_op("Squeeze", [-2]), min_opset=11)
case("unsqueeze-5", shp.Unsqueeze, [5], _axes_op("Unsqueeze", [1]))
case("unsqueeze-2x3", shp.Unsqueeze, [2, 3], _axes_op("Unsqueeze", [3]))
case("transpose-2x3", shp.Transpose, [2, 3], _plain("Transpose", perm=[0, 2, 1]))
case("transpose-2x3x4", shp.Transpose, [2, 3, 4], _plain("Transpose", perm=[0, 3, 1, 2]))


# Activations.
def _uniform(lo, hi) -> Sampler:
    return lambda rng, shape: rng.uniform(lo, hi, shape)


for _shape in ([5], [2, 3]):
    _tag = "x".join(map(str, _shape))
    case(f"sigmoid-{_tag}", act.Sigmoid, _shape, _plain("Sigmoid"))
    case(f"tanh-{_tag}", act.Tanh, _shape, _plain("Tanh"))
    case(f"softplus-{_tag}", act.Softplus, _shape, _plain("Softplus"))
case("selu-default", act.Selu, [5], _plain("Selu"))
case("selu-alpha-gamma", act.Selu, [2, 3], _plain("Selu", alpha=1.2, gamma=0.8))
case("elu-default", act.Elu, [5], _plain("Elu"))
case("elu-alpha0.5", act.Elu, [2, 3], _plain("Elu", alpha=0.5))
case("leakyrelu-default", act.LeakyRelu, [5], _plain("LeakyRelu"))
case("leakyrelu-alpha0.2", act.LeakyRelu, [2, 3], _plain("LeakyRelu", alpha=0.2))
case(
    "hardsigmoid-default",
    act.HardSigmoid,
    [5],
    _plain("HardSigmoid"),
    sample=_uniform((0.05 - 0.5) / 0.2, (0.95 - 0.5) / 0.2),
)
case(
    "hardsigmoid-alpha-beta",
    act.HardSigmoid,
    [2, 3],
    _plain("HardSigmoid", alpha=0.3, beta=0.4),
    sample=_uniform((0.05 - 0.4) / 0.3, (0.95 - 0.4) / 0.3),
)


def _prelu(slope_shape):
    def build(opset, rng):
        return N("PRelu", ["x", "slope"]), [_f32("slope", rng.uniform(0.05, 2.0, slope_shape))]

    return build


case("prelu-full-5", act.PRelu, [5], _prelu((5,)))
case("prelu-channel-2x3", act.PRelu, [2, 3], _prelu((2, 1)))
case("prelu-scalar-2x3", act.PRelu, [2, 3], _prelu((1,)))


def _clip(lo, hi):
    """Clip: min/max attributes before opset 11, optional inputs from 11."""

    def build(opset, rng):
        if opset < 11:
            attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
            return N("Clip", ["x"], **attrs), []
        inputs, inits = ["x", "", ""], []
        for pos, name, v in ((1, "lo", lo), (2, "hi", hi)):
            if v is not None:
                inputs[pos] = name
                inits.append(_f32(name, v))
        while inputs[-1] == "":
            inputs.pop()
        return N("Clip", inputs), inits

    return build


case("clip-both", act.Clip, [5], _clip(-0.5, 0.8), sample=_uniform(-0.45, 0.75))
case("clip-min-only", act.Clip, [2, 3], _clip(0.0, None), sample=_uniform(0.05, 3.0))
case("clip-max-only", act.Clip, [5], _clip(None, 1.5), sample=_uniform(-3.0, 1.45))


# Softmax/LogSoftmax: before opset 13 the input is coerced to 2-D at `axis` (one group over all
# later dimensions); from 13 the softmax runs along `axis` alone.
def softmax(op, axis=None):
    def build(opset, rng):
        return (N(op, ["x"]) if axis is None else N(op, ["x"], axis=axis)), []

    return build


for _op, _rule in (("Softmax", smx.Softmax), ("LogSoftmax", smx.LogSoftmax)):
    _low = _op.lower()
    case(f"{_low}-5", _rule, [5], softmax(_op), sample=lambda r, s: 2 * r.standard_normal(s))
    case(f"{_low}-2x3-default-axis", _rule, [2, 3], softmax(_op))
    case(f"{_low}-2x3-axis1", _rule, [2, 3], softmax(_op, 1))
    case(f"{_low}-2x3-axis-1", _rule, [2, 3], softmax(_op, -1), min_opset=11)
    case(f"{_low}-2x2x2-axis2", _rule, [2, 2, 2], softmax(_op, 2))


# Piecewise operators whose preimage of a point is a set. extra["bad"]: outputs they cannot
# produce, as values put at the last entry of the last sample or as functions of a reachable
# (B, output_size) output that return an unreachable one (changing the last sample only).
def _bump_last_sample(index: int):
    """A window's maximum raised above every other output: overlapping windows (stride 1) whose
    other maxima bound all its entries below it cannot produce that."""

    def make(y: np.ndarray) -> np.ndarray:
        bad = y.copy()
        bad[-1, index] = y.max() + 1.0
        return bad

    return make


for _shape in ([5], [2, 3]):
    _tag = "x".join(map(str, _shape))
    case(f"relu-{_tag}", pw.Relu, _shape, _plain("Relu"), extra={"bad": [-0.1, -10.0]})
    case(f"sign-{_tag}", pw.Sign, _shape, _plain("Sign"), extra={"bad": [0.5, 2.0, -1e-3]})
    case(f"abs-{_tag}", pw.Abs, _shape, _plain("Abs"), extra={"bad": [-0.1, -10.0]})
case("shrink-default", pw.Shrink, [5], _plain("Shrink"), extra={"bad": [0.3, -0.5, 1e-3]})
case("shrink-bias-eq-lambd", pw.Shrink, [2, 3], _plain("Shrink", bias=1.5, lambd=1.5))
case(
    "shrink-bias-gt-lambd",
    pw.Shrink,
    [2, 3],
    _plain("Shrink", bias=2.0, lambd=0.5),
    sample=lambda r, s: 2 * r.standard_normal(s),
)
# lambd = 0 and bias < 0: every output has exactly one preimage ("unique": no diversity).
case(
    "shrink-lambd0",
    pw.Shrink,
    [5],
    _plain("Shrink", bias=-0.25, lambd=0.0),
    extra={"bad": [0.2, -0.1], "unique": True},
)
case(
    "maxpool-2d-k2s2", pw.MaxPool, [2, 4, 4], _plain("MaxPool", kernel_shape=[2, 2], strides=[2, 2])
)
case(
    "maxpool-2d-k3s1-pads1",
    pw.MaxPool,
    [1, 5, 5],
    _plain("MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    extra={"bad": [_bump_last_sample(12)]},
)
case(
    "maxpool-1d-k2s1-storage-order",
    pw.MaxPool,
    [3, 6],
    _plain("MaxPool", kernel_shape=[2], storage_order=1),
    min_opset=8,
    extra={"bad": [_bump_last_sample(8)]},
)
case(
    "maxpool-1d-dilation-ceil",
    pw.MaxPool,
    [2, 9],
    _plain("MaxPool", kernel_shape=[3], strides=[2], dilations=[2], pads=[1, 0], ceil_mode=1),
    min_opset=10,
)
case(
    "maxpool-2d-same-lower-s2",
    pw.MaxPool,
    [2, 5, 4],
    _plain("MaxPool", kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER"),
)
case(
    "maxpool-3d-same-upper",
    pw.MaxPool,
    [1, 3, 4, 3],
    _plain("MaxPool", kernel_shape=[2, 2, 2], auto_pad="SAME_UPPER"),
)
case(
    "maxpool-2d-valid-asymmetric",
    pw.MaxPool,
    [1, 5, 7],
    _plain("MaxPool", kernel_shape=[2, 3], strides=[1, 2], auto_pad="VALID"),
)


# Max/Min of the data and constants (seeded normal, so about half the outputs are clipped to
# them). Max(x) alone is the identity and the only configuration before opset 8 that runs with
# a symbolic batch (Max-6 does not broadcast); "bad": an output beyond every constant.
def _extremum(op, c_shapes, data_at=0):
    def build(opset, rng):
        names = [f"c{i}" for i in range(len(c_shapes))]
        inits = [_f32(n, rng.standard_normal(s)) for n, s in zip(names, c_shapes, strict=True)]
        return N(op, [*names[:data_at], "x", *names[data_at:]]), inits

    return build


for _op, _rule, _bad in (("Max", pw.Max, [-100.0, -10.0]), ("Min", pw.Min, [100.0, 10.0])):
    _low = _op.lower()
    case(f"{_low}-single-input", _rule, [5], _extremum(_op, []), extra={"unique": True})
    case(f"{_low}-x-c-full-5", _rule, [5], _extremum(_op, [(5,)]), min_opset=8, extra={"bad": _bad})
    case(
        f"{_low}-c-x-lastdim-2x3",
        _rule,
        [2, 3],
        _extremum(_op, [(3,)], data_at=1),
        min_opset=8,
        extra={"bad": _bad},
    )
    case(
        f"{_low}-c-x-c-batch1-scalar-2x3",
        _rule,
        [2, 3],
        _extremum(_op, [(1, 2, 1), ()], data_at=1),
        min_opset=8,
        extra={"bad": _bad},
    )

PARAMS = [pytest.param(c, v, id=f"{c.name}-opset{v}") for c in CASES for v in c.opsets()]
LATEST = [pytest.param(c, c.opsets()[-1], id=c.name) for c in CASES]


# ------------------------------------------------------------------------------ shared set-up


@dataclass
class Prepared:
    model: onnx.ModelProto
    sess: ort.InferenceSession
    rule: InverseRule
    rng: np.random.Generator


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


@functools.cache
def _prepare(c: Case, opset: int) -> tuple[onnx.ModelProto, InverseRule]:
    node, inits = c.build(opset, np.random.default_rng(_seed(c.name)))
    model = one_node_model(node, inits, [c.extra.get("batch", "N"), *c.shape], opset)
    part = partition(model_mod.load(model), REGISTRY)
    assert len(part.blocks) == 1, part.blocks
    block = part.blocks[0]
    reasons = [s.reason for s in block.steps]
    assert block.kind == "invertible", f"{c.name} at opset {opset} is opaque: {reasons}"
    (step,) = block.steps
    assert type(step.rule) is c.rule
    assert step.entry.version == since_version(c.rule.op_type, opset)
    return model, step.rule


def prepare(c: Case, opset: int) -> Prepared:
    model, rule = _prepare(c, opset)
    return Prepared(model, session(model), rule, np.random.default_rng(_seed(c.name, opset)))


def reachable(p: Prepared, c: Case) -> tuple[np.ndarray, np.ndarray]:
    """A random input in the rule's invertible region and onnxruntime's output for it."""
    x0 = c.sample(p.rng, (BATCH, *c.shape)).astype(np.float32)
    return x0, run(p.sess, x0)


def assert_same_output(c: Case, got: np.ndarray, want: np.ndarray) -> None:
    if c.rule is smx.Softmax:  # compare probabilities
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


# ------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(("c", "opset"), PARAMS)
def test_round_trip(c: Case, opset: int):
    """invert(y) maps back to y in onnxruntime; forward matches onnxruntime on random inputs."""
    p = prepare(c, opset)
    x0, y = reachable(p, c)
    x = p.rule.invert(y.astype(np.float64), p.rng)
    assert x.shape == (BATCH, *c.shape)
    assert np.isfinite(x).all()
    assert_same_output(c, run(p.sess, x), y)

    fam = p.rule.family(y.astype(np.float64))
    np.testing.assert_allclose(fam.residual, 0.0, atol=1e-5)
    assert p.rule.lossless

    xr = 1.5 * p.rng.standard_normal((BATCH, *c.shape))
    want = run(p.sess, xr)
    got = p.rule.forward(xr)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


SMOOTH_CASES = [
    p
    for p in LATEST
    if issubclass(p.values[0].rule, PointRule)
    and not issubclass(p.values[0].rule, smx._SoftmaxBase)
    and (
        p.values[0].rule.smooth_inverse is not PointRule.smooth_inverse
        or p.values[0].rule.differentiable is not PointRule.differentiable
    )
]


@pytest.mark.parametrize(("c", "opset"), SMOOTH_CASES)
def test_forward_with_slope_is_the_derivative(c: Case, opset: int):
    """The slopes the chain pass's Jacobian uses are f'(x): central differences of the forward."""
    p = prepare(c, opset)
    x = 1.5 * p.rng.standard_normal((BATCH * 50, *c.shape))
    y, slope = p.rule.forward_with_slope(x)
    np.testing.assert_allclose(y, p.rule.forward(x), rtol=1e-12, atol=1e-12)
    h = 1e-5
    numeric = (p.rule.forward(x + h) - p.rule.forward(x - h)) / (2 * h)
    assert slope.shape == x.shape
    np.testing.assert_allclose(slope, numeric, rtol=1e-6, atol=1e-8)


SELECTIVE_CASES = [
    p
    for p in PARAMS
    if issubclass(p.values[0].rule, PointRule)
    and p.values[0].rule.selective is not PointRule.selective
]


@pytest.mark.parametrize(("c", "opset"), SELECTIVE_CASES)
def test_forward_with_selection_copies_the_selected_inputs(c: Case, opset: int):
    """Each output is the input its index names, and the values are the rule's forward."""
    p = prepare(c, opset)
    x = p.rng.standard_normal((BATCH, *c.shape))
    y, idx = p.rule.forward_with_selection(x.reshape(BATCH, -1))
    np.testing.assert_array_equal(y, p.rule.forward(x).reshape(BATCH, -1))
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(BATCH, -1), idx, axis=1), y)


INTERVAL_CASES = [p for p in LATEST if not issubclass(p.values[0].rule, smx._SoftmaxBase)]


@pytest.mark.parametrize(("c", "opset"), INTERVAL_CASES)
def test_forward_interval_contains_outputs(c: Case, opset: int):
    """Bounds from forward_interval contain every output of inputs in the box."""
    p = prepare(c, opset)
    lo = -1.0 + 0.2 * p.rng.standard_normal(c.shape).ravel()
    hi = lo + p.rng.uniform(0.1, 2.0, lo.shape)
    out_lo, out_hi = p.rule.forward_interval(lo, hi)
    xs = lo + (hi - lo) * p.rng.random((64, lo.size))
    ys = p.rule.forward(xs.reshape(64, *c.shape)).reshape(64, -1)
    assert (ys >= out_lo - 1e-9).all() and (ys <= out_hi + 1e-9).all()


# Point rules with a restricted output domain (LeakyRelu and PRelu are onto the real line), and
# piecewise rules, which also refuse values inside theirs (Shrink's gap, MaxPool's conflicts).
DOMAIN_CASES = [
    p
    for p in LATEST
    if issubclass(p.values[0].rule, PointRule)
    and (
        p.values[0].rule.output_domain is not PointRule.output_domain
        or p.values[0].rule in pw.RULES
    )
]
INFINITE_AT_BOUND = (act.Selu, act.Elu, act.Sigmoid, act.Tanh, act.Softplus)


def _refused(rule: PointRule, y: np.ndarray) -> str:
    with pytest.raises(OutsideDomain) as info:
        rule.preimage(y)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize(("c", "opset"), DOMAIN_CASES)
def test_refuses_outside_output_domain(c: Case, opset: int):
    """A value outside the rule's output domain raises OutsideDomain with one line."""
    p = prepare(c, opset)
    _, y = reachable(p, c)
    y = y.astype(np.float64).reshape(BATCH, -1)
    rule = p.rule
    assert np.isfinite(rule.preimage(y).v0).all()  # the reachable point itself is accepted
    if isinstance(rule, ElementwiseRule):
        dom = rule.output_domain()
        bad_values = []
        if np.isfinite(dom.lo):
            bad_values += [dom.lo - 0.1, dom.lo - 10.0]
        if np.isfinite(dom.hi):
            bad_values += [dom.hi + 0.1, dom.hi + 10.0]
        if c.rule in INFINITE_AT_BOUND:  # the open bound itself has no finite preimage
            bad_values += [v for v in (dom.lo, dom.hi) if np.isfinite(v)]
        bad_values.append(np.nan)
        for v in bad_values:
            bad = y.copy()
            bad[-1, -1] = v
            msg = _refused(rule, bad)
            if not np.isnan(v):
                assert c.rule.op_type in msg and "sample 2" in msg
    elif c.rule is smx.Softmax:
        for make in (
            lambda y: np.where(y == y.max(), 0.0, y),  # a zero probability
            lambda y: -y,  # negative
            lambda y: 0.5 * y,  # sums to 1/2
        ):
            assert "Softmax" in _refused(rule, make(y))
    elif c.rule is smx.LogSoftmax:  # log-probabilities whose exponentials do not sum to 1
        assert "LogSoftmax" in _refused(rule, y + 0.5)
        assert "LogSoftmax" in _refused(rule, y - 0.5)
    else:  # piecewise rules: the case's unreachable outputs, and NaN
        assert c.rule in pw.RULES, f"{c.rule.__name__} has no refusal check here"
        for bad_value in [*c.extra.get("bad", ()), np.nan]:
            if callable(bad_value):
                bad = bad_value(y)
            else:
                bad = y.copy()
                bad[-1, -1] = bad_value
            msg = _refused(rule, bad)
            assert c.rule.op_type in msg and "sample 2" in msg
            with pytest.raises(OutsideDomain):
                rule.sample_preimage(bad, p.rng, 0.1)
            # What the planner falls back to (nearest) is reachable.
            near = rule.nearest(bad)
            x_near = rule.preimage(near).v0.reshape(BATCH, *c.shape)
            assert_same_output(c, run(p.sess, x_near).reshape(y.shape), near)
        np.testing.assert_array_equal(rule.nearest(y), y)  # reachable outputs stay where they are


NULL_CASES = [p for p in LATEST if "null" in p.values[0].extra]


@pytest.mark.parametrize(("c", "opset"), NULL_CASES)
def test_null_space_gives_diversity(c: Case, opset: int):
    """Different rngs give different inputs, all exact; the family spans the null space."""
    p = prepare(c, opset)
    _, y = reachable(p, c)
    y64 = y.astype(np.float64)
    x1 = p.rule.invert(y64, np.random.default_rng(1))
    x2 = p.rule.invert(y64, np.random.default_rng(2))
    assert np.abs(x1 - x2).max() > 1e-2
    for x in (x1, x2):
        assert_same_output(c, run(p.sess, x), y)

    fam = p.rule.family(y64)
    assert isinstance(fam, Family)
    M, cvec = p.rule.dense()
    assert fam.free == c.extra["null"]
    np.testing.assert_allclose(fam.V.T @ fam.V, np.eye(fam.free), atol=1e-10)
    assert np.linalg.norm(M @ fam.V) < 1e-10 * np.linalg.norm(M)
    np.testing.assert_allclose(fam.v0 @ M.T + cvec, y64.reshape(BATCH, -1), atol=1e-10)


SAMPLED_CASES = [
    p
    for p in LATEST
    if issubclass(p.values[0].rule, PointRule)
    and p.values[0].rule.sample_preimage is not PointRule.sample_preimage
    and not p.values[0].extra.get("unique")
]


@pytest.mark.parametrize(("c", "opset"), SAMPLED_CASES)
def test_sample_preimage_gives_diversity(c: Case, opset: int):
    """Rules whose preimage of a point is a set draw different exact members per rng."""
    p = prepare(c, opset)
    _, y = reachable(p, c)
    y64 = y.astype(np.float64).reshape(BATCH, -1)
    xs = []
    for seed in (1, 2):
        fam = p.rule.sample_preimage(y64, np.random.default_rng(seed), 0.1)
        assert fam.free == 0 and fam.v0.shape == (BATCH, int(np.prod(c.shape)))
        x = fam.v0.reshape(BATCH, *c.shape)
        assert np.isfinite(x).all()
        assert_same_output(c, run(p.sess, x), y)
        xs.append(x)
    assert np.abs(xs[0] - xs[1]).max() > 1e-6


# ---------------------------------------------------------------------- not-invertible configs


@dataclass(frozen=True)
class Opaque:
    name: str
    node: onnx.NodeProto
    inits: tuple
    dims: tuple
    opset: int
    reason: str  # a substring of the reason the planner records


def _opaque(name, op, opset, reason, inputs=("x",), inits=(), dims=("N", 5), **attrs):
    node = helper.make_node(op, list(inputs), ["y"], **attrs)
    return Opaque(name, node, tuple(inits), tuple(dims), opset, reason)


TRUE = numpy_helper.from_array(np.array(True), "t")
OPAQUE = [
    _opaque("leakyrelu-alpha0", "LeakyRelu", 16, "alpha <= 0", alpha=0.0),
    _opaque("elu-alpha0", "Elu", 22, "alpha <= 0", alpha=0.0),
    _opaque("elu-alpha-negative", "Elu", 13, "alpha <= 0", alpha=-0.5),
    _opaque("hardsigmoid-alpha0", "HardSigmoid", 13, "alpha <= 0", alpha=0.0),
    _opaque("prelu-slope0", "PRelu", 16, "slope <= 0", ["x", "s"], [_f32("s", [1, 1, 0, 1, 1])]),
    _opaque("prelu-slope-neg", "PRelu", 9, "slope <= 0", ["x", "s"], [_f32("s", [-0.2])]),
    _opaque("div-by-zero", "Div", 14, "division by zero", ["x", "c"], [_f32("c", [1, 2, 0, 1, 1])]),
    _opaque("div-c-by-x", "Div", 14, "not affine", ["c", "x"], [_f32("c", 2.0)]),
    _opaque("mul-two-data", "Mul", 14, "two data tensors", ["x", "x"]),
    _opaque("add-two-data", "Add", 13, "two data tensors", ["x", "x"]),
    _opaque(
        "add-broadcasts-data",
        "Add",
        14,
        "larger shape",
        ["x", "c"],
        [_f32("c", np.ones((1, 4)))],
        dims=("N", 1),
    ),
    _opaque("softmax-axis0", "Softmax", 13, "batch dimension", axis=0),
    _opaque("softmax-axis0-opset11", "Softmax", 11, "batch dimension", axis=0),
    _opaque("flatten-axis0", "Flatten", 13, "axis=0", axis=0),
    _opaque("flatten-axis-minus-rank", "Flatten", 13, "axis=0", dims=("N", 2, 3), axis=-3),
    _opaque(
        "dropout-training", "Dropout", 13, "training mode", ["x", "r", "t"], [_f32("r", 0.5), TRUE]
    ),
]


@pytest.mark.parametrize("o", OPAQUE, ids=[o.name for o in OPAQUE])
def test_not_invertible_node_is_opaque(o: Opaque):
    model = one_node_model(o.node, list(o.inits), list(o.dims), o.opset)
    part = partition(model_mod.load(model), REGISTRY)
    assert [b.kind for b in part.blocks] == ["opaque"]
    step = part.first_without_rule
    assert step is not None and step.node.op_type == o.node.op_type
    assert o.reason in step.reason


def _ctx(op, inputs, constants, in_shape, out_shape, opset=13, **attrs) -> NodeContext:
    node = helper.make_node(op, inputs, ["y"], **attrs)
    return NodeContext(
        node=node,
        opset=opset,
        since_version=since_version(op, opset),
        attrs=attrs,
        constants=constants,
        data_input=0,
        input_shape=in_shape,
        output_shape=out_shape,
    )


W43 = np.ones((4, 3), np.float32)
NOT_APPLICABLE = [
    pytest.param(lin.Gemm, _ctx("Gemm", ["x", "B"], {}, (4,), (3,)), id="gemm-B-data"),
    pytest.param(lin.Gemm, _ctx("Gemm", ["x", "B", "C"], {1: W43}, (4,), (3,)), id="gemm-C-data"),
    pytest.param(
        lin.Gemm, _ctx("Gemm", ["x", "B"], {1: W43}, (4,), (3,), transA=1), id="gemm-transA"
    ),
    pytest.param(lin.MatMul, _ctx("MatMul", ["x", "W"], {}, (4,), (3,)), id="matmul-W-data"),
    pytest.param(lin.Mul, _ctx("Mul", ["x", "z"], {}, (4,), (4,)), id="mul-two-data"),
    pytest.param(
        lin.BatchNormalization,
        _ctx("BatchNormalization", ["x", "s", "b", "m", "v"], {1: W43[0], 2: W43[0]}, (3,), (3,)),
        id="batchnorm-mean-data",
    ),
    pytest.param(act.PRelu, _ctx("PRelu", ["x", "s"], {}, (4,), (4,)), id="prelu-slope-data"),
    pytest.param(act.Clip, _ctx("Clip", ["x", "lo"], {}, (4,), (4,)), id="clip-bound-data"),
    pytest.param(
        pw.Shrink, _ctx("Shrink", ["x"], {}, (4,), (4,), lambd=-0.5), id="shrink-lambd-negative"
    ),
    pytest.param(
        pw.MaxPool,
        replace(
            _ctx("MaxPool", ["x"], {}, (2, 6), (2, 5), kernel_shape=[2]),
            node=helper.make_node("MaxPool", ["x"], ["y", "indices"], kernel_shape=[2]),
        ),
        id="maxpool-indices-output",
    ),
    pytest.param(
        pw.MaxPool,
        _ctx("MaxPool", ["x"], {}, (1, 4), (1, 9), kernel_shape=[2], pads=[3, 3]),
        id="maxpool-window-in-padding",
    ),
    pytest.param(
        pw.MaxPool,
        _ctx("MaxPool", ["x"], {}, (1, 4), (1, 3), kernel_shape=[2], auto_pad="BOGUS"),
        id="maxpool-unknown-auto-pad",
    ),
    pytest.param(
        pw.MaxPool,
        _ctx("MaxPool", ["x"], {}, (4,), (3,), kernel_shape=[2, 2]),
        id="maxpool-kernel-rank",
    ),
    pytest.param(pw.Max, _ctx("Max", ["x", "z"], {}, (4,), (4,)), id="max-two-data"),
    pytest.param(
        pw.Min,
        _ctx("Min", ["x", "c", "z"], {1: W43[0]}, (3,), (3,)),
        id="min-two-data-one-constant",
    ),
    pytest.param(
        pw.Max,
        _ctx("Max", ["x", "c"], {1: W43}, (3,), (4, 3)),
        id="max-broadcasts-data",
    ),
    pytest.param(
        pw.Min,
        _ctx("Min", ["x", "c"], {1: W43[:2]}, (3,), (3,)),
        id="min-constant-varies-along-batch",
    ),
]


@pytest.mark.parametrize(("rule", "ctx"), NOT_APPLICABLE)
def test_rule_not_applicable(rule: type[InverseRule], ctx: NodeContext):
    with pytest.raises(RuleNotApplicable) as info:
        rule(ctx)
    assert str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ coverage


def _builtin_op_types() -> set[str]:
    return {
        e.op_type
        for e in default_registry().entries()
        if e.source == "builtin" or e.source.startswith("builtin ")
    }


def test_every_rule_has_a_case():
    """Adding a rule (or an op to the built-ins) without a case here fails."""
    covered = {c.rule.op_type for c in CASES}
    assert _builtin_op_types() == covered
    assert {r for r in builtin.ALL_RULES} == {c.rule for c in CASES}


def test_every_runnable_version_is_tested():
    """Each schema version onnxruntime can run is exercised; the rest are too old for it."""
    tested = {(c.rule, v) for c in CASES for v in c.opsets()}
    for rule in builtin.ALL_RULES:
        for v in rule.versions:
            opset = runnable_opset(rule.op_type, v)
            if opset is None:
                assert v < ORT_MIN_OPSET, (rule.op_type, v)
            else:
                assert (rule, opset) in tested, f"{rule.op_type} version {v} has no case"


def test_rule_kinds():
    for rule in builtin.ALL_RULES:
        assert rule.kind == ("affine" if issubclass(rule, AffineRule) else "point")
        assert rule.describe()


@pytest.mark.parametrize("trans_a", [0, 1], ids=["A", "A-transposed"])
@pytest.mark.parametrize("with_c", [False, True], ids=["no-C", "C"])
def test_gemm_on_a_whole_fixed_tensor(trans_a, with_c):
    """A fixed [4, 3] input is one sample: Gemm maps the whole matrix, transA included."""
    from onnxinv import invert

    rng = np.random.default_rng(3)
    rows_b = 4 if trans_a else 3
    inits = [_f32("W", rng.normal(size=(rows_b, 5)))]
    inputs = ["x", "W"]
    if with_c:
        inits.append(_f32("c", rng.normal(size=(1, 5))))
        inputs.append("c")
    node = helper.make_node("Gemm", inputs, ["y"], transA=trans_a)
    model = one_node_model(node, inits, [4, 3], 13)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    lm = model_mod.load(model)
    assert lm.input_shape == (4, 3) and not lm.batch_axis
    assert [b.kind for b in partition(lm, REGISTRY).blocks] == ["invertible"]
    result = invert(model, {"values": y.tolist()}, samples=3, seed=0, method="backward")
    assert len(result) >= 1
    for xi in result.inputs:
        np.testing.assert_allclose(sess.run(None, {"x": xi})[0], y, atol=1e-4)


def test_channel_expanding_conv_recovers_its_input_exactly():
    """1 → 4 channels with padding is injective: the inverse of its output is the input itself."""
    c = next(c for c in CASES if c.name == "conv2d-1to4-channels-pad1")
    p = prepare(c, 13)
    x0, y = reachable(p, c)
    assert p.rule.onto(1e12) is False and p.rule.nullity(100.0) == 0
    x = p.rule.invert(y.astype(np.float64), p.rng)
    np.testing.assert_allclose(x, x0, atol=2e-5)
