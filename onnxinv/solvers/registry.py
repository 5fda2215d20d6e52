"""The registry of solvers, by method name (``--method NAME``).

Solvers arrive through the entry-point group ``onnxinv.solvers``, each entry point naming a
``register(registry)`` function; the built-ins come through the same path
(``onnxinv.solvers.builtin:register``). Adding a solver is one class and one ``register`` call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import OnnxInvError, OptionError
from ..plugins import PluginGroup
from .base import Solver
from .builtin import register as register_builtins

ENTRY_POINT_GROUP = "onnxinv.solvers"


class SolverRegistryError(OnnxInvError):
    """A solver could not be registered."""


@dataclass(frozen=True)
class SolverEntry:
    """One registered method name and the solver class behind it."""

    name: str
    solver: type[Solver]
    source: str


class SolverRegistry:
    """Solvers by method name; build a fresh one for tests."""

    def __init__(self) -> None:
        self._entries: dict[str, SolverEntry] = {}
        self.plugins: dict[str, str] = {}

    def register(
        self, solver: type[Solver], *, override: bool = False, source: str = "unknown"
    ) -> None:
        """Register ``solver`` under its ``name``.

        Raises:
            SolverRegistryError: the name is taken and ``override`` is False, or the class does
                not declare ``name`` and ``summary`` or is not a :class:`Solver`.
        """
        name = getattr(solver, "name", None)
        if not (isinstance(solver, type) and issubclass(solver, Solver)):
            raise SolverRegistryError(f"{solver!r} is not a Solver subclass")
        if not name or not getattr(solver, "summary", None):
            raise SolverRegistryError(f"solver {solver.__name__} declares no name or summary")
        if name in self._entries and not override:
            old = self._entries[name]
            raise SolverRegistryError(
                f"method {name!r} is already registered by {old.solver.__name__} from "
                f"{old.source}; pass override=True to replace it"
            )
        self._entries[name] = SolverEntry(name, solver, source)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> type[Solver]:
        return self._entries[name].solver

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entries(self) -> list[SolverEntry]:
        return list(self._entries.values())

    def __contains__(self, name: str) -> bool:
        return name in self._entries


#: The ``onnxinv.solvers`` group: its default registries are cached in
#: ``SOLVER_PLUGINS.defaults``.
SOLVER_PLUGINS = PluginGroup(ENTRY_POINT_GROUP, SolverRegistry, register_builtins)


def load_solver_plugins(registry: SolverRegistry, disabled: Iterable[str] = ()) -> SolverRegistry:
    """Register every ``onnxinv.solvers`` entry point's solvers, except ``disabled`` plugins."""
    return SOLVER_PLUGINS.load(registry, disabled)


def default_solvers(disabled: Iterable[str] = ()) -> SolverRegistry:
    """The registry with built-ins and every installed solver plugin (cached per disabled set)."""
    return SOLVER_PLUGINS.default(disabled)


def check_method(method: str, name: str = "method") -> str:
    """``method`` if a solver is registered under it (plugins included), else an
    :class:`~onnxinv.errors.OptionError` listing the methods."""
    names = default_solvers().names()
    if method not in names:
        raise OptionError(f"{name} must be one of {', '.join(names)}, not {method!r}")
    return method
