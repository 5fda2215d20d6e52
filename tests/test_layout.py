"""The package's shape: imports point down the data path, no circles, no private names shared.

The import graph is read statically from every module of ``onnxinv/``, lazy imports (inside
functions) included; imports under ``if TYPE_CHECKING:`` never run and are left out. Each
module belongs to a layer of the data path; a module may import its own layer and the layers
before it, never a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import onnxinv

PACKAGE = Path(onnxinv.__file__).parent

# The data path, first to last. A module belongs to the first entry whose prefix it has.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("errors", "schema", "budget", "plugins", "settings", "shapes")),
    ("target", ("target",)),
    ("load", ("load",)),
    ("rules and conversion", ("rules", "convert")),
    ("objective and check", ("objective", "verify", "distinct")),
    ("partition", ("partition",)),
    ("solvers", ("solvers",)),
    ("write", ("result", "write")),
    ("api", ("api",)),
    ("sweeps", ("sweeps",)),
    ("cli", ("cli", "__main__")),
    ("old import paths", ("model", "graph")),
    ("package", ("",)),
]


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, package)
    return out


MODULES = _modules()


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST):
    """Every import node outside ``if TYPE_CHECKING:`` blocks, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, package: bool, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    base = module.split(".")
    if not package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> modules it imports, private names imported from another module)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    private: list[str] = []
    for module, (path, package) in MODULES.items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                pairs = [(alias.name, None) for alias in node.names]
            else:
                source = _absolute(module, package, node)
                pairs = []
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    pairs.append((sub, None) if sub in MODULES else (source, alias.name))
            for target, name in pairs:
                if not target or not (target == "onnxinv" or target.startswith("onnxinv.")):
                    continue
                while target not in MODULES and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != module:
                    edges[module].add(target)
                hidden = [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
                if name and name.startswith("_") and not name.startswith("__"):
                    hidden.append(name)
                if hidden and target != module:
                    private.append(
                        f"{module} imports {target} {name or ''} ({path.name}:{node.lineno})"
                    )
    return edges, private


def _layer(module: str) -> int:
    rest = module.removeprefix("onnxinv").removeprefix(".")
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if rest == prefix or (prefix and rest.startswith(prefix + ".")):
                return i
    raise AssertionError(f"{module} is in no layer of LAYERS: place it on the data path")


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_is_read():
    """The reader sees the edges it must (a check that would pass on an empty graph is none)."""
    edges, _ = _graph()
    assert "onnxinv.load.model" in edges["onnxinv.api"] or "onnxinv.load" in edges["onnxinv.api"]
    assert "onnxinv.partition.chain" in edges["onnxinv.solvers.exact.program"]
    assert len(MODULES) > 60


def test_no_cycle():
    edges, _ = _graph()
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_imports_point_down_the_data_path():
    edges, _ = _graph()
    upward = [
        f"{m} ({LAYERS[_layer(m)][0]}) imports {n} ({LAYERS[_layer(n)][0]})"
        for m, targets in sorted(edges.items())
        for n in sorted(targets)
        if _layer(n) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_a_module():
    _, private = _graph()
    assert not private, "\n".join(private)


def test_tests_use_public_names_only():
    """A test imports what a user or plugin author could import: no ``_private`` name."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                "onnxinv"
            ):
                continue
            hidden = [a.name for a in node.names if a.name.startswith("_")]
            hidden += [p for p in node.module.split(".") if p.startswith("_")]
            if hidden:
                found.append(f"{path.name}:{node.lineno} imports {', '.join(hidden)}")
    assert not found, "\n".join(found)


def test_every_module_belongs_to_a_layer():
    assert _layer("onnxinv.solvers.backward.plan") == _layer("onnxinv.solvers")
    with pytest.raises(AssertionError, match="no layer"):
        _layer("onnxinv.somewhere_new")
    for module in MODULES:
        _layer(module)
