"""Loading models: every way of passing one, every way one can be unusable, input/output choice."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import (
    BUNDLED,
    TARGETS,
    assert_solved,
    checker_failure,
    const,
    dense,
    make_model,
    one_line,
    ort_outputs,
    reachable_distribution,
    value_info,
)
from onnx import TensorProto, helper, numpy_helper

from onnxinv import invert
from onnxinv.errors import ModelError
from onnxinv.load.model import load

DIGIT3 = np.full(10, 0.1 / 9)
DIGIT3[3] = 0.9

# ------------------------------------------------------------------------------ ways of passing


@pytest.mark.parametrize("form", ["path", "str", "bytes", "proto"])
def test_load_bundled_model_every_way(form):
    path = BUNDLED[2]
    arg = {
        "path": path,
        "str": str(path),
        "bytes": path.read_bytes(),
        "proto": onnx.load(str(path)),
    }[form]
    lm = load(arg)
    assert (lm.input_name, lm.output_name) == ("pixels", "probs")
    assert lm.input_shape == (64,) and lm.output_shape == (10,)
    assert lm.tail == "Softmax" and lm.logits_name is not None
    assert lm.batched and lm.original_batched
    assert lm.name == ("digits_2layer" if form in ("path", "str") else lm.original.graph.name)
    x = np.random.default_rng(0).random((5, 64)).astype(np.float32)
    np.testing.assert_allclose(lm.run(x), ort_outputs(path, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lm.run(x, "original"), ort_outputs(path, x), rtol=0, atol=0)


# --------------------------------------------------------------------------------- external data


def _save_external(model: onnx.ModelProto, folder):
    path = folder / "ext.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").stat().st_size > 0
    return path


def test_external_data_model_inverts_and_missing_data_is_named(tmp_path):
    path = _save_external(dense(seed=3), tmp_path)  # (save_model moves the weights out)
    target = reachable_distribution(path, "probabilities", seed=11)
    result = invert(path, {"distribution": target}, samples=4, seed=0, bounds=(0, 1))
    assert result.model["name"] == "ext"
    assert_solved(path, result, np.array(target), "probabilities", bounds=(0, 1), n=4)

    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError) as info:
        load(path)
    assert "weights.bin" in one_line(info.value)


# -------------------------------------------------------------------------------- broken files


BROKEN = [
    ("missing", lambda d: d / "nope.onnx", "nope.onnx"),
    ("directory", lambda d: d, "not a file"),
    ("text-file", lambda d: _write(d / "x.onnx", b"this is not a model\n"), "not an ONNX model"),
    ("empty-file", lambda d: _write(d / "e.onnx", b""), "e.onnx"),
    ("truncated-path", lambda d: _write(d / "t.onnx", _half_of_bundled()), "t.onnx"),
    ("truncated-bytes", lambda d: _half_of_bundled(), "not an ONNX model"),
    ("garbage-bytes", lambda d: b"\x00\xff" * 50, "not an ONNX model"),
    ("checker-proto", lambda d: checker_failure(), "checker"),
    ("checker-path", lambda d: _save(checker_failure(), d / "c.onnx"), "checker"),
    ("wrong-type", lambda d: 42, "path, bytes or onnx.ModelProto"),
]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _save(model, path):
    onnx.save_model(model, str(path))
    return path


def _half_of_bundled() -> bytes:
    data = BUNDLED[2].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(("make", "word"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_unusable_model_is_one_line_model_error(tmp_path, make, word):
    with pytest.raises(ModelError) as info:
        load(make(tmp_path))
    assert word in one_line(info.value)


# ------------------------------------------------------------------------------ choosing outputs


def _logits_and_probs() -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    return make_model(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        [value_info("x", ["N", 16])],
        [value_info("logits", ["N", 5]), value_info("probs", ["N", 5])],
        [const("W", rng.normal(0, 0.5, (16, 5))), const("b", rng.normal(0, 0.1, 5))],
    )


def test_two_float_outputs_need_a_choice():
    with pytest.raises(ModelError) as info:
        load(_logits_and_probs())
    message = one_line(info.value)
    assert "logits" in message and "probs" in message and "--output" in message
    with pytest.raises(ModelError) as info:
        invert(_logits_and_probs(), {"class": 1, "confidence": 0.5}, samples=2)
    assert "--output" in one_line(info.value)


@pytest.mark.parametrize(
    ("how", "output", "space"),
    [
        ("argument", "probs", "probabilities"),
        ("argument", "logits", "logits"),
        ("target-key", "probs", "probabilities"),
        ("target-key", "logits", "logits"),
    ],
)
def test_two_float_outputs_with_a_choice(how, output, space):
    model = _logits_and_probs()
    p = reachable_distribution(model, "logits", seed=21)  # output 0 is "logits"
    spec = {"distribution": p}
    kwargs = {}
    if how == "argument":
        kwargs["output"] = output
    else:
        spec["output"] = output
    result = invert(model, spec, samples=4, seed=1, **kwargs)
    assert result.model["output"] == output
    assert result.model["output_space"] == space
    assert_solved(model, result, np.array(p), space, n=4, output=output)


def test_unknown_output_and_input_names_list_the_real_ones():
    with pytest.raises(ModelError) as info:
        load(_logits_and_probs(), output="nope")
    assert "nope" in one_line(info.value) and "logits" in str(info.value)
    with pytest.raises(ModelError) as info:
        load(_logits_and_probs(), input="nope")
    assert "nope" in one_line(info.value) and "x" in str(info.value)


def test_sklearn_zipmap_classifier(sklearn_digits):
    """skl2onnx's default export: int64 label + ZipMap (sequence of maps) probabilities."""
    model, _ = sklearn_digits
    outputs = {o.name: o.type.WhichOneof("value") for o in model.graph.output}
    assert outputs == {"output_label": "tensor_type", "output_probability": "sequence_type"}
    zipmap = next(n for n in model.graph.node if n.op_type == "ZipMap")

    lm = load(model)
    assert lm.output_name == zipmap.input[0]  # the tensor the ZipMap turns into dicts
    assert lm.output_shape == (10,)

    result = invert(model, TARGETS / "digit3.json", samples=4, seed=0, bounds=(0, 1))
    assert result.model["output"] == zipmap.input[0]
    assert result.model["output_space"] == "probabilities"
    # The judge reads the ZipMap output itself: a list of {class: probability} dicts.
    assert_solved(
        model, result, DIGIT3, "probabilities", bounds=(0, 1), n=4, output="output_probability"
    )
    labels = ort_outputs(model, result.inputs, output="output_label")
    assert (labels.ravel() == 3).all()


# ------------------------------------------------------------------------------- choosing inputs


def _two_inputs(output_uses_both: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(5)
    if output_uses_both:
        nodes = [
            helper.make_node("Gemm", ["x", "W", "b"], ["z"]),
            helper.make_node("Div", ["z", "temperature"], ["zt"]),
            helper.make_node("Softmax", ["zt"], ["probs"], axis=-1),
        ]
        outputs = [value_info("probs", ["N", 5])]
    else:
        nodes = [
            helper.make_node("Gemm", ["x", "W", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
            helper.make_node("Mul", ["temperature", "temperature"], ["t2"]),
        ]
        outputs = [value_info("probs", ["N", 5]), value_info("t2", ["N", 1])]
    return make_model(
        nodes,
        [value_info("x", ["N", 16]), value_info("temperature", ["N", 1])],
        outputs,
        [const("W", rng.normal(0, 0.5, (16, 5))), const("b", np.zeros(5))],
    )


@pytest.mark.parametrize("output_uses_both", [False, True])
def test_several_float_inputs_need_input_choice(output_uses_both):
    with pytest.raises(ModelError) as info:
        load(_two_inputs(output_uses_both))
    message = one_line(info.value)
    assert "--input" in message and "temperature" in message


def test_chosen_input_when_output_needs_another_input():
    with pytest.raises(ModelError) as info:
        load(_two_inputs(True), input="x")
    assert "temperature" in one_line(info.value)


def test_chosen_input_and_output_verify_on_the_full_model():
    """The original model has a second input the chosen output ignores; ORT still wants it."""
    model = _two_inputs(False)
    lm = load(model, input="x", output="probs")
    assert lm.input_shape == (16,)
    p = [0.1, 0.2, 0.3, 0.25, 0.15]
    result = invert(model, {"distribution": p}, samples=4, input="x", output="probs")
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(["probs"], {"x": result.inputs, "temperature": np.ones((4, 1), np.float32)})[0]
    assert result.all_verified
    assert np.abs(y - np.array(p)).max() <= 1e-4


def _ids_model(with_float: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"]),
        helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["m", "W", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
    ]
    inputs = [value_info("ids", ["N", 4], TensorProto.INT64)]
    outputs = [value_info("probs", ["N", 5])]
    if with_float:
        nodes.append(helper.make_node("Sigmoid", ["x"], ["rx"]))
        inputs.append(value_info("x", ["N", 3]))
        outputs.append(value_info("rx", ["N", 3]))
    return make_model(
        nodes,
        inputs,
        outputs,
        [
            const("emb", rng.normal(size=(20, 8))),
            const("W", rng.normal(size=(8, 5))),
            const("b", np.zeros(5)),
        ],
    )


@pytest.mark.parametrize(
    ("with_float", "kwargs"),
    [(False, {}), (False, {"input": "ids"}), (True, {"input": "ids", "output": "probs"})],
)
def test_integer_input_is_rejected(with_float, kwargs):
    with pytest.raises(ModelError) as info:
        load(_ids_model(with_float), **kwargs)
    message = one_line(info.value)
    assert "ids" in message and "continuous" in message and "int64" in message


def test_float_output_that_depends_only_on_integer_input_is_rejected():
    # The float input "x" is chosen by default, but "probs" is computed from "ids" alone.
    with pytest.raises(ModelError) as info:
        load(_ids_model(True), output="probs")
    message = one_line(info.value)
    assert "also depends" in message and "ids" in message


def test_float_output_of_a_model_that_also_has_an_integer_input():
    """ORT wants the unused int64 input fed when verifying on the original model."""
    model = _ids_model(True)
    v = [0.5, 0.7, 0.25]
    result = invert(model, {"values": v, "output": "rx"}, samples=3, seed=0)
    assert result.model["input"] == "x" and result.all_verified
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.zeros((3, 4), np.int64)
    y = sess.run(["rx"], {"x": result.inputs, "ids": ids})[0]
    assert np.abs(y - np.array(v)).max() <= 1e-4


def test_input_read_only_inside_an_if_branch():
    """The dependence check must see outer-scope names read inside subgraphs."""
    then_branch = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["a"]),
            helper.make_node("Softmax", ["a"], ["t_out"], axis=-1),
        ],
        "then",
        [],
        [value_info("t_out", ["N", 5])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["e_out"], axis=-1)],
        "else",
        [],
        [value_info("e_out", ["N", 5])],
    )
    model = make_model(
        [
            helper.make_node(
                "If", ["cond"], ["probs"], then_branch=then_branch, else_branch=else_branch
            )
        ],
        [value_info("x", ["N", 5])],
        [value_info("probs", ["N", 5])],
        [const("cond", True, np.bool_)],
    )
    p = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    result = invert(model, {"distribution": p.tolist()}, samples=3, seed=0)
    assert_solved(model, result, p, "probabilities", n=3)


@pytest.mark.parametrize("dim", ["seq_len", None], ids=["named", "unnamed"])
def test_dynamic_non_batch_dimension(dim):
    model = make_model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        [value_info("x", ["N", dim])],
        [value_info("y", ["N", dim])],
    )
    with pytest.raises(ModelError) as info:
        load(model)
    message = one_line(info.value)
    assert "dimension 1" in message and repr(dim) in message
    assert "--input-shape" in message and "input_shape=" in message
    lm = load(model, input_shape=(-1, 7))  # the fix the message names
    assert lm.input_shape == (7,) and lm.batched
    p = np.linspace(1, 2, 7) / np.linspace(1, 2, 7).sum()
    result = invert(model, {"distribution": p.tolist()}, samples=2, seed=0, input_shape="-1,7")
    assert result.inputs.shape == (2, 7)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": result.inputs})[0]
    np.testing.assert_allclose(y, np.tile(p, (2, 1)), atol=1e-4)


def test_scalar_input_is_rejected():
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"])], [value_info("x", [])], [value_info("y", [])]
    )
    with pytest.raises(ModelError) as info:
        load(model)
    assert "scalar" in one_line(info.value)


# ------------------------------------------------------------------------------------- batching


def test_dynamo_fixed_batch_of_one_is_batched(exported):
    path = exported("softmax", True)
    model = onnx.load(str(path))
    shapes = [
        onnx.numpy_helper.to_array(i).tolist()
        for i in model.graph.initializer
        if any(n.op_type == "Reshape" and i.name in n.input[1:] for n in model.graph.node)
    ]
    assert [1, 64] in shapes  # the dynamo exporter's Flatten is a Reshape to a fixed [1, 64]
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 8, 8]

    lm = load(path)
    assert lm.batched and not lm.original_batched
    # A sample is the declared tensor; internally the fixed 1 becomes a batch axis.
    assert lm.input_shape == (1, 1, 8, 8) and lm.output_shape == (1, 10)
    assert lm.unit_shape == (1, 8, 8) and lm.batch_axis
    x = np.random.default_rng(0).random((5, 1, 1, 8, 8)).astype(np.float32)
    batched = lm.run(x)
    one_by_one = ort_outputs(path, x)  # a fresh session, one [1, 1, 8, 8] sample per run
    assert batched.shape == (5, 10)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-7)
    original = lm.run(x, "original")
    assert original.shape == (5, 1, 10)
    np.testing.assert_allclose(original.reshape(5, 10), one_by_one, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("node", "out_shape"),
    [
        (lambda: helper.make_node("Reshape", ["x", "shape"], ["r"]), [1, "M"]),
        (lambda: helper.make_node("Unsqueeze", ["x", "axes"], ["r"]), [1, "N", 5]),
    ],
    ids=["reshape-to-1xN", "unsqueeze-axis-0"],
)
def test_a_graph_that_merges_the_batch_runs_one_sample_at_a_time(node, out_shape):
    """With a symbolic batch, Reshape(x, [1, -1]) or Unsqueeze(axis 0) mixes samples."""
    consts = [
        numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
    ]
    graph = helper.make_graph(
        [node(), helper.make_node("Tanh", ["r"], ["y"])],
        "merge",
        [value_info("x", ["N", 5])],
        [value_info("y", out_shape)],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    lm = load(model)
    assert not lm.batched and lm.input_shape == (5,)
    target = np.tanh(np.linspace(-1, 1, 5))
    result = invert(model, {"values": target.tolist()}, samples=3, seed=0)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for x in result.inputs:
        y = sess.run(None, {"x": x[None]})[0].ravel()
        np.testing.assert_allclose(y, target, atol=1e-4)
    assert result.all_verified
