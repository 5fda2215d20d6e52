"""Loading: read an ONNX file, repair what exporters get wrong, cut the graph to the chosen input
and output, and run it in onnxruntime.

The first stage of the data path (load → partition → solvers → verify → write):
:func:`~onnxinv.load.model.load` returns a :class:`~onnxinv.load.model.LoadedModel` that every
later stage reads.
"""

from .model import LoadedModel, load

__all__ = ["LoadedModel", "load"]
