"""The built-in rules, registered through the ``onnxinv.rules`` entry point like any plugin."""

from __future__ import annotations

from . import activations, linear, piecewise, select, shape, softmax, spatial

ALL_RULES = (
    *linear.RULES, *spatial.RULES, *select.RULES, *shape.RULES, *activations.RULES, *piecewise.RULES,
    *softmax.RULES,
)  # fmt: skip


def register(registry) -> None:
    """Entry point: add every built-in rule to ``registry``."""
    for rule in ALL_RULES:
        registry.register(rule)
