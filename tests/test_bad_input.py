"""Every bad input, through the command line AND the API: one line, a typed error, nothing written.

One table (:data:`BAD`) drives both sides. Through ``onnxinv run`` (click's CliRunner, in an
empty working folder): exit status 1, nothing on stdout, exactly one non-empty line on stderr
naming the problem, no traceback, no output folder, no temporary folder left behind, nothing
else created. Through :func:`onnxinv.invert`: the documented exception type, with a one-line
message naming the same thing.

Then: a non-empty ``--out`` is left untouched by a refusal, a failure or Ctrl-C (with or without
``--overwrite``); the same seed writes byte-identical ``inputs.npy``; ``--timeout`` returns what
is verified by then (flagged) with exit 0/3, or exit 1 with one line when nothing is.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import (
    BUNDLED,
    TARGETS,
    as_probabilities,
    checker_failure,
    const,
    dense,
    make_model,
    one_line,
    ort_outputs,
    value_info,
)
from onnx import TensorProto, helper

import onnxinv.api
from onnxinv import invert
from onnxinv.cli import main
from onnxinv.errors import (
    ModelError,
    OnnxInvError,
    OptionError,
    TargetError,
    UnreachableTargetError,
)

# ------------------------------------------------------------------------------------- helpers


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(res, code: int = 1) -> str:
    """The single stderr line of a failed run (asserting everything else about it)."""
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stdout == "", res.stdout
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"not exactly one line: {res.stderr!r}"
    assert lines[0].startswith("onnxinv: error: "), lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary folders a failed or interrupted write might leave behind."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


# ---------------------------------------------------------------------------------- bad models


def _missing_external_data(folder: Path) -> Path:
    path = folder / "ext.onnx"
    onnx.save_model(
        dense(n_in=64, n_out=10, seed=3),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (folder / "weights.bin").unlink()
    return path


def _ids_only() -> onnx.ModelProto:
    """Token ids -> embedding -> mean -> Gemm -> Softmax: no float input at all."""
    rng = np.random.default_rng(6)
    return make_model(
        [
            helper.make_node("Gather", ["emb", "ids"], ["e"]),
            helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
            helper.make_node("Gemm", ["m", "W", "b"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probs"], axis=-1),
        ],
        [value_info("ids", ["N", 4], TensorProto.INT64)],
        [value_info("probs", ["N", 10])],
        [
            const("emb", rng.normal(size=(20, 8))),
            const("W", rng.normal(size=(8, 10))),
            const("b", np.zeros(10)),
        ],
        opset=17,
    )


def _ids_and_floats() -> onnx.ModelProto:
    """Token ids feed the probabilities; a float input feeds a second output."""
    model = _ids_only()
    model.graph.node.append(helper.make_node("Sigmoid", ["x"], ["rx"]))
    model.graph.input.append(value_info("x", ["N", 3]))
    model.graph.output.append(value_info("rx", ["N", 3]))
    onnx.checker.check_model(model)
    return model


def _two_float_inputs() -> onnx.ModelProto:
    """probs = softmax((x @ W) * temperature): two float inputs, both used."""
    rng = np.random.default_rng(5)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["z"]),
            helper.make_node("Mul", ["z", "temperature"], ["zt"]),
            helper.make_node("Softmax", ["zt"], ["probs"], axis=-1),
        ],
        [value_info("x", ["N", 64]), value_info("temperature", ["N", 1])],
        [value_info("probs", ["N", 10])],
        [const("W", rng.normal(0, 0.5, (64, 10)))],
    )


def _dynamic_feature_dim() -> onnx.ModelProto:
    return make_model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        [value_info("x", ["N", "seq_len"])],
        [value_info("y", ["N", "seq_len"])],
    )


def _custom_op() -> onnx.ModelProto:
    """Gemm -> my.custom.FancyOp -> Softmax: no onnxruntime kernel, converter or rule for it."""
    rng = np.random.default_rng(7)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["z"]),
            helper.make_node("FancyOp", ["z"], ["f"], domain="my.custom", strength=2.0),
            helper.make_node("Softmax", ["f"], ["probs"], axis=-1),
        ],
        "custom",
        [value_info("x", ["N", 64])],
        [value_info("probs", ["N", 10])],
        initializer=[const("W", rng.normal(0, 0.1, (64, 10))), const("b", np.zeros(10))],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.custom", 1)],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)  # the checker does not know the domain, and lets it pass
    return model


def _sigmoid_values() -> onnx.ModelProto:
    """x[4] -> Gemm -> Sigmoid: every output lies in (0, 1)."""
    return dense(n_in=4, n_out=3, seed=1, act="Sigmoid", tail=None, out_name="y")


# ------------------------------------------------------------------------------------- the table

Maker = Callable[[Path], object]  # folder -> a model path or a target path/dict


def _bundled(n: int) -> Maker:
    return lambda d: BUNDLED[n]


def _saved(make: Callable[[], onnx.ModelProto], name: str = "m.onnx") -> Maker:
    return lambda d: save(make(), d / name)


def _json(text: str) -> Maker:
    return lambda d: write(d / "target.json", text)


DIGIT3 = lambda d: TARGETS / "digit3.json"  # noqa: E731  (10 classes, class 3 at 0.9)
UNIFORM10 = json.dumps({"distribution": [0.1] * 10})


@dataclass
class Bad:
    """One bad input: the model and target (made in a folder), extra CLI args and API kwargs."""

    id: str
    error: type[OnnxInvError]
    words: tuple[str, ...]  # each must appear in the one-line message
    model: Maker = field(default=_bundled(1))
    target: Maker = field(default=DIGIT3)
    cli: tuple[str, ...] = ()
    api: dict = field(default_factory=dict)


BAD = [
    # --- the model file
    Bad("model-is-a-directory", ModelError, ("not a file",), model=lambda d: d),
    Bad("model-missing", ModelError, ("nope.onnx", "not found"), model=lambda d: d / "nope.onnx"),
    Bad(
        "model-not-onnx",
        ModelError,
        ("x.onnx", "not an ONNX model"),
        model=lambda d: write(d / "x.onnx", "this is not a model\n"),
    ),
    Bad(
        "model-empty-file",
        ModelError,
        ("e.onnx",),
        model=lambda d: write(d / "e.onnx", b""),
    ),
    Bad(
        "model-truncated",
        ModelError,
        ("t.onnx",),
        model=lambda d: write(
            d / "t.onnx", BUNDLED[2].read_bytes()[: BUNDLED[2].stat().st_size // 2]
        ),
    ),
    Bad("model-fails-checker", ModelError, ("checker",), model=_saved(checker_failure)),
    Bad(
        "model-missing-external-data",
        ModelError,
        ("weights.bin",),
        model=_missing_external_data,
    ),
    # --- inputs and outputs
    Bad(
        "no-float-input",
        ModelError,
        ("no float input", "ids", "int64"),
        model=_saved(_ids_only),
    ),
    Bad(
        "integer-input-chosen",
        ModelError,
        ("ids", "int64", "continuous"),
        model=_saved(_ids_and_floats),
        cli=("--input", "ids", "--output", "probs"),
        api={"input": "ids", "output": "probs"},
    ),
    Bad(
        "several-float-inputs",
        ModelError,
        ("x", "temperature", "--input"),
        model=_saved(_two_float_inputs),
    ),
    Bad(
        "input-name-unknown",
        ModelError,
        ("'nope'", "pixels"),
        model=_bundled(1),
        cli=("--input", "nope"),
        api={"input": "nope"},
    ),
    Bad(
        "output-name-unknown",
        ModelError,
        ("'nope'", "probs"),
        model=_bundled(1),
        cli=("--output", "nope"),
        api={"output": "nope"},
    ),
    Bad(
        "dynamic-feature-dimension",
        ModelError,
        ("'x'", "dimension 1", "seq_len", "--input-shape"),
        model=_saved(_dynamic_feature_dim),
    ),
    Bad(
        "custom-domain-operator",
        ModelError,
        ("FancyOp", "my.custom"),
        model=_saved(_custom_op),
    ),
    # --- the target
    Bad(
        "target-missing", TargetError, ("nope.json", "not found"), target=lambda d: d / "nope.json"
    ),
    Bad("target-is-a-directory", TargetError, ("not found",), target=lambda d: d),
    Bad("target-not-json", TargetError, ("JSON",), target=_json("{distribution: [0.5, 0.5]")),
    Bad("target-not-an-object", TargetError, ("object",), target=_json("[0.1, 0.9]")),
    Bad("target-no-form", TargetError, ('"distribution"',), target=_json('{"probs": [0.5, 0.5]}')),
    Bad(
        "target-unknown-key",
        TargetError,
        ("'colour'",),
        target=_json('{"distribution": [0.5, 0.5], "colour": "red"}'),
    ),
    Bad(
        "target-wrong-length",
        TargetError,
        ('"distribution"', "4 entries", "10 classes"),
        target=_json('{"distribution": [0.25, 0.25, 0.25, 0.25]}'),
    ),
    Bad(
        "target-values-wrong-length",
        TargetError,
        ('"values"', "3 numbers"),
        target=_json('{"values": [1.0, 2.0, 3.0]}'),
    ),
    Bad(
        "target-negative",
        TargetError,
        ("entry 0", "> 0"),
        target=_json(json.dumps({"distribution": [-0.1, 0.3] + [0.1] * 8})),
    ),
    Bad(
        "target-zero",
        TargetError,
        ("entry 1", "> 0"),
        target=_json(json.dumps({"distribution": [0.2, 0.0] + [0.1] * 8})),
    ),
    Bad(
        "target-sum-not-1",
        TargetError,
        ("sums to", "not 1"),
        target=_json(json.dumps({"distribution": [0.2] * 10})),
    ),
    Bad(
        "target-nan",
        TargetError,
        ("NaN",),
        target=_json('{"distribution": [NaN' + ", 0.1" * 9 + "]}"),
    ),
    Bad(
        "target-infinity",
        TargetError,
        ("Inf",),
        target=_json('{"values": [Infinity' + ", 0.1" * 9 + "]}"),
    ),
    Bad(
        "target-class-out-of-range",
        TargetError,
        ('"class" 10', "10 classes"),
        target=_json('{"class": 10, "confidence": 0.9}'),
    ),
    Bad(
        "target-class-negative",
        TargetError,
        ('"class"',),
        target=_json('{"class": -1, "confidence": 0.9}'),
    ),
    Bad(
        "target-confidence-0",
        TargetError,
        ('"confidence"', "between 0 and 1"),
        target=_json('{"class": 3, "confidence": 0}'),
    ),
    Bad(
        "target-confidence-1",
        TargetError,
        ('"confidence"', "between 0 and 1"),
        target=_json('{"class": 3, "confidence": 1.0}'),
    ),
    Bad(
        "target-confidence-negative",
        TargetError,
        ('"confidence"', "between 0 and 1"),
        target=_json('{"class": 3, "confidence": -0.5}'),
    ),
    Bad(
        "target-tolerance-zero",
        TargetError,
        ('"tolerance"',),
        target=_json('{"class": 3, "confidence": 0.9, "tolerance": 0}'),
    ),
    # --- options
    Bad(
        "bounds-reversed",
        OptionError,
        ("LO < HI", "2,1"),
        cli=("--bounds", "2,1"),
        api={"bounds": "2,1"},
    ),
    Bad("bounds-equal", OptionError, ("LO < HI",), cli=("--bounds", "1,1"), api={"bounds": (1, 1)}),
    Bad(
        "bounds-words",
        OptionError,
        ("bounds", "a,b"),
        cli=("--bounds", "a,b"),
        api={"bounds": "a,b"},
    ),
    Bad("bounds-one-number", OptionError, ("bounds",), cli=("--bounds", "0"), api={"bounds": (0,)}),
    Bad(
        "bounds-tuple-of-words",
        OptionError,
        ("bounds",),
        cli=("--bounds", "zero,one"),
        api={"bounds": ("zero", "one")},
    ),
    Bad("bounds-nan", OptionError, ("finite",), cli=("--bounds", "nan,1"), api={"bounds": "nan,1"}),
    Bad(
        "bounds-infinite",
        OptionError,
        ("finite",),
        cli=("--bounds", "0,inf"),
        api={"bounds": (0, math.inf)},
    ),
    Bad("samples-0", OptionError, ("samples",), cli=("--samples", "0"), api={"samples": 0}),
    Bad("samples-negative", OptionError, ("samples",), cli=("--samples=-3",), api={"samples": -3}),
    Bad("seed-negative", OptionError, ("seed",), cli=("--seed=-1",), api={"seed": -1}),
    Bad(
        "restarts-negative",
        OptionError,
        ("restarts",),
        cli=("--restarts=-1",),
        api={"restarts": -1},
    ),
    Bad(
        "chunk-size-0",
        OptionError,
        ("chunk_size",),
        cli=("--chunk-size", "0"),
        api={"chunk_size": 0},
    ),
    Bad("init-std-0", OptionError, ("init_std",), cli=("--init-std", "0"), api={"init_std": 0.0}),
    Bad("timeout-0", OptionError, ("timeout",), cli=("--timeout", "0"), api={"timeout": 0}),
    Bad(
        "timeout-nan",
        OptionError,
        ("timeout",),
        cli=("--timeout", "nan"),
        api={"timeout": math.nan},
    ),
    # --- a well-formed request nothing can satisfy: Sigmoid outputs lie in (0, 1)
    Bad(
        "unreachable",
        UnreachableTargetError,
        ("unreachable", "best max error"),
        model=_saved(_sigmoid_values),
        target=_json('{"values": [0.5, 2.0, 0.5]}'),
        cli=("--samples", "2", "--max-iter", "10", "--restarts", "0"),
        api={"samples": 2, "max_iter": 10, "restarts": 0},
    ),
]


@pytest.fixture
def folders(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(inputs folder, empty working folder the run starts in)."""
    inputs, work = tmp_path / "in", tmp_path / "work"
    inputs.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    return inputs, work


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input_cli(folders, bad):
    inputs, work = folders
    out = work / "out"
    res = invoke("run", bad.model(inputs), "-t", bad.target(inputs), "-o", out, *bad.cli)
    line = one_error_line(res)
    for word in bad.words:
        assert word in line, (word, line)
    assert not out.exists()
    assert leftovers(work) == [] and leftovers(inputs) == []
    assert list(work.iterdir()) == []  # nothing at all: no runs/, no temporary folder


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input_api(folders, bad):
    inputs, work = folders
    model, target = bad.model(inputs), bad.target(inputs)
    with pytest.raises(OnnxInvError) as info:
        invert(model, target, **{"samples": 4, **bad.api})
    assert isinstance(info.value, bad.error), (type(info.value), str(info.value))
    message = one_line(info.value)
    for word in bad.words:
        assert word in message, (word, message)
    assert list(work.iterdir()) == []


# API arguments the CLI cannot pass (its option types stop them); each once crashed invert().
API_CRASHES = [
    ("timeout-word", {"timeout": "abc"}, OptionError, "ValueError from float('abc')"),
    ("timeout-list", {"timeout": [1]}, OptionError, "TypeError from float([1])"),
    ("output-list", {"output": [1]}, OptionError, "TypeError: unhashable type: 'list'"),
    ("disable-plugins-none", {"disable_plugins": None}, OptionError, "TypeError: not iterable"),
    ("disable-plugins-int", {"disable_plugins": 3}, OptionError, "TypeError: not iterable"),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "once"), [c[1:] for c in API_CRASHES], ids=[c[0] for c in API_CRASHES]
)
def test_bad_api_argument_is_a_typed_error(kwargs, error, once):
    with pytest.raises(error) as info:
        invert(BUNDLED[1], TARGETS / "digit3.json", samples=2, **kwargs)
    one_line(info.value)


def test_unreachable_carries_the_best_unverified_result():
    model = _sigmoid_values()
    target = [0.5, 2.0, 0.5]
    with pytest.raises(UnreachableTargetError) as info:
        invert(model, {"values": target}, samples=3, max_iter=10, restarts=0)
    exc = info.value
    assert exc.result is not None and len(exc.result) == 3
    assert not exc.result.verified.any()
    errors = np.abs(ort_outputs(model, exc.result.inputs) - np.array(target)).max(1)
    assert (errors >= 0.99).all()  # Sigmoid < 1 cannot reach 2
    np.testing.assert_allclose(exc.result.errors, errors, rtol=1e-5)
    assert exc.best_error == pytest.approx(errors.min(), rel=1e-5)
    assert f"{exc.best_error:.3g}" in str(exc)


# ------------------------------------------------------------- an existing --out is left alone


def _precious(folder: Path) -> Path:
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    (folder / "inputs.npy").write_bytes(b"old run")
    return folder


def _untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["inputs.npy", "keep.txt"]
    assert (folder / "keep.txt").read_text() == "precious"
    assert (folder / "inputs.npy").read_bytes() == b"old run"


def test_non_empty_out_without_overwrite_is_refused_before_any_work(folders, monkeypatch):
    inputs, work = folders
    out = _precious(work / "out")
    calls = []
    monkeypatch.setattr(onnxinv.api, "invert", lambda *a, **k: calls.append(1))
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out)
    line = one_error_line(res)
    assert str(out) in line and "--overwrite" in line
    assert calls == []  # refused before solving anything
    _untouched(out)
    assert sorted(p.name for p in work.iterdir()) == ["out"]


# A failing run with --overwrite must not have removed the old folder either.
OVERWRITE_FAILURES = [
    ("bad-target", _bundled(1), _json('{"class": 3, "confidence": 2}'), (), "confidence"),
    ("bad-model", lambda d: write(d / "x.onnx", "junk"), DIGIT3, (), "not an ONNX model"),
    ("bad-bounds", _bundled(1), DIGIT3, ("--bounds", "1,0"), "bounds"),
    (
        "unreachable",
        _saved(_sigmoid_values),
        _json('{"values": [0.5, 2.0, 0.5]}'),
        ("-n", "2", "--max-iter", "5", "--restarts", "0"),
        "unreachable",
    ),
]


@pytest.mark.parametrize(
    ("model", "target", "extra", "word"),
    [f[1:] for f in OVERWRITE_FAILURES],
    ids=[f[0] for f in OVERWRITE_FAILURES],
)
def test_failure_with_overwrite_keeps_the_old_folder(folders, model, target, extra, word):
    inputs, work = folders
    out = _precious(work / "out")
    res = invoke("run", model(inputs), "-t", target(inputs), "-o", out, "--overwrite", *extra)
    assert word in one_error_line(res)
    _untouched(out)
    assert leftovers(work) == []


# ----------------------------------------------------------------------------------------- Ctrl-C


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("existing", [False, True], ids=["no-folder", "previous-folder"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_ctrl_c_during_inversion(folders, monkeypatch, existing, overwrite):
    inputs, work = folders
    out = _precious(work / "out") if existing else work / "out"
    monkeypatch.setattr(onnxinv.api, "invert", _interrupt)
    flags = ["--overwrite"] if overwrite else []
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out, *flags)
    if existing and not overwrite:
        assert "--overwrite" in one_error_line(res, 1)  # refused before the interrupt
    else:
        assert "interrupted" in one_error_line(res, 130)
    if existing:
        _untouched(out)
    else:
        assert not out.exists()
    assert leftovers(work) == []
    assert sorted(p.name for p in work.iterdir()) == (["out"] if existing else [])


def test_ctrl_c_while_writing_over_a_previous_folder(folders, monkeypatch):
    inputs, work = folders
    out = _precious(work / "out")
    monkeypatch.setattr("onnxinv.write.images.grid_image", _interrupt)
    res = invoke(
        "run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out, "--overwrite"
    )
    assert "interrupted" in one_error_line(res, 130)
    _untouched(out)
    assert leftovers(work) == []


@pytest.mark.parametrize(("error", "code"), [(KeyboardInterrupt, 130), (OSError, 1)])
def test_failure_between_the_two_renames_keeps_the_old_folder(folders, monkeypatch, error, code):
    import os

    inputs, work = folders
    out = _precious(work / "out")
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old folder already moved aside; the new one not yet in place
            raise error("interrupted here")  # (later calls, if any, go through)
        return real(src, dst)

    monkeypatch.setattr("onnxinv.write.atomic.os.replace", replace)
    res = invoke(
        "run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out, "--overwrite"
    )
    one_error_line(res, code)
    assert calls[1][1] == out  # the failure hit the move of the new folder into place
    assert out.is_dir()
    _untouched(out)
    assert leftovers(work) == []


def test_out_below_a_file_is_a_bad_option_not_an_internal_error(folders, monkeypatch):
    inputs, work = folders
    (work / "file.txt").write_text("x")
    calls = []
    real = onnxinv.api.invert

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnxinv.api, "invert", counting)
    out = work / "file.txt" / "out"
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-n", "2", "-o", out)
    line = one_error_line(res)
    assert (work / "file.txt").read_text() == "x"
    assert leftovers(work) == []
    assert "internal error" not in line and "file.txt" in line
    assert calls == []  # refused before solving


@pytest.mark.parametrize(
    "extra",
    [("--samples", "abc"), ("--method", "sideways"), ("--no-such-option",)],
    ids=["samples-not-int", "method-unknown", "unknown-option"],
)
def test_usage_errors_are_one_line_exit_1(folders, extra):
    inputs, work = folders
    res = invoke("run", BUNDLED[1], "-t", TARGETS / "digit3.json", "-o", work / "out", *extra)
    one_error_line(res)
    assert list(work.iterdir()) == []


# -------------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("method", ["auto", "forward"])
def test_same_seed_same_bytes(folders, method):
    inputs, work = folders
    args = ("run", BUNDLED[2], "-t", TARGETS / "mix_1_7.json", "-n", "8", "--method", method)
    written = []
    for name in ("a", "b"):
        res = invoke(*args, "--seed", "5", "-o", work / name, "-q")
        assert res.exit_code in (0, 3), res.stderr
        written.append((work / name / "inputs.npy").read_bytes())
    assert written[0] == written[1]
    x = np.load(work / "a" / "inputs.npy")
    assert x.shape == (8, 64) and x.dtype == np.float32
    assert len(np.unique(x.round(5), axis=0)) == 8  # eight different samples, not one repeated
    res = invoke(*args, "--seed", "6", "-o", work / "c", "-q")
    assert res.exit_code in (0, 3), res.stderr
    assert (work / "c" / "inputs.npy").read_bytes() != written[0]


# ---------------------------------------------------------------------------------------- timeout


def _clock_jumps_after_first_finish(monkeypatch):
    """Wrap ``onnxinv.api.invert`` so that the clock jumps an hour when a sample first finishes.

    The run's deadline then passes at a known point: after the first sample, whatever the load
    of the machine. (The CLI passes ``on_progress`` only to a terminal; the wrapper adds one.)
    """
    real = onnxinv.api.invert
    real_monotonic = time.monotonic

    def jump(n_finished: int) -> None:
        monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + 3600.0)

    def wrapped(*args, **kwargs):
        return real(*args, **{**kwargs, "on_progress": jump})

    monkeypatch.setattr(onnxinv.api, "invert", wrapped)


def _check_timed_out_folder(out: Path, n: int) -> dict:
    report = json.loads((out / "report.json").read_text())
    x = np.load(out / "inputs.npy")
    assert x.shape == (n, 64) and x.dtype == np.float32
    target = np.array(report["target_output"])
    errors = np.abs(ort_outputs(BUNDLED[2], x) - target).max(1)
    flags = np.array([row["verified"] for row in report["samples"]])
    np.testing.assert_array_equal(flags, errors <= 1e-4)  # flags agree with a fresh ORT run
    assert report["totals"]["verified"] == int(flags.sum())
    # The note appears exactly when the timeout cut something short.
    timed_out = any("timed out" in note for note in report["notes"])
    assert timed_out == (not flags.all())
    return report


def test_timeout_returns_the_verified_samples_flagged(folders, monkeypatch):
    """Forward, one sample per chunk: the deadline passes once the first one is solved."""
    inputs, work = folders
    _clock_jumps_after_first_finish(monkeypatch)
    out = work / "out"
    res = invoke(
        "run", BUNDLED[2], "-t", TARGETS / "mix_1_7.json", "-n", "6", "--method", "forward",
        "--chunk-size", "1", "--timeout", "600", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 3, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert "1/6 samples verified" in res.stdout
    assert "timed out" in res.stderr
    report = _check_timed_out_folder(out, 6)
    assert [row["verified"] for row in report["samples"]] == [True] + [False] * 5
    assert leftovers(work) == []


@pytest.mark.parametrize("method", ["auto", "backward"])
def test_timeout_with_the_plan_exits_0_or_3_and_flags_honestly(folders, monkeypatch, method):
    inputs, work = folders
    _clock_jumps_after_first_finish(monkeypatch)
    out = work / "out"
    res = invoke(
        "run", BUNDLED[2], "-t", TARGETS / "mix_1_7.json", "-n", "6", "--method", method,
        "--chunk-size", "1", "--timeout", "600", "-o", out,
    )  # fmt: skip
    assert res.exit_code in (0, 3), (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    report = _check_timed_out_folder(out, 6)
    assert (report["totals"]["verified"] == 6) == (res.exit_code == 0)
    assert leftovers(work) == []


def test_timeout_before_anything_is_verified_is_one_line_exit_1(folders):
    inputs, work = folders
    out = work / "out"
    res = invoke(
        "run", BUNDLED[2], "-t", TARGETS / "mix_1_7.json", "-n", "4", "--method", "forward",
        "--timeout", "1e-9", "-o", out,
    )  # fmt: skip
    one_error_line(res)
    assert not out.exists() and list(work.iterdir()) == []


def test_timeout_through_the_api(monkeypatch):
    """The API returns the partial result, flagged, with a note; nothing verified raises."""
    real_monotonic = time.monotonic

    def jump(n_finished: int) -> None:
        monkeypatch.setattr(time, "monotonic", lambda: real_monotonic() + 3600.0)

    target = TARGETS / "mix_1_7.json"
    result = invert(
        BUNDLED[2], target, samples=4, method="forward", chunk_size=1, timeout=600,
        on_progress=jump,
    )  # fmt: skip
    monkeypatch.undo()
    p = np.array(json.loads(target.read_text())["distribution"])
    errors = np.abs(as_probabilities(ort_outputs(BUNDLED[2], result.inputs), "probabilities") - p)
    np.testing.assert_array_equal(result.verified, errors.max(1) <= 1e-4)
    assert result.verified.tolist() == [True, False, False, False]
    assert any("timed out" in note for note in result.notes)
    with pytest.raises(UnreachableTargetError) as info:
        invert(BUNDLED[2], target, samples=2, method="forward", timeout=1e-9)
    one_line(info.value)
    assert not info.value.result.verified.any()


def test_timeout_before_anything_is_verified_says_so(folders):
    inputs, work = folders
    res = invoke(
        "run", BUNDLED[2], "-t", TARGETS / "mix_1_7.json", "-n", "4", "--method", "forward",
        "--timeout", "1e-9", "-o", work / "out",
    )  # fmt: skip
    line = one_error_line(res)
    assert "timed out" in line or "timeout" in line, line
