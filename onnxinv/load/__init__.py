"""Loading: read an ONNX file, repair what exporters get wrong, cut the graph to the chosen input
and output, and run it in onnxruntime.

The first stage of the data path (load → partition → solvers → verify → write):
:func:`~onnxinv.load.model.load` returns a :class:`~onnxinv.load.model.LoadedModel` that every
later stage reads. Its steps, one module each:

* :mod:`~onnxinv.load.read` – a path (external data beside it), bytes or a ModelProto in;
* :mod:`~onnxinv.load.repair` – safe repairs, the checker, upgrades onnxruntime needs;
* :mod:`~onnxinv.load.choose` – the input to invert, fixed inputs, the output, one sample's shape;
* :mod:`~onnxinv.load.surgery` – the graph cut to input → output, the batch axis, the tail;
* :mod:`~onnxinv.load.graphs` – what a node reads (subgraphs included), declared types/shapes;
* :mod:`~onnxinv.load.runtime` – onnxruntime sessions, the one place that imports it.
"""

from .model import LoadedModel, load

__all__ = ["LoadedModel", "load"]
