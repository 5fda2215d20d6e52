"""Targets: every accepted form, every way of passing one, and a table of every bad target."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TARGETS, one_line

from onnxinv.errors import TargetError
from onnxinv.target import DEFAULT_TOLERANCE, Target

UNIFORM4 = [0.25, 0.25, 0.25, 0.25]

# ------------------------------------------------------------------------------------ good forms


def test_distribution_form():
    t = Target.from_dict({"distribution": [0.1, 0.2, 0.7]})
    assert t.kind == "distribution"
    assert t.cls is None and t.output is None and t.tolerance == DEFAULT_TOLERANCE
    np.testing.assert_array_equal(t.resolve((3,)), [0.1, 0.2, 0.7])


@pytest.mark.parametrize(
    ("cls", "confidence", "k"), [(3, 0.9, 10), (0, 0.5, 2), (9, 0.25, 10), (1, 0.99, 3)]
)
def test_class_form_spreads_the_rest_evenly(cls, confidence, k):
    t = Target.from_dict({"class": cls, "confidence": confidence})
    assert t.kind == "distribution" and t.values is None
    p = t.resolve((k,))
    assert p.shape == (k,)
    assert p[cls] == pytest.approx(confidence)
    others = np.delete(p, cls)
    np.testing.assert_allclose(others, (1 - confidence) / (k - 1))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)


def test_values_form_reshapes_to_the_output():
    t = Target.from_dict({"values": [1, 2, 3, 4, 5, 6]})
    assert t.kind == "values"
    v = t.resolve((2, 3))
    assert v.shape == (2, 3)
    np.testing.assert_array_equal(v, [[1, 2, 3], [4, 5, 6]])
    # Nested lists are accepted as long as the total size matches.
    nested = Target.from_dict({"values": [[1, 2, 3], [4, 5, 6]]})
    np.testing.assert_array_equal(nested.resolve((6,)), [1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize(
    "spec",
    [
        {"distribution": UNIFORM4, "output": "probs", "tolerance": 1e-3},
        {"class": 1, "confidence": 0.6, "output": "probs", "tolerance": 2},
        {"values": [0.5, -1.0, 2.0, 0.0], "output": "probs", "tolerance": 0.5},
    ],
    ids=["distribution", "class", "values"],
)
def test_optional_keys_and_round_trip(spec):
    t = Target.from_dict(spec)
    assert t.output == "probs"
    assert t.tolerance == float(spec["tolerance"])
    again = Target.from_dict(json.loads(json.dumps(t.to_dict())))
    np.testing.assert_array_equal(again.resolve((4,)), t.resolve((4,)))
    assert (again.output, again.tolerance, again.kind) == (t.output, t.tolerance, t.kind)


def test_distribution_resolves_against_a_vector_with_unit_dims():
    t = Target.from_dict({"distribution": UNIFORM4})
    for shape in [(4,), (1, 4), (4, 1), (1, 1, 4)]:
        np.testing.assert_array_equal(t.resolve(shape).ravel(), UNIFORM4)


def test_coerce_accepts_dict_path_str_and_target(tmp_path):
    spec = {"class": 2, "confidence": 0.8, "tolerance": 1e-3}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(spec))
    from_dict = Target.coerce(spec)
    for form in (path, str(path)):
        t = Target.coerce(form)
        assert (t.cls, t.confidence, t.tolerance) == (2, 0.8, 1e-3)
        np.testing.assert_array_equal(t.resolve((5,)), from_dict.resolve((5,)))
    assert Target.coerce(from_dict) is from_dict


@pytest.mark.parametrize(
    ("name", "expected_top"), [("digit3", 3), ("mix_1_7", 1), ("uniform", None)]
)
def test_bundled_target_files(name, expected_top):
    p = Target.coerce(TARGETS / f"{name}.json").resolve((10,))
    assert p.sum() == pytest.approx(1.0, abs=1e-6)
    assert (p > 0).all()
    if expected_top is None:
        np.testing.assert_allclose(p, 0.1)
    else:
        assert int(p.argmax()) == expected_top


# ---------------------------------------------------------------------------------- bad targets

# (id, what to pass, output shape to resolve against or None, a word the message must name).
# What to pass: a dict, a JSON text (written to a file), a file name that is never created, or
# another object given to Target.coerce.
MISSING = object()
BAD = [
    ("missing-file", MISSING, None, "nope.json"),
    ("not-json", "{distribution: [0.5, 0.5]", None, "JSON"),
    ("not-utf8", b"\xff\xfe\x00{", None, "JSON"),
    ("not-object-list", "[0.5, 0.5]", None, "object"),
    ("not-object-number", "3", None, "object"),
    ("not-a-dict-or-path", 3.5, None, "dict"),
    ("no-form", {"tolerance": 1e-3}, None, "distribution"),
    ("empty", {}, None, "distribution"),
    ("two-forms", {"distribution": [0.5, 0.5], "values": [1, 2]}, None, "values"),
    (
        "class-and-distribution",
        {"class": 1, "confidence": 0.9, "distribution": [0.5, 0.5]},
        None,
        "class",
    ),
    ("unknown-key", {"values": [1.0], "colour": "red"}, None, "colour"),
    ("confidence-without-class", {"values": [1.0], "confidence": 0.9}, None, "confidence"),
    ("dist-wrong-length", {"distribution": UNIFORM4}, (10,), "distribution"),
    ("dist-negative", {"distribution": [-0.1, 1.1]}, None, "distribution"),
    ("dist-zero", {"distribution": [0.0, 1.0]}, None, "distribution"),
    ("dist-sum-not-1", {"distribution": [0.5, 0.6]}, None, "distribution"),
    ("dist-sum-slightly-off", {"distribution": [0.5, 0.5 + 1e-5]}, None, "distribution"),
    ("dist-one-entry", {"distribution": [1.0]}, None, "distribution"),
    ("dist-nested", {"distribution": [[0.5, 0.5]]}, None, "distribution"),
    ("dist-nan", '{"distribution": [NaN, 0.5, 0.5]}', None, "distribution"),
    ("dist-infinity", '{"distribution": [Infinity, 0.5]}', None, "distribution"),
    ("values-nan", '{"values": [1.0, NaN]}', None, "values"),
    ("values-infinity", '{"values": [-Infinity, 1.0]}', None, "values"),
    ("dist-strings", {"distribution": ["0.5", "0.5"]}, None, "distribution"),
    ("dist-not-list", {"distribution": "0.5,0.5"}, None, "distribution"),
    ("values-mixed", {"values": [1.0, "a"]}, None, "values"),
    ("values-dict", {"values": {"a": 1}}, None, "values"),
    ("values-ragged", {"values": [[1, 2], [3]]}, None, "values"),
    ("values-null", {"values": [1.0, None]}, None, "values"),
    ("values-empty", {"values": []}, None, "values"),
    ("dist-booleans", {"distribution": [True, False]}, None, "distribution"),
    ("values-boolean", {"values": [1.0, True]}, None, "values"),
    ("class-out-of-range", {"class": 10, "confidence": 0.9}, (10,), "class"),
    ("class-negative", {"class": -1, "confidence": 0.9}, None, "class"),
    ("class-float", {"class": 3.0, "confidence": 0.9}, None, "class"),
    ("class-string", {"class": "3", "confidence": 0.9}, None, "class"),
    ("class-bool", {"class": True, "confidence": 0.9}, None, "class"),
    ("class-single-output", {"class": 0, "confidence": 0.9}, (1,), "class"),
    ("confidence-0", {"class": 3, "confidence": 0}, None, "confidence"),
    ("confidence-1", {"class": 3, "confidence": 1}, None, "confidence"),
    ("confidence-above-1", {"class": 3, "confidence": 1.5}, None, "confidence"),
    ("confidence-negative", {"class": 3, "confidence": -0.2}, None, "confidence"),
    ("confidence-nan", '{"class": 3, "confidence": NaN}', None, "confidence"),
    ("confidence-string", {"class": 3, "confidence": "0.9"}, None, "confidence"),
    ("confidence-bool", {"class": 3, "confidence": True}, None, "confidence"),
    ("confidence-missing", {"class": 3}, None, "confidence"),
    ("tolerance-zero", {"values": [1.0], "tolerance": 0}, None, "tolerance"),
    ("tolerance-negative", {"values": [1.0], "tolerance": -1e-3}, None, "tolerance"),
    ("tolerance-string", {"values": [1.0], "tolerance": "1e-3"}, None, "tolerance"),
    ("tolerance-bool", {"values": [1.0], "tolerance": True}, None, "tolerance"),
    ("tolerance-infinity", '{"values": [1.0], "tolerance": Infinity}', None, "tolerance"),
    ("output-not-string", {"values": [1.0], "output": 3}, None, "output"),
    ("output-empty", {"values": [1.0], "output": ""}, None, "output"),
    ("values-wrong-length", {"values": [1.0, 2.0, 3.0]}, (4,), "values"),
    ("values-wrong-length-2d", {"values": [1.0, 2.0, 3.0]}, (2, 2), "values"),
    ("dist-non-vector-output", {"distribution": [1 / 6] * 6}, (2, 3), "distribution"),
    ("class-non-vector-output", {"class": 1, "confidence": 0.5}, (2, 3), "distribution"),
]


@pytest.mark.parametrize(("spec", "shape", "key"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_target(tmp_path, spec, shape, key):
    if spec is MISSING:
        arg = tmp_path / "nope.json"
    elif isinstance(spec, str | bytes):
        arg = tmp_path / "target.json"
        arg.write_bytes(spec if isinstance(spec, bytes) else spec.encode())
    else:
        arg = spec
    if shape is None:
        with pytest.raises(TargetError) as info:
            Target.coerce(arg)
    else:
        target = Target.coerce(arg)  # well-formed on its own; wrong for this output
        with pytest.raises(TargetError) as info:
            target.resolve(shape)
    message = one_line(info.value)
    assert key in message, message
    assert "Traceback" not in message
