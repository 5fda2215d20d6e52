"""Inverse rules for ONNX operators, one file per family, and the registry that finds them."""

from .base import (
    AffineRule,
    ElementwiseRule,
    Family,
    Interval,
    InverseRule,
    NodeContext,
    OutsideDomain,
    PointRule,
    RuleNotApplicable,
)
from .registry import Registry, RegistryError, RuleEntry, default_registry, load_plugins

__all__ = [
    "AffineRule",
    "ElementwiseRule",
    "Family",
    "Interval",
    "InverseRule",
    "NodeContext",
    "OutsideDomain",
    "PointRule",
    "Registry",
    "RegistryError",
    "RuleEntry",
    "RuleNotApplicable",
    "default_registry",
    "load_plugins",
]
