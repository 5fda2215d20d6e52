"""onnxinv: invert trained neural networks exported to ONNX.

Given a model and a target output, :func:`invert` returns many different inputs that the model
maps to that target, each verified by running the original model in onnxruntime;
:func:`sweep` does so for every class of several models, on this machine or a Ray cluster.
"""

from . import (
    _ort,  # noqa: F401  (fails early, in one line, without onnxruntime)
    errors,
)
from .api import invert
from .result import InversionResult
from .settings import Settings
from .sweeps import SweepSummary, sweep
from .target import Target

__all__ = ["InversionResult", "Settings", "SweepSummary", "Target", "errors", "invert", "sweep"]
__version__ = "0.1.0"
