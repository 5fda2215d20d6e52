"""The usual alternatives to onnxinv, as runners for the paper-scale table.

Each runner takes a :class:`common.Case` and a timeout (seconds) and returns a
:class:`common.Record` judged by :func:`common.check`, with ``extra["mean_iterations"]`` and
``extra["timed_out"]`` (it stopped at the timeout before finishing every sample):

- :func:`run_paper_forward`: the paper's ForwardPassInv (``paper_forward.py``).
- :func:`run_least_squares`: scipy's ``least_squares`` one sample at a time, method ``"trf"``
  with the box as bounds (``"lm"`` refuses systems with fewer residuals than unknowns) and
  ``tr_solver="lsmr"`` (the default exact solver takes a dense SVD of the (m + n) x n
  augmented Jacobian every iteration: minutes per sample at 784 inputs); at most
  ``max_nfev`` evaluations. The residual is onnxruntime's probabilities minus the target, the
  Jacobian autograd's on the model converted to torch (the same conversion as the paper's
  forward pass).
- :func:`run_miface`: ART's MIFace (Fredrikson et al. 2015) on a ``PyTorchClassifier`` around
  that conversion, with ``clip_values`` = the box; it is told the target's top class only. Its
  own criterion (that class reaches p >= 0.9) is kept in ``extra["own_ok"]``.

Every method starts from the same uniform random inputs in the box (``default_rng(seed)``).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from scipy.optimize import least_squares

from bench.common import Case, Record, judged
from bench.paper_forward import jacobian, paper_forward, torch_model
from onnxinv.target import Target

MIFACE_CONFIDENCE = 0.9  # MIFace's own criterion: the class reaches this probability
MIFACE_SEGMENT = 100  # iterations per infer() call, so a timeout is checked between them
# ART 1.20's loop keeps a sample going while its cost 1 - p is at most ``threshold`` (or still
# rising), so its default 0.99 stops at the first step any sample that starts below p = 0.01;
# 1.0 lets every sample take its max_iter steps, as the algorithm intends.
MIFACE_THRESHOLD = 1.0


def target_array(case: Case) -> np.ndarray:
    """The case's target as a flat float64 distribution (the model's output shape)."""
    sess = _session(str(case.model_path))
    shape = tuple(int(d) for d in sess.get_outputs()[0].shape[1:])
    return Target.from_dict(case.target).resolve(shape).astype(np.float64).ravel()


def starts(case: Case) -> np.ndarray:
    """``case.samples`` uniform random flat inputs in the case's bounds, from its seed."""
    _, shape = torch_model(str(case.model_path))
    lo, hi = case.bounds
    return np.random.default_rng(case.seed).uniform(lo, hi, (case.samples, math.prod(shape)))


def run_paper_forward(case: Case, timeout: float, max_iter: int = 30) -> Record:
    """The paper's ForwardPassInv: LM on probabilities, at most ``max_iter`` iterations."""
    tol = Target.from_dict(case.target).tolerance
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    x, iterations = paper_forward(
        str(case.model_path), target_array(case), case.samples, case.seed, case.bounds, tol,
        max_iter, deadline,
    )  # fmt: skip
    extra = {"mean_iterations": float(iterations.mean()), "timed_out": time.monotonic() > deadline}
    return judged("paper-forward", case, _shaped(case, x), time.perf_counter() - t0, extra=extra)


def run_least_squares(case: Case, timeout: float, max_nfev: int = 100) -> Record:
    """scipy ``least_squares(method="trf", bounds=box)``, one sample at a time.

    At the timeout the sample being solved keeps the best point scipy evaluated so far, and
    samples not started keep their random starts (both judged as they are).
    ``extra["mean_iterations"]`` is the mean number of Jacobian evaluations.
    """
    module, shape = torch_model(str(case.model_path))
    sess = _session(str(case.model_path))
    name = sess.get_inputs()[0].name
    want = target_array(case)
    deadline = time.monotonic() + timeout
    best: dict[str, Any] = {}

    def residual(x: np.ndarray) -> np.ndarray:
        if time.monotonic() > deadline:
            raise _Expired
        y = sess.run(None, {name: x.astype(np.float32).reshape(1, *shape)})[0]
        r = np.asarray(y, dtype=np.float64).ravel() - want
        if (r @ r) < best.get("cost", np.inf):
            best.update(cost=r @ r, x=x.copy())
        return r

    def jac(x: np.ndarray) -> np.ndarray:
        return jacobian(module, torch.from_numpy(x[None]), shape)[1][0].numpy()

    t0 = time.perf_counter()
    x = starts(case)
    iterations = np.zeros(len(x))
    timed_out = False
    for i in range(len(x)):
        best.clear()
        try:
            res = least_squares(
                residual, x[i], jac=jac, bounds=case.bounds, method="trf", tr_solver="lsmr",
                max_nfev=max_nfev,
            )  # fmt: skip
            x[i], iterations[i] = res.x, res.njev
        except _Expired:
            timed_out = True
            x[i] = best.get("x", x[i])
            break
    extra = {"mean_iterations": float(iterations.mean()), "timed_out": timed_out}
    return judged("scipy-lsq", case, _shaped(case, x), time.perf_counter() - t0, extra=extra)


class _Expired(Exception):
    """The timeout passed inside a scipy solve."""


def run_miface(case: Case, timeout: float, max_iter: int = 1000) -> Record:
    """ART's MIFace on the target's top class, ``max_iter`` gradient steps (ART's learning rate
    0.1, ``batch_size`` = all samples, :data:`MIFACE_THRESHOLD`), clipped to the box after
    every step."""
    from art.attacks.inference.model_inversion import MIFace

    want = target_array(case)
    label = int(np.argmax(want))
    classifier = _classifier(str(case.model_path), tuple(case.bounds), len(want))
    attack = MIFace(
        classifier, max_iter=MIFACE_SEGMENT, threshold=MIFACE_THRESHOLD, batch_size=case.samples,
        verbose=False,
    )  # fmt: skip
    labels = np.full(case.samples, label)
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    x = starts(case).astype(np.float32).reshape(case.samples, *classifier.input_shape)
    done = 0
    while done < max_iter and time.monotonic() <= deadline:
        x = attack.infer(x, y=labels)
        done += MIFACE_SEGMENT
    seconds = time.perf_counter() - t0
    own = classifier.predict(x)[:, label] >= MIFACE_CONFIDENCE
    extra = {"mean_iterations": float(done), "timed_out": done < max_iter, "own_ok": int(own.sum())}
    return judged("miface", case, x, seconds, extra=extra)


def art_available() -> str | None:
    """None when ART imports, else the reason it does not."""
    try:
        import art.attacks.inference.model_inversion  # noqa: F401
        import art.estimators.classification  # noqa: F401
    except ImportError as exc:
        return f"adversarial-robustness-toolbox is not installed ({exc}): pip install -e '.[bench]'"
    return None


def _shaped(case: Case, x: np.ndarray) -> np.ndarray:
    """Flat samples in the model's sample shape (``[N, 1, 28, 28]`` for a ViT)."""
    return x.reshape(len(x), *torch_model(str(case.model_path))[1])


@functools.cache
def _session(model_path: str) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_path, sess_options=opts, providers=["CPUExecutionProvider"])


@functools.cache
def _classifier(model_path: str, bounds: tuple[float, float], classes: int):
    """ART's PyTorchClassifier around the converted model, in float32 as ART computes."""
    from art.estimators.classification import PyTorchClassifier

    module, shape = torch_model(model_path)
    return PyTorchClassifier(
        model=copy.deepcopy(module).float(),
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=classes,
        clip_values=bounds,
        device_type="cpu",
    )
