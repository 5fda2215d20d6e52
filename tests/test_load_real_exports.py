"""Models nobody here wrote: what onnxruntime runs, onnxinv loads, inverts or refuses in one line.

Every inversion is checked by a fresh onnxruntime session on the model as written (with the fixed
inputs fed as given), never by onnxinv's own verification.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import const, make_model, one_line, session, value_info
from onnx import TensorProto, helper, numpy_helper

from onnxinv import invert
from onnxinv.cli import main
from onnxinv.errors import MemoryBudgetError, ModelError, OptionError
from onnxinv.load.model import load
from onnxinv.objective import build
from onnxinv.partition.blocks import partition
from onnxinv.rules import default_registry
from onnxinv.solvers.forward.lm import LMSettings, levenberg_marquardt
from onnxinv.solvers.residual import DeadlineReached, FiniteDifferenceResidual, build_residual
from onnxinv.solvers.starts import Starts
from onnxinv.target import Target


def assert_reproduces(model, result, target, feeds=None, atol=1e-4, name="x") -> None:
    """Every returned sample gives ``target``, and no two samples are equal.

    A sample is fed as it is when it has the input's rank (its declared shape is the sample),
    with a batch axis of one when the input's first dimension is a symbolic batch.
    """
    sess = session(model)
    rank = len(next(i for i in sess.get_inputs() if i.name == name).shape)
    target = np.asarray(target)
    assert len(result) >= 1
    for xi in result.inputs:
        y = sess.run(None, {name: xi if xi.ndim == rank else xi[None], **(feeds or {})})[0]
        np.testing.assert_allclose(y.reshape(target.shape), target, atol=atol)
    flat = result.inputs.reshape(len(result), -1)
    assert len({row.tobytes() for row in flat}) == len(result), "returned samples repeat"


def _opset_model(nodes, inputs, outputs, inits=(), opset=13, ir=8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


# -------------------------------------------------------------------------------- sample shapes


@pytest.mark.parametrize(
    ("shape", "op"),
    [((2, 3), "Tanh"), ((5,), "Sigmoid"), ((3, 2, 4), "Tanh"), ((1, 6), "Tanh")],
    ids=["batch-2", "1-D", "rank-3", "batch-1"],
)
def test_the_declared_shape_is_the_sample(shape, op):
    """A fixed leading dimension is part of the sample, whatever its size."""
    rng = np.random.default_rng(0)
    w = 0.3 * rng.normal(size=(shape[-1], shape[-1])) + np.eye(shape[-1])
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"])],
        [value_info("x", list(shape))],
        [value_info("y", list(shape))],
        [const("W", w)],
    )
    x = rng.uniform(-0.5, 0.5, size=shape).astype(np.float32)
    y = session(model).run(None, {"x": x})[0]
    lm = load(model)
    assert lm.input_shape == shape and lm.output_shape == shape
    for method in ("auto", "forward"):
        result = invert(model, {"values": y.tolist()}, samples=3, seed=0, method=method)
        assert result.inputs.shape[1:] == shape
        assert result.all_verified or method == "forward"  # LM from random starts may stall
        assert_reproduces(model, _Loaded(result.inputs[result.verified]), y)


def test_fixed_batch_of_two_conv():
    """Every test_Conv*d backend model has batch 2: one sample is both images."""
    rng = np.random.default_rng(1)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Tanh", ["c"], ["y"]),
        ],
        [value_info("x", [2, 3, 5, 5])],
        [value_info("y", [2, 2, 5, 5])],
        [const("W", rng.normal(0, 0.3, (2, 3, 3, 3))), const("B", rng.normal(0, 0.1, 2))],
    )
    x = rng.uniform(-1, 1, (2, 3, 5, 5)).astype(np.float32)
    y = session(model).run(None, {"x": x})[0]
    result = invert(model, {"values": y.tolist()}, samples=2, seed=0)
    assert result.inputs.shape == (2, 2, 3, 5, 5) and result.all_verified
    assert_reproduces(model, result, y)


# ----------------------------------------------------------------------------- inputs held fixed


def _two_inputs() -> onnx.ModelProto:
    """y = tanh((x + z) W) with W 4 → 2, so every target has many preimages."""
    w = np.array([[1.0, 0.2], [-0.5, 1.0], [0.3, -0.4], [0.8, 0.6]])
    return make_model(
        [
            helper.make_node("Add", ["x", "z"], ["s"]),
            helper.make_node("MatMul", ["s", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["y"]),
        ],
        [value_info("x", ["N", 4]), value_info("z", ["N", 4])],
        [value_info("y", ["N", 2])],
        [const("W", w)],
    )


@pytest.mark.parametrize("z_rows", [1, 3], ids=["z-one-row", "z-three-rows"])
def test_other_float_input_held_fixed(z_rows):
    model = _two_inputs()
    rng = np.random.default_rng(2)
    z = rng.uniform(-0.5, 0.5, (z_rows, 4)).astype(np.float32)
    x = rng.uniform(-0.5, 0.5, (z_rows, 4)).astype(np.float32)
    y = session(model).run(None, {"x": x, "z": z})[0]
    result = invert(
        model, {"values": y.tolist()}, input="x", fixed={"z": z}, input_shape=x.shape, samples=3
    )
    assert result.inputs.shape == (3, z_rows, 4)
    assert result.settings["fixed"] == {"z": {"shape": [z_rows, 4], "dtype": "float32"}}
    assert_reproduces(model, result, y, feeds={"z": z})


def test_integer_input_held_fixed():
    """Expand(x, shape) with the shape an int64 input: the backend's test_expand_shape_model."""
    model = _opset_model(
        [helper.make_node("Expand", ["x", "shape"], ["e"]), helper.make_node("Tanh", ["e"], ["y"])],
        [value_info("x", [3, 1]), value_info("shape", [2], TensorProto.INT64)],
        [value_info("y", [3, 4])],
    )
    shape = np.array([3, 4], dtype=np.int64)
    x = np.array([[0.1], [-0.3], [0.5]], np.float32)
    y = session(model).run(None, {"x": x, "shape": shape})[0]
    with pytest.raises(ModelError) as info:
        invert(model, {"values": y.tolist()})
    assert "--fix shape=" in one_line(info.value) and "fixed=" in one_line(info.value)
    result = invert(model, {"values": y.tolist()}, fixed={"shape": shape}, samples=2)
    assert_reproduces(model, result, y, feeds={"shape": shape})


@pytest.mark.parametrize(
    ("fixed", "words"),
    [
        ({"nope": np.zeros(4)}, ("--fix nope", "no input named 'nope'")),
        ({"z": np.zeros((2, 5), np.float32)}, ("--fix z", "shape [2, 5]", "[?, 4]")),
        ({"z": "text"}, ("--fix z", "float32")),
        ({"x": np.zeros((1, 4)), "z": np.zeros((1, 4))}, ("no float input left",)),
    ],
    ids=["unknown-name", "wrong-shape", "not-numbers", "everything-fixed"],
)
def test_bad_fixed_values_are_one_line(fixed, words):
    with pytest.raises((OptionError, ModelError)) as info:
        invert(_two_inputs(), {"values": [[0.1, 0.2]]}, fixed=fixed)
    line = one_line(info.value)
    for word in words:
        assert word in line, (word, line)


def test_integer_fix_rejects_fractions():
    model = _opset_model(
        [helper.make_node("Expand", ["x", "shape"], ["y"])],
        [value_info("x", [3, 1]), value_info("shape", [2], TensorProto.INT64)],
        [value_info("y", [3, 4])],
    )
    with pytest.raises(OptionError, match="non-integer"):
        load(model, fixed={"shape": np.array([3.0, 4.5])})


def test_cli_fix_from_npy_and_pb(tmp_path):
    model = _two_inputs()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    z = np.full((1, 4), 0.2, np.float32)
    np.save(tmp_path / "z.npy", z)
    (tmp_path / "z.pb").write_bytes(numpy_helper.from_array(z).SerializeToString())
    y = session(model).run(None, {"x": np.array([[0.1, -0.2, 0.3, 0.0]], np.float32), "z": z})[0]
    (tmp_path / "t.json").write_text(f'{{"values": {y.tolist()}}}')
    for i, file in enumerate(("z.npy", "z.pb")):
        out = tmp_path / f"out{i}"
        res = CliRunner().invoke(
            main,
            ["run", str(path), "-t", str(tmp_path / "t.json"), "--fix", f"z={tmp_path / file}",
             "-n", "2", "-o", str(out), "-q"],
        )  # fmt: skip
        assert res.exit_code == 0, res.stderr
        assert_reproduces(model, _Loaded(np.load(out / "inputs.npy")), y, feeds={"z": z})
    res = CliRunner().invoke(
        main, ["run", str(path), "-t", str(tmp_path / "t.json"), "--fix", "z=missing.npy"]
    )
    assert res.exit_code == 1 and res.stderr.count("\n") == 1
    assert "--fix z: file not found" in res.stderr


class _Loaded:
    """The part of a result ``assert_reproduces`` reads, from a saved inputs.npy."""

    def __init__(self, inputs: np.ndarray):
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)


# ------------------------------------------------------------------ what onnxruntime loads, we load


def _keras_like(shuffle: bool) -> onnx.ModelProto:
    """The NHWC pattern Keras exporters write: Transpose, Conv, Relu, MaxPool, MatMul, Softmax."""
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Transpose", ["p"], ["q"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["q", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "D"], ["z"]),
        helper.make_node("Softmax", ["z"], ["y"], axis=-1),
    ]
    if shuffle:
        random.Random(0).shuffle(nodes)
    return _opset_model(
        nodes,
        [value_info("x", ["N", 6, 6, 1])],
        [value_info("y", ["N", 4])],
        [
            const("W", rng.normal(0, 0.5, (3, 1, 3, 3))),
            const("B", rng.normal(0, 0.1, 3)),
            const("shape", [-1, 27], np.int64),
            const("D", rng.normal(0, 0.5, (27, 4))),
        ],
    )


def test_nodes_out_of_topological_order_are_sorted():
    model = _keras_like(shuffle=True)
    with pytest.raises(Exception, match="topologically sorted"):
        onnx.checker.check_model(model)
    x = np.random.default_rng(5).uniform(0, 1, (1, 6, 6, 1)).astype(np.float32)
    p = session(model).run(None, {"x": x})[0][0]  # onnxruntime runs it as it is
    lm = load(model)
    assert any("topological order" in n for n in lm.notes)
    result = invert(model, {"distribution": p.tolist()}, samples=3, seed=0, bounds=(0, 1))
    assert any("topological order" in n for n in result.notes)
    assert result.verified.any()
    good = result.inputs[result.verified]
    assert_reproduces(model, _Loaded(good), np.tile(p, (1, 1)))


def test_old_ir_with_initializers_not_listed_as_inputs_and_an_old_opset():
    """IR 3 needs initializers among the inputs; BatchNormalization(6) has no kernel any more."""
    bn = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
          (("s", [1.5, 0.5]), ("b", [0.1, -0.2]), ("m", [0.0, 0.3]), ("v", [1.0, 2.0]))]  # fmt: skip
    model = _opset_model(
        [
            helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"], is_test=1),
            helper.make_node("Tanh", ["h"], ["y"]),
        ],
        [value_info("x", [1, 2, 3])],
        [value_info("y", [1, 2, 3])],
        bn,
        opset=6,
        ir=3,
    )
    lm = load(model)
    assert any("initializer(s) as graph inputs" in n for n in lm.notes)
    assert any("BatchNormalization(6)" in n and "upgraded from opset 6" in n for n in lm.notes)
    x = np.random.default_rng(6).uniform(-1, 1, (1, 2, 3)).astype(np.float32)
    scale, shift = np.array([1.5, 0.5]) / np.sqrt(np.array([1.0, 2.0]) + 1e-5), [0.1, -0.2]
    y = np.tanh((x - np.array([0.0, 0.3])[:, None]) * scale[:, None] + np.array(shift)[:, None])
    result = invert(model, {"values": y.tolist()}, samples=2, seed=0)
    assert result.all_verified
    upgraded = onnx.version_converter.convert_version(lm.original, 13)
    assert_reproduces(upgraded, result, y.astype(np.float32))


def test_an_old_opset_that_cannot_be_upgraded_names_the_operator(monkeypatch):
    model = _opset_model(
        [helper.make_node("Tanh", ["x"], ["y"])], [value_info("x", [1, 3])], [value_info("y", [1, 3])],
        opset=1, ir=3,
    )  # fmt: skip

    def refuse(model, version):
        raise RuntimeError("no adapter")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(ModelError) as info:
        load(model)
    line = one_line(info.value)
    assert "no kernel for Tanh at version 1" in line and "no adapter" in line


def test_input_without_shape_needs_input_shape():
    model = _opset_model(
        [helper.make_node("Tanh", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    with pytest.raises(ModelError) as info:
        load(model)
    assert "--input-shape" in one_line(info.value)
    y = np.tanh(np.array([[0.1, 0.2, -0.3]]))
    result = invert(model, {"values": y.tolist()}, input_shape=(1, 3), samples=2)
    assert_reproduces(model, result, y)
    with pytest.raises(OptionError):
        invert(model, {"values": y.tolist()}, input_shape="1,x")


# ----------------------------------------------------------------------------- distinct samples


def test_a_single_point_preimage_is_returned_once():
    """A bijection and an exact target: one preimage, not N copies of it."""
    model = make_model(
        [helper.make_node("Tanh", ["x"], ["y"])], [value_info("x", ["N", 3])],
        [value_info("y", ["N", 3])],
    )  # fmt: skip
    y = np.tanh([[0.2, -0.1, 0.4]])
    for method in ("auto", "backward", "forward"):
        result = invert(model, {"values": y.tolist()}, samples=4, seed=0, method=method)
        assert len(result) == 1, method
        assert any("only 1 of 4 samples are distinct" in n for n in result.notes)
        assert_reproduces(model, result, y)


def test_distribution_targets_give_distinct_samples_on_square_networks():
    """Softmax leaves a constant free: a square Tanh→Sigmoid net still has many preimages."""
    rng = np.random.default_rng(7)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "A"], ["a"]),
            helper.make_node("Tanh", ["a"], ["h"]),
            helper.make_node("MatMul", ["h", "B"], ["b"]),
            helper.make_node("Sigmoid", ["b"], ["s"]),
            helper.make_node("MatMul", ["s", "C"], ["z"]),
            helper.make_node("Softmax", ["z"], ["y"], axis=-1),
        ],
        [value_info("x", ["N", 4])],
        [value_info("y", ["N", 4])],
        [const(n, rng.normal(size=(4, 4)) + 2 * np.eye(4)) for n in "ABC"],
    )
    p = session(model).run(None, {"x": rng.uniform(-0.5, 0.5, (1, 4)).astype(np.float32)})[0][0]
    result = invert(model, {"distribution": p.tolist()}, samples=6, seed=0)
    assert len(result) == 6 and result.all_verified
    probs = session(model).run(None, {"x": result.inputs})[0]
    np.testing.assert_allclose(probs, np.tile(p, (6, 1)), atol=1e-4)
    assert len({row.tobytes() for row in result.inputs}) == 6


# ------------------------------------------------------------------------- dependency warnings


def test_dependency_warnings_become_notes(monkeypatch):
    import onnxinv.api as api

    def noisy(*args, **kwargs):
        warnings.warn("a converter is deprecated", UserWarning, stacklevel=1)
        return build(*args, **kwargs)

    monkeypatch.setattr(api.objective_mod, "build", noisy)
    model = make_model(
        [helper.make_node("Tanh", ["x"], ["y"])], [value_info("x", ["N", 3])],
        [value_info("y", ["N", 3])],
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        result = invert(model, {"values": [[0.1, 0.2, 0.3]]}, samples=1)
    assert not escaped
    assert "warning (UserWarning): a converter is deprecated" in result.notes


# ---------------------------------------------------------------------------- memory and time


def _wide(n_in: int, n_out: int) -> onnx.ModelProto:
    """x[N, n_in] → MatMul → Cos (no rule: LM solves it) → y[N, n_out]."""
    rng = np.random.default_rng(8)
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Cos", ["h"], ["y"])],
        [value_info("x", ["N", n_in])],
        [value_info("y", ["N", n_out])],
        [const("W", rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)))],
    )


def test_jacobians_are_sliced_to_the_memory_budget():
    model = _wide(64, 10)
    target = session(model).run(None, {"x": np.full((1, 64), 0.1, np.float32)})[0]
    # 10 × 64 Jacobians: ~16 kB a sample, so 256 KiB holds about 16 samples per slice.
    result = invert(model, {"values": target.tolist()}, samples=40, method="forward",
                    max_memory=2**20 // 4 * 4, seed=0)  # fmt: skip
    assert result.n_verified >= 38
    assert_reproduces(model, _Loaded(result.inputs[result.verified]), target)


def test_a_dense_step_that_cannot_fit_goes_matrix_free_or_is_a_typed_refusal(tmp_path):
    model = _wide(4096, 64)  # 64 × 4096 × 24 bytes ≈ 6 MiB for one sample
    target = session(model).run(None, {"x": np.zeros((1, 4096), np.float32)})[0]
    result = invert(model, {"values": target.tolist()}, method="forward", max_memory="2M",
                    samples=3, seed=0)  # fmt: skip
    assert result.all_verified and any("matrix-free" in note for note in result.notes)
    assert_reproduces(model, _Loaded(result.inputs), target)
    with pytest.raises(MemoryBudgetError) as info:  # (dense Jacobians asked for by name)
        invert(model, {"values": target.tolist()}, method="forward", max_memory="2M",
               jacobian="dense")  # fmt: skip
    assert "--max-memory" in one_line(info.value) and "64 outputs x 4096 inputs" in one_line(
        info.value
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    (tmp_path / "t.json").write_text(f'{{"values": {target.tolist()}}}')
    res = CliRunner().invoke(
        main, ["run", str(path), "-t", str(tmp_path / "t.json"), "--method", "forward",
               "--max-memory", "2M", "--jacobian", "dense", "-o", str(tmp_path / "out")],
    )  # fmt: skip
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "--max-memory" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["lots", "0.5K", -3, True])
def test_bad_memory_budget(value):
    with pytest.raises(OptionError, match="max_memory"):
        invert(_wide(4, 2), {"values": [[1.0, 1.0]]}, max_memory=value)


def test_finite_differences_in_blocks_match_autograd():
    """Central differences, a few coordinates at a time, agree with autograd."""
    model = _wide(12, 5)
    lm = load(model)
    obj = build(lm, Target.coerce({"values": [[0.5] * 5]}))
    auto, _ = build_residual(lm, obj)
    fd = FiniteDifferenceResidual(lambda x: lm.run(x), obj, lm.input_shape, block_values=50)
    x = torch.from_numpy(np.random.default_rng(9).uniform(-1, 1, (3, 12)))
    r1, j1 = auto.value_and_jacobian(x)
    r2, j2 = fd.value_and_jacobian(x)
    np.testing.assert_allclose(r1.numpy(), r2.numpy(), atol=1e-6)
    np.testing.assert_allclose(j1.numpy(), j2.numpy(), atol=1e-4)


def test_deadline_is_checked_inside_jacobians():
    lm = load(_wide(12, 5))
    obj = build(lm, Target.coerce({"values": [[0.5] * 5]}))
    residual, _ = build_residual(lm, obj)
    residual.deadline = 0.0  # long past
    with pytest.raises(DeadlineReached):
        residual.value_and_jacobian(torch.zeros((2, 12), dtype=torch.float64))
    starts = Starts(12, np.random.default_rng(0))
    settings = LMSettings(tol=1e-6, deadline=0.0)
    out = levenberg_marquardt(residual, starts(3), settings, starts)
    assert out.timed_out and not out.converged.any()


def test_a_layer_too_large_for_a_dense_svd_is_opaque():
    n = 2100  # 2100 × 2100 > 4 million entries
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [value_info("x", ["N", n])],
        [value_info("y", ["N", n])],
        [const("W", np.eye(n))],
    )
    part = partition(load(model), default_registry())
    assert [b.kind for b in part.blocks] == ["opaque"]
    assert "too large for a dense SVD" in part.first_without_rule.reason


# ------------------------------------------------------------------------------------- --debug


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    import onnxinv.api as api

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(api.objective_mod, "build", broken)
    # setenv records the variable's absence, so teardown removes what --debug sets below.
    monkeypatch.setenv("ONNXINV_DEBUG", "")
    path = tmp_path / "m.onnx"
    onnx.save(_wide(4, 2), path)
    (tmp_path / "t.json").write_text('{"values": [[1.0, 1.0]]}')
    args = ["run", str(path), "-t", str(tmp_path / "t.json"), "-o", str(tmp_path / "o")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "boom" in res.stderr and "--debug" in res.stderr
    assert res.stderr.count("\n") == 1
    res = CliRunner().invoke(main, ["--debug", *args])
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)


def test_an_unexpected_failure_is_a_model_error_naming_the_phase(monkeypatch):
    import onnxinv.api as api

    def broken(*args, **kwargs):
        raise ValueError("inhomogeneous shape")

    monkeypatch.setattr(api, "partition", broken, raising=False)
    monkeypatch.setattr("onnxinv.partition.blocks.partition", broken)
    monkeypatch.delenv("ONNXINV_DEBUG", raising=False)
    with pytest.raises(ModelError) as info:
        invert(_wide(4, 2), {"values": [[1.0, 1.0]]})
    line = one_line(info.value)
    assert "while partitioning the graph" in line and "ValueError: inhomogeneous shape" in line


def test_sequence_tensors_inside_the_graph():
    """SequenceConstruct → ConcatFromSequence (backend test_sequence_model*): no crash, solved."""
    model = _opset_model(
        [
            helper.make_node("SequenceConstruct", ["x", "z"], ["seq"]),
            helper.make_node("ConcatFromSequence", ["seq"], ["c"], axis=0),
            helper.make_node("MatMul", ["c", "W"], ["y"]),
        ],
        [value_info("x", [2, 3]), value_info("z", [2, 3])],
        [value_info("y", [4, 2])],
        [const("W", np.array([[1.0, 0.5], [0.2, -1.0], [0.3, 0.3]]))],
    )
    z = np.full((2, 3), 0.25, np.float32)
    x = np.array([[0.1, -0.2, 0.3], [0.0, 0.4, -0.1]], np.float32)
    y = session(model).run(None, {"x": x, "z": z})[0]
    result = invert(model, {"values": y.tolist()}, input="x", fixed={"z": z}, samples=3)
    assert result.all_verified
    assert_reproduces(model, result, y, feeds={"z": z})


def test_large_gram_products_are_blocked_and_interruptible(monkeypatch):
    import onnxinv.solvers.forward.lm as lm_mod
    import onnxinv.solvers.forward.operators as operators

    jac = torch.from_numpy(np.random.default_rng(10).normal(size=(2, 6, 500)))
    r = torch.ones((2, 6), dtype=torch.float64)
    lam = torch.full((2,), 1e-3, dtype=torch.float64)
    whole = lm_mod.damped_step(jac, r, lam)
    monkeypatch.setattr(operators, "GRAM_BLOCK", 100)  # forces many column blocks
    np.testing.assert_allclose(lm_mod.damped_step(jac, r, lam).numpy(), whole.numpy(), atol=1e-9)
    with pytest.raises(DeadlineReached):
        lm_mod.damped_step(jac, r, lam, deadline=0.0)


def test_batchnorm_on_a_whole_fixed_tensor():
    """test_BatchNorm*_eval: a fixed batch of 2 is one sample; the channel axis is axis 1."""
    rng = np.random.default_rng(11)
    inits = [const(n, rng.uniform(0.5, 1.5, 3)) for n in ("s", "b", "m", "v")]
    model = make_model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
        [value_info("x", [2, 3, 4, 4])],
        [value_info("y", [2, 3, 4, 4])],
        inits,
    )
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    y = session(model).run(None, {"x": x})[0]
    assert [b.kind for b in partition(load(model), default_registry()).blocks] == ["invertible"]
    result = invert(model, {"values": y.tolist()}, method="backward", samples=2)
    assert len(result) == 1 and result.all_verified  # a bijection: one preimage
    assert_reproduces(model, result, y)


@pytest.mark.parametrize(
    ("shape", "image"),
    [
        ((1, 1, 8, 8), (1, 8, 8)),
        ((1, 3, 4, 5), (3, 4, 5)),
        ((1, 64), (1, 8, 8)),
        ((2, 3, 4, 4), None),
    ],
)
def test_grid_ignores_a_fixed_batch_of_one(shape, image):
    from onnxinv.write.images import image_shape

    assert image_shape(shape) == image


def test_double_inputs_are_returned_as_verified():
    """A float64 model and values beyond float32's range (backend test_operator_addconstant):
    the returned samples are the float64 values onnxruntime verified, not a float32 copy."""
    model = make_model(
        [helper.make_node("Add", ["x", "c"], ["y"])],
        [value_info("x", [2, 3], TensorProto.DOUBLE)],
        [value_info("y", [2, 3], TensorProto.DOUBLE)],
        [const("c", np.ones((2, 3)), np.float64)],
    )
    y = np.array([[1.0, 2.0, 9e223], [1.0, -3.0, 1.3e219]])
    result = invert(model, {"values": y.tolist(), "tolerance": 1e210}, samples=1)
    assert result.inputs.dtype == np.float64 and result.all_verified
    out = session(model).run(None, {"x": result.inputs[0]})[0]
    assert np.isfinite(out).all() and np.abs(out - y).max() <= 1e210


def test_inspect_shows_load_notes_and_takes_fix(tmp_path):
    """inspect on an old-opset two-input model: the upgrade note, and --fix for the second."""
    model = _opset_model(
        [helper.make_node("Add", ["x", "z"], ["y"], broadcast=1)],
        [value_info("x", [2, 3]), value_info("z", [3])],
        [value_info("y", [2, 3])],
        opset=6,
        ir=3,
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "z.npy", np.ones(3, np.float32))
    res = CliRunner().invoke(main, ["inspect", str(path)])
    assert res.exit_code == 0 and "choose one with --input NAME" in res.stdout
    res = CliRunner().invoke(main, ["inspect", str(path), "--fix", f"z={tmp_path / 'z.npy'}"])
    assert res.exit_code == 0, res.stderr
    assert "note: onnxruntime has no kernel for Add(6)" in res.stdout
    assert "invert 'x' (sample shape [2, 3])" in res.stdout


def test_report_plan_uses_the_users_max_condition():
    """A layer with condition number 200 is 'not onto' at the default cut (100), not at 1000."""
    u, _ = np.linalg.qr(np.random.default_rng(12).normal(size=(4, 4)))
    w = u @ np.diag([1.0, 1.0, 1.0, 0.005]) @ u.T
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Tanh", ["z"], ["y"])],
        [value_info("x", ["N", 4])],
        [value_info("y", ["N", 4])],
        [const("W", w)],
    )
    y = [[0.1, 0.2, -0.1, 0.05]]
    loose = invert(model, {"values": y}, samples=1, max_condition=1000.0)
    strict = invert(model, {"values": y}, samples=1)
    assert not any("not onto" in line for line in loose.model["plan"])
    assert any("not onto" in line for line in strict.model["plan"])
