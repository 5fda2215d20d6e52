"""Conformance subset: onnxinv on small models nobody on the project wrote.

Runs ``bench/conformance.py``'s per-case function in-process on every ``pytorch-converted`` and
``simple`` model of the installed onnx wheel whose inputs hold at most 2,000 values, with 2
samples and a 10 s timeout. Each case must not crash and must not have a sample flagged verified
that a fresh onnxruntime session rejects; the cases in ``MUST_VERIFY`` must verify every sample.
``python bench/conformance.py`` runs the full set, each case in its own process.
"""

from __future__ import annotations

import pytest

from bench import conformance

# Cases that crash today, as {case: "exception @ onnxinv/file.py:line"}; each becomes an
# xfail(strict=False). Remove an entry when its fix lands. Empty since 1b217d2 fixed the
# sequence models; it held
#   "simple/test_sequence_model1": "ValueError (wrapped as ModelError) @ onnxinv/_ort.py:56",
#   "simple/test_sequence_model2".."5": "onnxruntime Fail: seq output typed as tensor, in a
#       session built by onnxinv/plan.py:_runner @ onnxinv/_ort.py:40".
CRASHES: dict[str, str] = {}

# Cases that verify every sample today: a regression fails the test.
MUST_VERIFY: set[str] = {
    "pytorch-converted/test_ConstantPad2d",
    "pytorch-converted/test_Conv1d",
    "pytorch-converted/test_Conv1d_dilated",
    "pytorch-converted/test_Conv1d_groups",
    "pytorch-converted/test_Conv1d_pad1",
    "pytorch-converted/test_Conv1d_pad1size1",
    "pytorch-converted/test_Conv1d_pad2",
    "pytorch-converted/test_Conv1d_pad2size1",
    "pytorch-converted/test_Conv1d_stride",
    "pytorch-converted/test_Conv2d",
    "pytorch-converted/test_Conv2d_depthwise",
    "pytorch-converted/test_Conv2d_depthwise_padded",
    "pytorch-converted/test_Conv2d_depthwise_strided",
    "pytorch-converted/test_Conv2d_depthwise_with_multiplier",
    "pytorch-converted/test_Conv2d_dilated",
    "pytorch-converted/test_Conv2d_groups",
    "pytorch-converted/test_Conv2d_groups_thnn",
    "pytorch-converted/test_Conv2d_no_bias",
    "pytorch-converted/test_Conv2d_padding",
    "pytorch-converted/test_Conv2d_strided",
    "pytorch-converted/test_Conv3d",
    "pytorch-converted/test_Conv3d_dilated",
    "pytorch-converted/test_Conv3d_dilated_strided",
    "pytorch-converted/test_Conv3d_groups",
    "pytorch-converted/test_Conv3d_no_bias",
    "pytorch-converted/test_Conv3d_stride",
    "pytorch-converted/test_Conv3d_stride_padding",
    "pytorch-converted/test_ConvTranspose2d",
    "pytorch-converted/test_ConvTranspose2d_no_bias",
    "pytorch-converted/test_ELU",
    "pytorch-converted/test_LeakyReLU",
    "pytorch-converted/test_LeakyReLU_with_negval",
    "pytorch-converted/test_Linear_no_bias",
    "pytorch-converted/test_LogSoftmax",
    "pytorch-converted/test_MaxPool1d",
    "pytorch-converted/test_MaxPool1d_stride",
    "pytorch-converted/test_MaxPool2d",
    "pytorch-converted/test_MaxPool3d",
    "pytorch-converted/test_MaxPool3d_stride",
    "pytorch-converted/test_MaxPool3d_stride_padding",
    "pytorch-converted/test_PixelShuffle",
    "pytorch-converted/test_ReLU",
    "pytorch-converted/test_ReflectionPad2d",
    "pytorch-converted/test_ReplicationPad2d",
    "pytorch-converted/test_SELU",
    "pytorch-converted/test_Sigmoid",
    "pytorch-converted/test_Softmax",
    "pytorch-converted/test_Softmin",
    "pytorch-converted/test_Softplus",
    "pytorch-converted/test_Tanh",
    "pytorch-converted/test_ZeroPad2d",
    "pytorch-converted/test_log_softmax_dim3",
    "pytorch-converted/test_log_softmax_lastdim",
    "pytorch-converted/test_softmax_functional_dim3",
    "pytorch-converted/test_softmax_lastdim",
    "simple/test_expand_shape_model1",
    "simple/test_expand_shape_model2",
    "simple/test_expand_shape_model3",
    "simple/test_expand_shape_model4",
    "simple/test_sequence_model1",
    "simple/test_sequence_model2",
    "simple/test_sequence_model3",
    "simple/test_sequence_model4",
    "simple/test_sequence_model5",
    "simple/test_sequence_model7",
    "simple/test_shrink",
    "simple/test_sign_model",
    "simple/test_single_relu_model",
}

MAX_INPUT_VALUES = 2000
TIMEOUT = 10.0
SAMPLES = 2


def _cases():
    cases = conformance.discover(("pytorch-converted", "simple"))
    small = [c for c in cases if conformance.input_size(c) <= MAX_INPUT_VALUES]
    return [
        pytest.param(
            c,
            id=c.name,
            marks=[pytest.mark.xfail(strict=False, reason=CRASHES[c.name])]
            if c.name in CRASHES
            else [],
        )
        for c in small
    ]


def _describe(rec: dict) -> str:
    text = f"{rec['case']}: {rec['outcome']} {rec.get('verified')}/{rec.get('samples')}"
    text += f" - {rec.get('reason')}"
    return text + ("\n" + rec["traceback"] if rec.get("traceback") else "")


@pytest.mark.parametrize("case", _cases())
def test_conformance(case):
    rec = conformance.run_case(case, timeout=TIMEOUT, samples=SAMPLES)
    assert rec["outcome"] not in ("crash", "harness-error"), _describe(rec)
    assert rec["wrongly_verified"] == 0, _describe(rec)
    assert not rec.get("recheck_problems"), _describe(rec)
    assert not rec["late"], _describe(rec)
    if case.name in MUST_VERIFY:
        assert rec["outcome"] == "verified", _describe(rec)


def test_the_lists_name_cases_of_the_subset():
    names = {p.values[0].name for p in _cases()}
    assert len(names) > 50
    assert not MUST_VERIFY - names, sorted(MUST_VERIFY - names)
    assert not set(CRASHES) - names, sorted(set(CRASHES) - names)
    assert not MUST_VERIFY & set(CRASHES)


@pytest.mark.parametrize(
    ("records", "worst"),
    [
        ([{"seconds": 12.5, "timeout": 10.0}, {"seconds": 3.0, "timeout": 10.0}], (2.5, "c0")),
        ([{"overrun": 31.0, "outcome": "crash"}, {"seconds": 70.0, "timeout": 60.0}], (31.0, "c0")),
        ([{"seconds": 1.0, "timeout": 10.0}], (-9.0, "c0")),
        ([{"outcome": "harness-error"}], None),
    ],
    ids=["late", "killed-over-time", "within", "not-timed"],
)
def test_the_summary_names_the_worst_overrun(records, worst):
    base = {"outcome": "verified", "samples": 2, "verified": 2, "wrongly_verified": 0}
    results = [{**base, "case": f"c{i}", **r} for i, r in enumerate(records)]
    results[-1]["wrongly_verified"] = 1
    assert conformance.worst_overrun(results) == worst
    line = conformance.final_line(results)
    crashes = sum(r["outcome"] == "crash" for r in results)
    assert f"{crashes} crashes, 1 wrongly verified" in line
    expected = "no case timed" if worst is None else f"worst overrun {worst[0]:+.1f} s (c0)"
    assert expected in line, line
