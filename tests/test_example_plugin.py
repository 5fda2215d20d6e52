"""The example plugin ``plugins/onnxinv-mish`` tested from the main suite, uninstalled.

Its source folder goes on ``sys.path`` for each test, and the plugin's own test functions (they
take no fixtures) are imported from ``plugins/onnxinv-mish/tests/test_mish.py`` and called here,
so a change to onnxinv that breaks the documented plugin path fails the main test run.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from onnxinv import plugins
from onnxinv.rules import Registry, load_plugins
from onnxinv.rules import registry as registry_mod

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "onnxinv-mish"
PLUGIN_TESTS = PLUGIN / "tests" / "test_mish.py"
MODULE = "onnxinv_mish_example_tests"


def _test_names() -> list[str]:
    tree = ast.parse(PLUGIN_TESTS.read_text())
    return [
        n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    ]


@pytest.fixture
def plugin_tests(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN))
    if MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(MODULE, PLUGIN_TESTS)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[MODULE] = module
    return sys.modules[MODULE]


def test_plugin_tests_were_found():
    assert len(_test_names()) >= 5


@pytest.mark.parametrize("name", _test_names())
def test_plugin(plugin_tests, name):
    getattr(plugin_tests, name)()


def test_entry_point_declaration_loads(monkeypatch):
    """The pyproject's entry point, loaded the way an installed plugin is."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    declared = project["entry-points"][registry_mod.ENTRY_POINT_GROUP]
    assert declared == {"mish": "onnxinv_mish:register"}
    assert "onnxinv" in project["dependencies"]
    eps = [
        metadata.EntryPoint("builtin", "onnxinv.rules.builtin:register", "onnxinv.rules"),
        *(metadata.EntryPoint(k, v, registry_mod.ENTRY_POINT_GROUP) for k, v in declared.items()),
    ]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group=None: eps)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    reg = load_plugins(Registry())
    assert reg.plugins == {"builtin": "loaded", "mish": "loaded"}
    entry = reg.resolve("", "Mish", 20)
    assert entry.rule.__module__ == "onnxinv_mish" and entry.source == "mish"
    assert reg.resolve("com.example", "Mish", 1).source == "mish"

    off = load_plugins(Registry(), disabled=["mish"])
    assert off.plugins["mish"] == "disabled" and off.resolve("", "Mish", 20) is None
