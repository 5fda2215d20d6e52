"""Session-wide fixtures: exported torch models and a scikit-learn classifier, built once.

Every model in these tests is tiny, so thread pools only cost time: on a busy two-core machine
torch's and BLAS's second thread turns a 30 ms inversion into seconds (their workers spin at
every barrier while the other core is taken). Tests run single-threaded, which also keeps float
results identical between runs (subprocesses get the same limit from ``helpers.SINGLE_THREAD``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import export, torch_mlp
from threadpoolctl import threadpool_limits

torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[[str | None, bool], Path]:
    """``exported(tail, dynamo)``: path of :func:`helpers.torch_mlp` exported to ONNX, cached.

    Each model gets its own folder: the dynamo exporter may write a ``.data`` file beside it.
    """
    cache: dict[tuple[str | None, bool], Path] = {}

    def get(tail: str | None, dynamo: bool) -> Path:
        key = (tail, dynamo)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"mlp_{tail}_{'dynamo' if dynamo else 'ts'}")
            n_out = 3 if tail == "tanh" else 10
            cache[key] = export(
                torch_mlp(seed=1, tail=tail, n_out=n_out), folder / "m.onnx", dynamo
            )
        return cache[key]

    return get


@pytest.fixture(scope="session")
def sklearn_digits() -> tuple[onnx.ModelProto, np.ndarray]:
    """A LogisticRegression on sklearn digits exported by skl2onnx with label and ZipMap outputs."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=60).fit(x, y)
        model = to_onnx(clf, initial_types=[("pixels", FloatTensorType([None, 64]))])
    return model, x


# ------------------------------------------------------------------------------- --slow option


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (e.g. the 200-example fuzz test)",
    )


def pytest_configure(config) -> None:
    # Also declared in pyproject.toml; repeated so the marker is known wherever pytest starts.
    config.addinivalue_line("markers", "slow: many more examples (run with --slow)")


def pytest_collection_modifyitems(config, items) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def forward_mode_warm():
    """The first forward-mode product through ``F.linear`` imports ``torch._dynamo`` (seconds,
    once per process): paid here, outside the timed tests of matrix-free products."""
    import torch
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        x = fwad.make_dual(torch.ones(1, 2), torch.ones(1, 2))
        torch.nn.functional.linear(x, torch.ones(1, 2), torch.ones(1))
