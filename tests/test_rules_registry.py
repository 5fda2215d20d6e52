"""The rule registry: resolution through ONNX schemas, conflicts, and plugin discovery.

Plugins are discovered through a fake ``importlib.metadata.entry_points`` so these tests do not
depend on what is installed; every test builds a fresh :class:`Registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxinv
from onnxinv import plugins
from onnxinv.load import model as model_mod
from onnxinv.partition.blocks import partition
from onnxinv.rules import (
    AffineRule,
    ElementwiseRule,
    Family,
    Registry,
    RegistryError,
    builtin,
    default_registry,
    load_plugins,
)
from onnxinv.rules import linear as lin
from onnxinv.rules import registry as registry_mod

# ---------------------------------------------------------------------------------- test rules


class Neg(AffineRule):
    """Neg: y = −x (a plugin's rule for an operator without a built-in rule)."""

    op_type = "Neg"
    versions = (6, 13)

    def forward(self, x):
        return -x

    def pullback(self, family: Family, max_condition: float) -> Family:
        return Family(-family.v0, family.V.copy(), family.residual.copy())


class MyGemm(lin.Gemm):
    """A replacement Gemm rule."""


class CustomOp(ElementwiseRule):
    """A custom-domain operator: y = 2x."""

    op_type = "Twice"
    domain = "com.example"
    versions = (1, 3)

    def forward(self, x):
        return 2 * x

    def inverse(self, y):
        return y / 2


# ------------------------------------------------------------------------ registration/resolve


def test_resolves_through_the_schema_in_force():
    reg = Registry()
    reg.register(lin.Gemm, versions=[13])
    for opset in (13, 17, 20, 25):
        entry = reg.resolve("", "Gemm", opset)
        assert entry is not None and entry.version == 13 and entry.rule is lin.Gemm
    assert reg.resolve("ai.onnx", "Gemm", 20).version == 13  # the default domain's other name
    # Opset 11 and 12 use Gemm-11's schema, which is not registered: no rule, not Gemm-13's.
    assert reg.resolve("", "Gemm", 11) is None
    assert reg.resolve("", "Gemm", 12) is None
    reg.register(lin.Gemm, versions=[11])
    assert reg.resolve("", "Gemm", 12).version == 11
    assert ("", "Gemm", 11) in reg and ("ai.onnx", "Gemm", 13) in reg
    assert ("", "Gemm", 9) not in reg
    assert reg.resolve("", "MatMul", 13) is None
    assert len(reg) == 2


def test_builtin_versions_resolve_at_every_opset():
    reg = Registry()
    builtin.register(reg)
    for rule in builtin.ALL_RULES:
        for opset in range(min(rule.versions), 26):
            entry = reg.resolve("", rule.op_type, opset)
            assert entry is not None and entry.rule is rule, (rule.op_type, opset)
            assert entry.version <= opset


def test_registering_twice_needs_override():
    reg = Registry()
    reg.register(lin.Gemm, source="builtin")
    with pytest.raises(RegistryError, match=r"Gemm \(version 13\) is already registered by Gemm"):
        reg.register(MyGemm, versions=[13])
    assert reg.resolve("", "Gemm", 20).rule is lin.Gemm  # unchanged by the failed attempt
    reg.register(MyGemm, versions=[13], override=True, source="mine")
    entry = reg.resolve("", "Gemm", 20)
    assert entry.rule is MyGemm and entry.source == "mine"
    assert reg.resolve("", "Gemm", 11).rule is lin.Gemm  # other versions untouched


def test_custom_domain_resolves_to_newest_version_not_above_opset():
    reg = Registry()
    reg.register(CustomOp)
    assert reg.resolve("com.example", "Twice", 0) is None
    assert reg.resolve("com.example", "Twice", 1).version == 1
    assert reg.resolve("com.example", "Twice", 2).version == 1
    assert reg.resolve("com.example", "Twice", 3).version == 3
    assert reg.resolve("com.example", "Twice", 99).version == 3
    assert reg.resolve("", "Twice", 3) is None  # the domain is part of the key
    assert reg.resolve("com.other", "Twice", 3) is None
    assert [e.version for e in reg.entries()] == [1, 3]


@pytest.mark.parametrize("missing", ["op_type", "versions"])
def test_rule_without_op_type_or_versions_is_rejected(missing):
    attrs = {"op_type": "Foo", "versions": (1,)}
    del attrs[missing]
    bad = type("Bad", (ElementwiseRule,), attrs)
    with pytest.raises(RegistryError, match="Bad declares no op_type or versions"):
        Registry().register(bad)
    if missing == "versions":  # versions given at registration time are enough
        reg = Registry()
        reg.register(bad, versions=[1])
        # No ONNX schema named "Foo": resolved like a custom-domain operator.
        assert reg.resolve("", "Foo", 4).rule is bad


def test_empty_versions_are_rejected():
    with pytest.raises(RegistryError):
        Registry().register(Neg, versions=[])


# ----------------------------------------------------------------------------------- plugins


@dataclass
class FakeEntryPoint:
    name: str
    target: object  # what load() returns, or an exception it raises
    dist: object = None

    def load(self):
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


def fake_eps(monkeypatch, *eps: FakeEntryPoint, builtin_ep: bool = True) -> None:
    listed = ([FakeEntryPoint("builtin", builtin.register)] if builtin_ep else []) + list(eps)

    def entry_points(group=None, **kw):
        # Rule plugins only; solver plugins (another group) are tested in test_solvers_registry.py.
        return list(listed) if group == registry_mod.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)


def register_neg(registry):
    registry.register(Neg)


def neg_model():
    node = helper.make_node("Neg", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "neg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_plugin_rule_is_loaded_and_used(monkeypatch):
    dist = SimpleNamespace(name="onnxinv-neg", version="1.2")
    fake_eps(monkeypatch, FakeEntryPoint("neg", register_neg, dist))
    reg = load_plugins(Registry())
    assert reg.plugins == {"builtin": "loaded", "neg": "loaded"}
    entry = reg.resolve("", "Neg", 17)
    assert entry.rule is Neg and entry.version == 13
    assert entry.source == "neg (onnxinv-neg 1.2)"
    assert reg.resolve("", "Gemm", 17).source == "builtin"

    part = partition(model_mod.load(neg_model()), reg)
    assert [b.kind for b in part.blocks] == ["invertible"]
    assert isinstance(part.blocks[0].steps[0].rule, Neg)

    target = [[0.5, -1.0, 2.0, 0.25]]
    result = onnxinv.invert(
        neg_model(), {"values": target}, samples=2, method="backward", registry=reg
    )
    assert result.verified.all()
    # Neg is a bijection: the one preimage is returned once, and a note says so.
    np.testing.assert_allclose(result.inputs, -np.array(target), atol=1e-6)
    assert any("1 of 2 samples are distinct" in n for n in result.notes)
    # Without the plugin, Neg has no rule and the block is opaque.
    bare = load_plugins(Registry(), disabled=["neg"])
    assert bare.resolve("", "Neg", 17) is None
    assert partition(model_mod.load(neg_model()), bare).blocks[0].kind == "opaque"


def test_failing_plugin_is_recorded_and_builtins_still_load(monkeypatch):
    def boom(registry):
        raise RuntimeError("boom")

    fake_eps(
        monkeypatch,
        FakeEntryPoint("broken", boom),
        FakeEntryPoint("missing", ImportError("No module named 'onnxinv_missing'")),
        FakeEntryPoint("neg", register_neg),
    )
    reg = load_plugins(Registry())
    assert reg.plugins["broken"] == "failed: RuntimeError: boom"
    assert reg.plugins["missing"] == "failed: ImportError: No module named 'onnxinv_missing'"
    assert reg.plugins["builtin"] == "loaded" and reg.plugins["neg"] == "loaded"
    for rule in builtin.ALL_RULES:
        assert reg.resolve("", rule.op_type, 25).rule is rule
    assert reg.resolve("", "Neg", 17).rule is Neg


def test_plugin_conflicting_with_builtin_fails_unless_override(monkeypatch):
    def clash(registry):
        registry.register(MyGemm)

    def replace(registry):
        registry.register(MyGemm, versions=[13], override=True)

    # Listed before the built-ins: they are still registered first, so override wins.
    fake_eps(monkeypatch, FakeEntryPoint("clash", clash), FakeEntryPoint("replace", replace))
    reg = load_plugins(Registry())
    assert reg.plugins["clash"].startswith("failed: RegistryError: Gemm (version 1)")
    assert reg.plugins["replace"] == "loaded"
    assert reg.resolve("", "Gemm", 20).rule is MyGemm
    assert reg.resolve("", "Gemm", 20).source == "replace"
    assert reg.resolve("", "Gemm", 11).rule is lin.Gemm


def test_disabled_plugins_are_skipped(monkeypatch):
    fake_eps(monkeypatch, FakeEntryPoint("neg", register_neg))
    reg = load_plugins(Registry(), disabled=["neg"])
    assert reg.plugins == {"builtin": "loaded", "neg": "disabled"}
    assert reg.resolve("", "Neg", 17) is None


@pytest.mark.parametrize("value", ["neg", " other , neg ,", "neg,builtin"])
def test_env_var_disables_plugins(monkeypatch, value):
    fake_eps(monkeypatch, FakeEntryPoint("neg", register_neg))
    monkeypatch.setenv(plugins.DISABLE_ENV, value)
    reg = load_plugins(Registry())
    assert reg.plugins["neg"] == "disabled"
    assert reg.resolve("", "Neg", 17) is None
    builtin_off = "builtin" in value
    assert reg.plugins["builtin"] == ("disabled" if builtin_off else "loaded")
    assert (reg.resolve("", "Gemm", 17) is None) == builtin_off


def test_builtins_load_without_any_entry_point(monkeypatch):
    """A source tree that was never installed has no entry points: built-ins load directly."""
    fake_eps(monkeypatch, builtin_ep=False)
    reg = load_plugins(Registry())
    assert reg.plugins == {"builtin": "loaded"}
    assert len(reg) == sum(len(r.versions) for r in builtin.ALL_RULES)
    assert {e.source for e in reg.entries()} == {"builtin"}


def test_plugin_sees_the_registry_through_its_proxy(monkeypatch):
    seen = {}

    def inspecting(registry):
        seen["gemm"] = registry.resolve("", "Gemm", 13)
        seen["size"] = len(registry.entries())
        registry.register(CustomOp, source="explicit")

    fake_eps(monkeypatch, FakeEntryPoint("inspect", inspecting))
    reg = load_plugins(Registry())
    assert seen["gemm"].rule is lin.Gemm and seen["size"] == len(reg) - 2
    assert reg.resolve("com.example", "Twice", 5).source == "explicit"


def test_default_registry_is_cached_per_disabled_set(monkeypatch):
    monkeypatch.setattr(registry_mod.RULE_PLUGINS, "defaults", {})
    fake_eps(monkeypatch, FakeEntryPoint("neg", register_neg))
    a = default_registry()
    assert default_registry() is a
    b = default_registry(disabled=("neg",))
    assert b is not a and b.plugins["neg"] == "disabled" and a.plugins["neg"] == "loaded"
