"""onnxinv: invert trained neural networks exported to ONNX.

Given a model and a target output, :func:`invert` returns many different inputs that the model
maps to that target, each verified by running the original model in onnxruntime;
:func:`sweep` does so for every class of several models, on this machine or a Ray cluster.
"""

from .load import runtime  # noqa: F401, I001  (first: fails early, in one line, without onnxruntime)
from . import errors
from .api import invert
from .result import InversionResult
from .settings import Settings
from .sweeps.run import SweepSummary, sweep
from .target import Target

__all__ = ["InversionResult", "Settings", "SweepSummary", "Target", "errors", "invert", "sweep"]
__version__ = "0.1.0"
