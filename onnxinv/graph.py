"""Earlier import path of :mod:`onnxinv.partition` (``from onnxinv.graph import partition``),
kept for plugin authors and scripts; new code imports :mod:`onnxinv.partition`."""

from .partition.blocks import Block, Partition, Step, describe, partition

__all__ = ["Block", "Partition", "Step", "describe", "partition"]
