"""Earlier import path of :mod:`onnxinv.load.model` (``from onnxinv import model``), kept for
plugin authors and scripts; new code imports :mod:`onnxinv.load`."""

from .load.model import *  # noqa: F403
from .load.model import LoadedModel, ModelLike, load, read_model

__all__ = ["LoadedModel", "ModelLike", "load", "read_model"]
