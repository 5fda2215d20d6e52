"""Partition: the graph cut into invertible and opaque blocks, and the chain model.

:func:`partition` walks the loaded graph from the inverted input up and groups its nodes into
:class:`Block` s (chains of nodes with an inverse rule, and opaque stretches); :func:`chain_of`
turns an invertible block into the chain, the intermediate representation the backward and
exact solvers share: composed :class:`Affine` maps, elementwise :class:`Activation` s and max
pools' :class:`Select` ions.
"""

from .blocks import Block, Partition, Step, describe, partition
from .chain import Activation, Affine, Select, chain_of

__all__ = [
    "Activation",
    "Affine",
    "Block",
    "Partition",
    "Select",
    "Step",
    "chain_of",
    "describe",
    "partition",
]
