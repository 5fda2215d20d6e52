"""The only judge of success: the original ONNX model, run by onnxruntime, on float32 inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .load.model import LoadedModel
from .objective import Objective


@dataclass
class Verification:
    """Per-sample outputs of the original model, their errors and verified flags."""

    inputs: np.ndarray
    outputs: np.ndarray
    errors: np.ndarray
    verified: np.ndarray

    def subset(self, keep: np.ndarray) -> Verification:
        """The samples selected by ``keep`` (mask or indices)."""
        return Verification(self.inputs[keep], self.outputs[keep], self.errors[keep],
                            self.verified[keep])  # fmt: skip

    @classmethod
    def concatenate(cls, parts: list[Verification]) -> Verification:
        """The checks of consecutive samples as one."""
        return cls(*(np.concatenate([getattr(p, name) for p in parts])
                     for name in ("inputs", "outputs", "errors", "verified")))  # fmt: skip

    def replace(self, index: np.ndarray, other: Verification) -> None:
        """Take ``other``'s results (a re-check of samples ``index``) in place."""
        for name in ("inputs", "outputs", "errors", "verified"):
            getattr(self, name)[index] = getattr(other, name)


def verify(
    loaded: LoadedModel,
    objective: Objective,
    x: np.ndarray,
    bounds: tuple[float, float] | None = None,
) -> Verification:
    """Run ``x`` (N, *input_shape) through the original model and compare with the target.

    A sample is verified when its output's largest absolute difference from the target is at
    most the tolerance (in probability space for distribution targets), it is finite, and it lies
    inside ``bounds``.
    """
    xs = np.asarray(x).astype(loaded.input_dtype)
    if bounds is not None:
        # Rounding to the model's dtype must not step outside the box.
        xs = np.clip(xs, np.asarray(bounds[0], xs.dtype), np.asarray(bounds[1], xs.dtype))
    outputs = loaded.run(xs, which="original")
    errors = objective.check(outputs)
    ok = np.isfinite(errors) & (errors <= objective.tolerance)
    ok &= np.isfinite(xs.reshape(len(xs), -1)).all(1)
    if bounds is not None:
        flat = xs.reshape(len(xs), -1)
        ok &= (flat >= bounds[0]).all(1) & (flat <= bounds[1]).all(1)
    return Verification(xs, outputs, errors, ok)
