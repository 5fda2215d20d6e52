"""The registry of inverse rules, keyed by ONNX (domain, op_type, since_version).

A model's node is resolved the way onnx2torch resolves converters: the operator schema in force
at the model's opset gives a ``since_version``, and the rule registered for exactly that version
applies. Operators without an ONNX schema (custom domains) resolve to the newest registered
version not above the model's opset for that domain.

Rules arrive through the entry-point group ``onnxinv.rules``: each entry point names a
``register(registry)`` function. The built-in rules are registered through the same path
(``onnxinv.rules.builtin:register``), so a plugin and a built-in are indistinguishable to the
planner; ``onnxinv rules`` lists every rule and where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import OnnxInvError
from ..plugins import PluginGroup
from ..schema import schema_version
from .base import InverseRule

ENTRY_POINT_GROUP = "onnxinv.rules"


class RegistryError(OnnxInvError):
    """A rule could not be registered or a plugin could not be loaded."""


@dataclass(frozen=True)
class RuleEntry:
    """One registered (domain, op_type, since_version) and the rule class that handles it."""

    domain: str
    op_type: str
    version: int
    rule: type[InverseRule]
    source: str


class Registry:
    """Inverse rules by (domain, op_type, since_version); build a fresh one for tests."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, int], RuleEntry] = {}
        self.plugins: dict[str, str] = {}  # entry-point name -> "loaded" / "disabled" / error

    def register(
        self,
        rule: type[InverseRule],
        *,
        versions: Iterable[int] | None = None,
        override: bool = False,
        source: str = "unknown",
    ) -> None:
        """Register ``rule`` for each of its versions.

        Raises:
            RegistryError: a key is already registered and ``override`` is False, or the rule
                does not declare ``op_type``/``versions``.
        """
        op = getattr(rule, "op_type", None)
        vs = tuple(versions if versions is not None else getattr(rule, "versions", ()))
        if not op or not vs:
            raise RegistryError(f"rule {rule.__name__} declares no op_type or versions")
        domain = _norm(getattr(rule, "domain", ""))
        for v in vs:
            key = (domain, op, int(v))
            if key in self._entries and not override:
                old = self._entries[key]
                raise RegistryError(
                    f"{_label(key)} is already registered by {old.rule.__name__} from "
                    f"{old.source}; pass override=True to replace it"
                )
            self._entries[key] = RuleEntry(domain, op, int(v), rule, source)

    def resolve(self, domain: str, op_type: str, opset: int) -> RuleEntry | None:
        """The rule for ``op_type`` in a model whose opset for ``domain`` is ``opset``."""
        domain = _norm(domain)
        version = schema_version(op_type, opset, domain)
        if version is not None:
            return self._entries.get((domain, op_type, version))
        versions = [v for (d, o, v) in self._entries if d == domain and o == op_type and v <= opset]
        return self._entries[(domain, op_type, max(versions))] if versions else None

    def entries(self) -> list[RuleEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.domain, e.op_type, e.version))

    def __contains__(self, key: tuple[str, str, int]) -> bool:
        d, o, v = key
        return (_norm(d), o, v) in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _norm(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def _label(key: tuple[str, str, int]) -> str:
    d, o, v = key
    return f"{d + '.' if d else ''}{o} (version {v})"


def _register_builtins(registry: Registry) -> None:
    from .builtin import register  # on first use: it imports every rule module

    register(registry)


#: The ``onnxinv.rules`` group: its default registries are cached in ``RULE_PLUGINS.defaults``.
RULE_PLUGINS = PluginGroup(ENTRY_POINT_GROUP, Registry, _register_builtins)


def load_plugins(registry: Registry, disabled: Iterable[str] = ()) -> Registry:
    """Call every ``onnxinv.rules`` entry point's ``register(registry)``, except ``disabled``.

    A plugin that fails to import or register is recorded in ``registry.plugins`` with the
    error and skipped; it never stops the built-ins from loading.
    """
    return RULE_PLUGINS.load(registry, disabled)


def default_registry(disabled: Iterable[str] = ()) -> Registry:
    """The registry with built-ins and every installed plugin (cached per disabled set)."""
    return RULE_PLUGINS.default(disabled)
