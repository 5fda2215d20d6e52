"""The unreachability certificate (``onnxinv.solvers.exact.certificate``) on chains trained on
the bundled digits: a target the box reaches is never called unreachable, one beyond it is
proven so, in one line on the CLI. Models and targets come from test_solvers_backward_newton.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import ort_errors, quiet
from test_solvers_backward_newton import digits, model, probabilities_of
from torch import nn

from onnxinv import invert
from onnxinv.cli import main
from onnxinv.errors import UnreachableTargetError
from onnxinv.load.model import load
from onnxinv.objective import build
from onnxinv.settings import Settings
from onnxinv.solvers.base import ModelProblem
from onnxinv.solvers.exact.certificate import certify
from onnxinv.target import Target


def linear_softmax(seed: int = 0, n: int = 6, k: int = 3) -> bytes:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n, k), nn.Softmax(-1)).eval()
    buf = io.BytesIO()
    with quiet():
        torch.onnx.export(net, (torch.rand(1, n),), buf, dynamo=False, input_names=["x"],
                          output_names=["p"], dynamic_axes={"x": {0: "N"}, "p": {0: "N"}})  # fmt: skip
    return buf.getvalue()


def problem(m: bytes, p: np.ndarray, bounds) -> ModelProblem:
    loaded = load(m)
    obj = build(loaded, Target.from_dict({"distribution": (p / p.sum()).tolist()}))
    return ModelProblem(Settings(bounds=bounds), loaded, obj, deadline=None, max_memory=None)


def corner(m: bytes, bounds, i: int = 0, j: int = 1) -> np.ndarray:
    """The input of the box maximising logit i − logit j (the edge of what the box reaches)."""
    w = onnx.numpy_helper.to_array(
        next(t for t in onnx.load_from_string(m).graph.initializer if t.dims[0] == 3)
    ).astype(np.float64)
    d = w[i] - w[j]
    return np.where(d > 0, bounds[1], bounds[0])[None].astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_a_target_reachable_at_the_edge_of_the_box_is_never_called_unreachable(seed):
    m, bounds = linear_softmax(seed), (0.0, 0.5)
    p = probabilities_of(m, corner(m, bounds))
    assert certify(problem(m, p, bounds)) is None
    rng = np.random.default_rng(seed)
    for x in rng.uniform(*bounds, (20, 1, 6)).astype(np.float32):
        assert certify(problem(m, probabilities_of(m, x), bounds)) is None


@pytest.mark.parametrize("name", ["tanh-sigmoid", "leakyrelu-3", "relu-3", "selu-2-28x28"])
def test_real_outputs_of_deep_chains_are_never_called_unreachable(name):
    m = model(name)
    size = 28 if "28x28" in name else 8
    x, _ = digits(size)
    for i in range(300, 330):
        p = probabilities_of(m, x[i : i + 1])
        assert certify(problem(m, p, (0.0, 1.0))) is None, i


def test_a_target_beyond_the_box_is_proven_unreachable_and_is():
    m, bounds = linear_softmax(3), (0.0, 0.5)
    edge = probabilities_of(m, corner(m, bounds))
    z = np.log(edge)
    z[0] += 1.0  # one more unit of logit 0 over logit 1 than the box's corner gives
    p = np.exp(z) / np.exp(z).sum()
    proof = certify(problem(m, p, bounds))
    assert proof is not None and "proven unreachable" in proof
    assert "logit 0 minus logit 1" in proof or "logit 1 minus logit 0" in proof
    # It is: neither random inputs nor the forward pass get within tolerance inside the box.
    rng = np.random.default_rng(0)
    xs = rng.uniform(*bounds, (20000, 6)).astype(np.float32)
    assert ort_errors(m, xs, p, "probabilities").min() > 1e-4
    with pytest.raises(UnreachableTargetError) as info:
        invert(m, {"distribution": p.tolist()}, bounds=bounds, samples=4)
    assert info.value.proven and "proven unreachable within the bounds" in str(info.value)
    with pytest.raises(UnreachableTargetError) as info:
        invert(m, {"distribution": p.tolist()}, samples=4, bounds=(0.0, 0.5), method="forward",
               restarts=0, max_iter=5)  # fmt: skip
    assert info.value.proven
    # Without bounds it is reachable, and solved.
    r = invert(m, {"distribution": p.tolist()}, samples=4, method="backward")
    assert r.all_verified


def test_cli_says_proven_unreachable_in_one_line(tmp_path):
    import json

    m, bounds = linear_softmax(3), (0.0, 0.5)
    z = np.log(probabilities_of(m, corner(m, bounds)))
    z[0] += 1.0
    p = np.exp(z) / np.exp(z).sum()
    (tmp_path / "m.onnx").write_bytes(m)
    (tmp_path / "t.json").write_text(json.dumps({"distribution": p.tolist()}))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "m.onnx"), "-t", str(tmp_path / "t.json"),
                                    "--bounds", "0,0.5", "-o", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 1
    assert "proven unreachable within the bounds [0, 0.5]" in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("box", [(0.0, 0.25), (0.0, 0.5)])
def test_every_class_target_is_solved_or_proven_unreachable_on_a_linear_net(box):
    """digits_1layer (Gemm + Softmax), each class at 0.5/0.9/0.99: the certificate's joint LP
    is exact there, so each target is proven unreachable (and then no solver verifies a sample)
    or the backward pass verifies every sample."""
    from onnxinv.solvers.backward.solver import BackwardSolver
    from onnxinv.solvers.forward.solver import ForwardSolver

    loaded = load(str(Path(__file__).resolve().parents[1] / "models" / "digits_1layer.onnx"))
    proven = 0
    for c in range(10):
        for conf in (0.5, 0.9, 0.99):
            obj = build(loaded, Target.from_dict({"class": c, "confidence": conf}))
            s = Settings(bounds=box, restarts=1)
            prob = ModelProblem(s, loaded, obj, deadline=None, max_memory=None)
            if certify(prob) is not None:
                proven += 1
                solvers = (BackwardSolver(prob), ForwardSolver(prob))  # neither may verify
            else:
                solvers = (BackwardSolver(prob),)  # must verify every sample
            for solver in solvers:
                solver.prepare()
                out = solver.solve(16, np.random.default_rng(c))
                verified = int(prob.verify(out.x).verified.sum())
                assert verified == (0 if len(solvers) == 2 else 16), (c, conf, solver.name)
    assert proven >= (12 if box[1] < 0.3 else 1)
