"""The real-size models (``models/real_sizes.py``, tiny builds) and their benchmark harness.

Builds every ``--small`` model once (seconds), checks each runs in onnxruntime, that the
Constant-node copy computes the same outputs with no initializer left, that the real input and
the targets are what the benchmark assumes, and runs ``bench/real_sizes.py`` on one tiny model
end to end in a subprocess.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest

from bench import real_sizes as bench
from bench.common import BOUNDS, Case, check
from onnxinv.errors import TargetError
from onnxinv.target import Target

rs = bench.load_models_module()
SEQUENCE_LIKE = ("sequence", "dense", "sequence_constants")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real_sizes")
    return {name: rs.build(name, folder, small=True) for name in rs.MODELS}


def run(path, x: np.ndarray) -> np.ndarray:
    sess = rs.session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_every_model_runs_in_onnxruntime(built):
    for name, b in built.items():
        y = run(b.path, b.real_input())
        assert np.isfinite(y).all(), name
        if name in rs.CLASSIFIERS or name.startswith("sequence"):
            np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5, err_msg=name)
        if name == "dense":
            assert y.shape[-2:] == b.real_input().shape[-2:]  # the input's spatial size
    seq = run(built["sequence"].path, built["sequence"].real_input())
    assert seq.ndim == 3  # (N, steps, classes), Softmax over the last axis
    ops = {n.op_type for n in onnx.load(str(built["vit_dynamo"].path)).graph.node}
    assert "Softmax" in ops
    assert rs.session(built["vit_dynamo"].path).get_inputs()[0].shape == [1, 1, 28, 28]
    assert rs.session(built["resnet18"].path).get_inputs()[0].shape[0] == "batch"


def test_constant_copy_keeps_outputs_and_leaves_no_initializer(built, tmp_path):
    pairs = [(built["sequence"].path, built["sequence_constants"].path)]
    pairs.append((built["mobilenet_v3"].path, rs.constant_copy(built["mobilenet_v3"].path,
                                                                tmp_path / "m.onnx")))  # fmt: skip
    rng = np.random.default_rng(0)
    for src, dst in pairs:
        proto = onnx.load(str(dst))
        assert len(proto.graph.initializer) == 0
        assert any(n.op_type == "Constant" for n in proto.graph.node)
        assert rs.n_weights(proto) == rs.n_weights(onnx.load(str(src)))
        shape = [d if isinstance(d, int) else 2 for d in rs.session(src).get_inputs()[0].shape]
        x = rng.random(shape, dtype=np.float32)
        np.testing.assert_array_equal(run(src, x), run(dst, x))


def test_real_input_is_a_photograph_in_range(built):
    for name, b in built.items():
        x = b.real_input()
        declared = rs.session(b.path).get_inputs()[0].shape
        assert x.dtype == np.float32 and x.shape[0] == 1, name
        assert list(x.shape[1:]) == declared[1:], name
        assert x.min() >= 0.0 and x.max() <= 1.0, name
        assert x.std() > 0.05, name  # a picture, not a flat field
        np.testing.assert_array_equal(x, b.real_input())  # deterministic
    assert built["vit_dynamo"].real_input().shape[1] == 1  # grayscale for one channel


def test_targets_validate_and_are_the_models_own_output(built):
    rng = np.random.default_rng(0)
    for name, b in built.items():
        target = Target.coerce(b.target)
        y = run(b.path, b.real_input())
        batch = rs.has_batch_axis(b.path)
        shape = tuple(y.shape[1:]) if batch else tuple(y.shape)
        want = target.resolve(shape)
        if name in rs.CLASSIFIERS:
            assert target.kind == "distribution"
            assert (want > 0).all() and abs(want.sum() - 1) <= 1e-6
        else:
            assert target.kind == "values"
        err = np.abs(y.reshape(want.shape).astype(np.float64) - want).max()
        assert err <= 1e-6, (name, err)
        # not trivial: a random input in the box misses the target by far more than tolerance
        other = run(b.path, rng.random(b.real_input().shape, dtype=np.float32))
        assert np.abs(other.reshape(want.shape) - want).max() > 100 * target.tolerance, name


def test_the_bench_check_judges_a_fixed_batch_model(built):
    b = built["vit_dynamo"]  # input [1, 1, 28, 28]: a sample is the whole input
    x = np.concatenate([b.real_input()[None], np.zeros((1, *b.real_input().shape), np.float32)])
    case = Case("vit_dynamo", b.path, "real", json.loads(b.target.read_text()), 2, 0, BOUNDS)
    err, ok = check(case, x)
    assert ok.tolist() == [True, False] and err[0] <= 1e-6


def test_distribution_form_is_refused_for_the_non_vector_outputs(built):
    for name in SEQUENCE_LIKE:
        y = run(built[name].path, built[name].real_input())[0]
        p = np.full(y.size, 1.0 / y.size)
        with pytest.raises(TargetError, match="vector output"):
            Target.from_dict({"distribution": p.tolist()}).resolve(y.shape)


def test_builds_are_cached_by_their_settings(built):
    b = rs.build("dense", built["dense"].path.parent, small=True)
    assert not b.rebuilt and b.path == built["dense"].path
    assert rs.is_current(b.path, b.settings)
    assert not rs.is_current(b.path, {**b.settings, "seed": 1})


def test_auto_over_best_single_method():
    def r(verified, seconds):
        return {"verified": verified, "seconds": seconds, "samples": 4}

    best, ratio = bench.auto_vs_best({"auto": r(4, 8.0), "forward": r(2, 2.0), "gd": r(0, 9.0)})
    assert best == "forward" and ratio == pytest.approx(2.0)
    assert math.isinf(bench.auto_vs_best({"auto": r(0, 8.0), "forward": r(2, 2.0)})[1])
    assert math.isnan(bench.auto_vs_best({"auto": r(0, 8.0), "forward": r(0, 2.0)})[1])
    assert bench.outcome({"refused": "OptionError: no"}) == "OptionError: no"
    assert bench.outcome({**r(1, 1.0), "timed_out": True}) == "1/4 verified, timed out"


def test_bench_runs_one_tiny_model_end_to_end(built, tmp_path):
    cmd = [sys.executable, str(bench.ROOT / "bench" / "real_sizes.py"), "--small",
           "--models", "dense", "--methods", "forward", "--samples", "1", "--timeout", "2",
           "--model-dir", str(built["dense"].path.parent), "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=bench.child_env(1), cwd=bench.ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "| " + " | ".join(bench.MODEL_HEADER) + " |" in lines
    assert "| " + " | ".join(bench.RUN_HEADER) + " |" in lines
    model_row = next(ln for ln in lines if ln.startswith("| dense | N×3×8×16 |"))
    assert len(model_row.strip("|").split(" | ")) == len(bench.MODEL_HEADER)
    assert "N×1×8×16" in model_row
    run_row = next(ln for ln in lines if ln.startswith("| dense | forward |"))
    cells = [c.strip() for c in run_row.strip("|").split(" | ")]
    assert len(cells) == len(bench.RUN_HEADER)
    assert float(cells[bench.RUN_HEADER.index("peak RSS MB")]) > 0
    assert cells[bench.RUN_HEADER.index("max memory")] == "default"
    dump = json.loads((tmp_path / "real_sizes.json").read_text())
    (row,) = dump["models"]
    assert row["model"] == "dense" and set(row["runs"]) == {"forward"}
    assert row["floor"]["torch_fwd_bwd_s"] > 0 and row["floor"]["ort_forward_s"] > 0
    assert row["runs"]["forward"]["peak_rss_mb"] >= row["runs"]["forward"]["rss_before_mb"] > 0
