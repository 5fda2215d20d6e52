"""onnxinv: invert trained neural networks exported to ONNX.

Given a model and a target output, :func:`invert` returns many different inputs that the model
maps to that target, each verified by running the original model in onnxruntime.
"""

from . import (
    _ort,  # noqa: F401  (fails early, in one line, without onnxruntime)
    errors,
)
from .api import invert
from .result import InversionResult
from .settings import Settings
from .target import Target

__all__ = ["InversionResult", "Settings", "Target", "errors", "invert"]
__version__ = "0.1.0"
