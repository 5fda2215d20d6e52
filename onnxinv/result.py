"""The one result type every inversion method returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .target import Target


@dataclass
class InversionResult:
    """Inputs found for a target, each checked by onnxruntime on the original model.

    Attributes:
        inputs: (N, *input_shape) samples in the input's dtype (float32 for most models),
            every one returned (verified or not), exactly as onnxruntime verified them.
        outputs: (N, *output_shape) the original model's outputs for them.
        verified: (N,) whether each output matches the target within tolerance (and the input
            lies inside the bounds).
        errors: (N,) largest absolute difference from the target (probability space for
            distribution targets).
        iterations: (N,) solver iterations spent on each sample (all attempts).
        methods: per sample, the path that produced it (``"forward"``, ``"backward"``,
            ``"backward+polish"``).
        target: the target.
        target_array: the target output (probabilities or values).
        input_shape: shape of one sample.
        bounds: (lo, hi) or None.
        settings: the options used.
        model: facts about the model (name, input, output, output space, Jacobian source).
        timings: seconds spent per phase.
        notes: things the user should know (fallbacks taken, time-outs).
        probabilities: per-sample class probabilities, for distribution targets.
        prior_distance: (N,) each sample's Euclidean distance to ``--prior``, if one was given.
    """

    inputs: np.ndarray
    outputs: np.ndarray
    verified: np.ndarray
    errors: np.ndarray
    iterations: np.ndarray
    methods: list[str]
    target: Target
    target_array: np.ndarray
    input_shape: tuple[int, ...]
    bounds: tuple[float, float] | None
    settings: dict[str, Any]
    model: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    prior_distance: np.ndarray | None = None

    @classmethod
    def distances(cls, inputs: np.ndarray, prior: np.ndarray | None) -> np.ndarray | None:
        """(N,) Euclidean distance of each input to the prior (None without one)."""
        if prior is None:
            return None
        x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        return np.linalg.norm(x - prior[None], axis=1)

    @property
    def n_verified(self) -> int:
        return int(np.count_nonzero(self.verified))

    @property
    def all_verified(self) -> bool:
        return bool(len(self.verified) and self.verified.all())

    def __len__(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:
        err = float(np.max(self.errors)) if len(self.errors) else float("nan")
        return (
            f"InversionResult({self.n_verified}/{len(self)} verified, "
            f"input {tuple(self.input_shape)}, max error {err:.2g}, "
            f"{self.timings.get('total', 0.0):.2f} s)"
        )

    def labels(self) -> list[str]:
        """Short per-sample labels: achieved top class and its probability, or max error."""
        if self.probabilities is not None:
            top = self.probabilities.argmax(1)
            return [f"{c}: {self.probabilities[i, c]:.3f}" for i, c in enumerate(top)]
        return [f"err {e:.1e}" for e in self.errors]

    def spread(self) -> dict[str, Any]:
        """The verified inputs' value range and mean pairwise (Euclidean) distance.

        The distance is over at most 256 samples (the first ones), so it stays cheap.
        """
        x = np.asarray(self.inputs[self.verified], dtype=np.float64)
        if len(x) == 0:
            return {"input_range": None, "mean_pairwise_distance": None}
        x = x.reshape(len(x), -1)
        y = x[:256]
        sq = (y * y).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * y @ y.T, 0.0)
        iu = np.triu_indices(len(y), 1)
        mean = float(np.sqrt(d2[iu]).mean()) if len(y) > 1 else None
        return {"input_range": [float(x.min()), float(x.max())], "mean_pairwise_distance": mean}

    def report(self) -> dict[str, Any]:
        """Everything in report.json."""
        per_sample = []
        for i in range(len(self)):
            row: dict[str, Any] = {
                "index": i,
                "verified": bool(self.verified[i]),
                "max_error": float(self.errors[i]),
                "iterations": int(self.iterations[i]),
                "method": self.methods[i],
            }
            if self.probabilities is not None:
                c = int(self.probabilities[i].argmax())
                row.update(top_class=c, top_probability=float(self.probabilities[i, c]))
            if self.prior_distance is not None:
                row["distance_to_prior"] = float(self.prior_distance[i])
            per_sample.append(row)
        near = None
        if self.prior_distance is not None and self.n_verified:
            near = float(np.mean(self.prior_distance[self.verified]))
        return {
            "target": self.target.to_dict(),
            "target_output": self.target_array.ravel().tolist(),
            "model": self.model,
            "settings": self.settings,
            "totals": {
                "samples": len(self),
                "verified": self.n_verified,
                "verified_fraction": self.n_verified / len(self) if len(self) else 0.0,
                "max_error": float(np.max(self.errors)) if len(self) else None,
                "mean_iterations": float(np.mean(self.iterations)) if len(self) else None,
                **self.spread(),
                **({} if self.prior_distance is None else {"mean_distance_to_prior": near}),
            },
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "notes": self.notes,
            "samples": per_sample,
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the result folder atomically (see :mod:`onnxinv.write.folder`)."""
        from .write.folder import save

        return save(self, path, overwrite=overwrite)
