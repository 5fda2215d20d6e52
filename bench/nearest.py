"""The images a bundled model was trained on, and each sample's distance to the nearest one.

A model's data set follows from its name: ``fashion_*`` models were trained on Fashion-MNIST's
training split as Debian's ``dataset-fashion-mnist`` installs it (read by ``models/fashion.py``),
``digits_*`` models on the training part of ``models/train.py``'s split of scikit-learn's
digits. Validation images are the ``models/<data set>_val.npz`` files. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import sys

import numpy as np

from bench.common import MODELS_DIR


def data_set(model_name: str) -> str:
    """``"fashion"`` or ``"digits"``: the data set a bundled model was trained on."""
    return "fashion" if model_name.startswith("fashion") else "digits"


@functools.cache
def training_images(name: str) -> np.ndarray:
    """The training images of data set ``name``, flat float32 pixels in [0, 1], [N, pixels]."""
    if str(MODELS_DIR) not in sys.path:
        sys.path.insert(0, str(MODELS_DIR))
    if name == "fashion":
        from fashion import load_fashion

        return load_fashion("train")[0]
    from train import load_split

    return np.asarray(load_split()[0], dtype=np.float32)


def validation(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat float32 images, int64 labels) of ``models/<name>_val.npz``."""
    data = np.load(MODELS_DIR / f"{name}_val.npz")
    return data["x"].reshape(len(data["x"]), -1), data["y"]


def nearest_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Each query's Euclidean distance to its nearest row of ``reference`` (exact).

    ``‖a − b‖² = ‖a‖² − 2a·b + ‖b‖²`` in float64, ``chunk`` reference rows at a time, so
    60,000 × 784 references need no more than one chunk's products in memory.
    """
    q = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    best = np.full(len(q), np.inf)
    if len(q) == 0:
        return best
    qq = (q * q).sum(1)
    for first in range(0, len(reference), chunk):
        r = np.asarray(reference[first : first + chunk], dtype=np.float64).reshape(-1, q.shape[1])
        d2 = qq[:, None] - 2.0 * (q @ r.T) + (r * r).sum(1)[None, :]
        best = np.minimum(best, d2.min(1))
    return np.sqrt(np.maximum(best, 0.0))
