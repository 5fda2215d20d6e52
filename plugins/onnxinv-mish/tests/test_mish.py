"""Tests of the Mish plugin: the rule on one-node models checked by onnxruntime, its refusal
below the minimum, and a whole inversion through ``onnxinv.invert`` with the plugin registered.

The functions take no fixtures, so onnxinv's own test suite can import and call them
(``tests/test_example_plugin.py`` in the onnxinv repository) without installing the plugin.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxinv_mish
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxinv_mish import X_MIN, Y_MIN, ExampleMish, Mish

import onnxinv
from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.rules import NodeContext, OutsideDomain, Registry, RegistryError, builtin

OPSETS = (18, 22)  # one per since_version of ONNX's Mish schema


def registry() -> Registry:
    """The built-in rules plus this plugin, without relying on installed entry points."""
    reg = Registry()
    builtin.register(reg)
    onnxinv_mish.register(reg)
    return reg


def make_model(nodes, inits, n_in: int, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "mish_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    imports = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = max(7, helper.find_min_ir_version_for(imports))
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"x": np.asarray(x, dtype=np.float32)})[0]


def mish_rule(opset: int, n: int = 6) -> tuple[onnx.ModelProto, Mish]:
    """A one-node Mish model and the rule the planner builds for it."""
    model = make_model([helper.make_node("Mish", ["x"], ["y"])], [], n, opset)
    part = partition(model_mod.load(model), registry())
    (block,) = part.blocks
    assert block.kind == "invertible"
    rule = block.steps[0].rule
    assert type(rule) is Mish and block.steps[0].entry.version == opset
    return model, rule


def test_registers_both_operators():
    reg = Registry()
    onnxinv_mish.register(reg)
    keys = {(e.domain, e.op_type, e.version) for e in reg.entries()}
    assert keys == {("", "Mish", 18), ("", "Mish", 22), ("com.example", "Mish", 1)}
    assert reg.resolve("", "Mish", 17) is None  # Mish does not exist before opset 18
    assert reg.resolve("", "Mish", 21).rule is Mish
    assert reg.resolve("", "Mish", 25).version == 22
    assert reg.resolve("com.example", "Mish", 4).rule is ExampleMish
    with pytest.raises(RegistryError):
        onnxinv_mish.register(reg)  # a second registration of the same keys is refused


def test_minimum_constants():
    assert abs(onnxinv_mish.mish(np.array(X_MIN)) - Y_MIN) < 1e-16
    h = 1e-6
    assert onnxinv_mish.mish(np.array([X_MIN - h, X_MIN + h])).min() > Y_MIN
    assert abs(onnxinv_mish._mish_prime(np.array(X_MIN))) < 1e-12


def test_forward_matches_onnxruntime():
    rng = np.random.default_rng(0)
    for opset in OPSETS:
        model, rule = mish_rule(opset)
        x = 4 * rng.standard_normal((8, 6))
        np.testing.assert_allclose(rule.forward(x), run(model, x), rtol=1e-5, atol=1e-6)


def test_round_trip_through_onnxruntime():
    """Targets from both branches: the rule answers on the increasing one; ORT agrees."""
    rng = np.random.default_rng(1)
    for opset in OPSETS:
        model, rule = mish_rule(opset)
        x0 = np.concatenate(
            [
                rng.uniform(X_MIN + 0.05, 6.0, (4, 6)),  # increasing branch
                rng.uniform(-6.0, X_MIN - 0.05, (2, 6)),  # decreasing branch: y in (Y_MIN, 0)
            ]
        ).astype(np.float32)
        y = run(model, x0)
        x = rule.invert(y.astype(np.float64), rng)
        assert x.shape == x0.shape and (x >= X_MIN).all()
        np.testing.assert_allclose(run(model, x), y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x[:4], x0[:4], rtol=1e-4, atol=1e-4)  # same branch: same x
        assert (x[4:] > X_MIN).all() and (x0[4:] < X_MIN).all()  # the other preimage


def test_inverse_is_exact_on_the_increasing_branch():
    y = np.concatenate(
        [
            Y_MIN + np.logspace(-14, 0, 50),
            np.linspace(-0.3, 10.0, 200),
            np.logspace(1, 300, 50),
            -np.logspace(-300, -2, 20),
            [0.0],
        ]
    )
    x = onnxinv_mish.mish_inverse(y)
    assert np.isfinite(x).all() and (x >= X_MIN).all()
    err = np.abs(onnxinv_mish.mish(x) - y) / np.maximum(1.0, np.abs(y))
    assert err.max() <= 1e-12


def test_refuses_values_below_the_minimum():
    _, rule = mish_rule(18, n=3)
    good = np.array([[0.5, -0.2, 3.0], [Y_MIN + 1e-6, 0.0, 1e4]])
    assert np.isfinite(rule.preimage(good).v0).all()
    for bad_value in (Y_MIN - 1e-9, Y_MIN, -0.5, -10.0, np.nan):
        bad = good.copy()
        bad[1, 2] = bad_value
        with pytest.raises(OutsideDomain) as info:
            rule.preimage(bad)
        msg = str(info.value)
        assert "Mish" in msg and "sample 1" in msg and "\n" not in msg


def test_forward_interval_across_the_minimum():
    _, rule = mish_rule(18, n=4)
    rng = np.random.default_rng(2)
    lo = np.array([-3.0, -1.0, -2.0, 0.5])
    hi = np.array([-2.0, 1.0, 0.0, 2.0])  # below, above, across the minimum, positive
    out_lo, out_hi = rule.forward_interval(lo, hi)
    assert out_lo[2] == Y_MIN
    xs = lo + (hi - lo) * rng.random((2000, 4))
    ys = rule.forward(xs)
    assert (ys >= out_lo - 1e-15).all() and (ys <= out_hi + 1e-15).all()
    np.testing.assert_allclose(ys.min(0), out_lo, atol=1e-3)  # and the bounds are tight


def test_custom_domain_rule():
    """com.example.Mish: onnxruntime cannot run it, so only the rule itself is checked."""
    node = helper.make_node("Mish", ["x"], ["y"], domain="com.example")
    reg = registry()
    entry = reg.resolve("com.example", "Mish", 1)
    assert entry.rule is ExampleMish and entry.version == 1
    ctx = NodeContext(node, 1, 1, {}, {}, 0, (2, 3), (2, 3))
    rule = entry.rule(ctx)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(X_MIN + 0.01, 5.0, (5, 2, 3))
    y = rule.forward(x0)
    x = rule.invert(y, rng)
    assert x.shape == (5, 2, 3)
    np.testing.assert_allclose(x, x0, rtol=1e-9, atol=1e-9)
    with pytest.raises(OutsideDomain):
        rule.preimage(np.full((1, 6), -1.0))


def _gemm_mish_gemm_softmax(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((6, 5)) / np.sqrt(6)
    w2 = rng.standard_normal((5, 4)) / np.sqrt(5)
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "B1"),
        numpy_helper.from_array(w2.astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h1"]),
        helper.make_node("Mish", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "W2", "B2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    return make_model(nodes, inits, 6, 18)


def test_end_to_end_backward_inversion():
    """onnxinv.invert(method="backward") through Gemm → Mish → Gemm → Softmax, verified by ORT."""
    model = _gemm_mish_gemm_softmax()
    x0 = np.random.default_rng(4).uniform(-1.0, 1.0, (1, 6))
    p = run(model, x0)[0].astype(np.float64)
    p /= p.sum()
    result = onnxinv.invert(
        model,
        {"distribution": p.tolist()},
        samples=8,
        seed=0,
        method="backward",
        registry=registry(),
    )
    plan = result.model["plan"]
    assert len(plan) == 1 and "invertible" in plan[0], plan
    assert "Gemm → Mish → Gemm → Softmax" in plan[0]
    assert result.verified.all()
    assert set(result.methods) == {"backward"}
    probs = run(model, result.inputs)
    assert np.abs(probs - p).max() <= 1e-4  # the default target tolerance
    assert np.ptp(result.inputs, axis=0).max() > 1e-3  # different samples
