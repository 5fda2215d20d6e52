"""Entry-point plugins: the one loader behind rule plugins and solver plugins.

A plugin is an entry point in a group (``onnxinv.rules`` or ``onnxinv.solvers``) naming a
``register(registry)`` function. Built-ins arrive through the same path (the entry point named
``builtin``), so a plugin and a built-in are indistinguishable to the rest of onnxinv.

Each group is a :class:`PluginGroup`: it loads the group into a registry and keeps the default
registry (built-ins and every installed plugin) per set of disabled plugins.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Generic, TypeVar

DISABLE_ENV = "ONNXINV_DISABLE_PLUGINS"
BUILTIN = "builtin"


def disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {p.strip() for p in raw.split(",") if p.strip()}


class SourceRegistry:
    """What a plugin's ``register`` receives: the registry, stamping the plugin as source."""

    def __init__(self, registry, source: str):
        self._registry, self._source = registry, source

    def register(self, item, *, source=None, **kwargs) -> None:
        self._registry.register(item, source=source or self._source, **kwargs)

    def __getattr__(self, name):
        return getattr(self._registry, name)


def load_entry_points(
    group: str,
    registry,
    builtin: Callable[[object], None],
    disabled: Iterable[str] = (),
) -> dict[str, str]:
    """Call every ``group`` entry point's ``register(registry)``, except ``disabled`` ones.

    A plugin that fails to import or register is recorded with its error and skipped; it never
    stops the built-ins from loading. ``builtin`` registers the built-ins when the package's
    own entry point is missing (a source tree that was never installed).

    Returns:
        {entry-point name: "loaded" | "disabled" | "failed: ..."}.
    """
    status: dict[str, str] = {}
    off = set(disabled) | disabled_from_env()
    eps = sorted(metadata.entry_points(group=group), key=lambda e: e.name != BUILTIN)
    if not any(ep.name == BUILTIN for ep in eps):
        builtin(SourceRegistry(registry, BUILTIN))
        status[BUILTIN] = "loaded"
    for ep in eps:
        if ep.name in off:
            status[ep.name] = "disabled"
            continue
        try:
            register = ep.load()
            source = ep.name if ep.dist is None else f"{ep.name} ({ep.dist.name} {ep.dist.version})"
            register(SourceRegistry(registry, source))
            status[ep.name] = "loaded"
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break onnxinv
            status[ep.name] = f"failed: {type(exc).__name__}: {exc}"
    return status


R = TypeVar("R")


class PluginGroup(Generic[R]):
    """One entry-point group and the registries loaded from it.

    Args:
        group: the entry-point group (``onnxinv.rules``, ``onnxinv.solvers``).
        new_registry: makes an empty registry (it has a ``plugins`` dict for the load status).
        builtin: registers the built-ins into a registry when the package's own ``builtin``
            entry point is missing (a source tree that was never installed).

    Attributes:
        defaults: the default registries, by the set of plugins disabled in them.
    """

    def __init__(self, group: str, new_registry: Callable[[], R], builtin: Callable[[R], None]):
        self.group = group
        self.new_registry = new_registry
        self.builtin = builtin
        self.defaults: dict[frozenset[str], R] = {}

    def load(self, registry: R, disabled: Iterable[str] = ()) -> R:
        """Call every entry point's ``register(registry)``, except ``disabled`` ones.

        Each plugin's status ("loaded", "disabled", "failed: ...") goes to
        ``registry.plugins``; a plugin that fails never stops the built-ins from loading.
        """
        registry.plugins.update(load_entry_points(self.group, registry, self.builtin, disabled))
        return registry

    def default(self, disabled: Iterable[str] = ()) -> R:
        """A registry with the built-ins and every installed plugin but ``disabled`` ones and
        those :data:`DISABLE_ENV` names, built on first use and kept for that set."""
        key = frozenset(set(disabled) | disabled_from_env())
        if key not in self.defaults:
            self.defaults[key] = self.load(self.new_registry(), key)
        return self.defaults[key]
