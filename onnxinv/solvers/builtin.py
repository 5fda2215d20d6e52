"""The built-in solvers, registered through the ``onnxinv.solvers`` entry point ``builtin``."""

from __future__ import annotations


def register(registry) -> None:
    """Register auto, backward, forward, exact and gd (in the order ``onnxinv methods`` lists
    them)."""
    from .auto import AutoSolver
    from .backward.solver import BackwardSolver
    from .exact.solver import ExactSolver
    from .forward.solver import ForwardSolver
    from .gd import GradientDescentSolver

    for solver in (AutoSolver, BackwardSolver, ForwardSolver, ExactSolver, GradientDescentSolver):
        registry.register(solver)
