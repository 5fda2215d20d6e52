"""``--method backward``: the backward pass through the invertible blocks.

:mod:`.plan` walks the partition from the output down (:class:`~.plan.BackwardPass`),
:mod:`.newton` chooses every free coefficient of a chain jointly (:class:`~.newton.ChainSolver`),
:mod:`.collapse` keeps the greedy per-layer choices inside the next inverse's domain, and
:mod:`.solver` is the registered solver.
"""
