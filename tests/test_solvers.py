"""The solver interface, the settings object and the rule contract, from a newcomer's side.

* A solver defined here (one class) plus one registration line runs through the API and the CLI,
  with no other edit, and its samples are verified by onnxruntime.
* Settings generate the CLI's options and the API's keywords, and validate once.
* Rules of kinds the planner has never seen (defined here) are used through what they declare:
  ``top_only``, ``free_directions``, ``smooth_inverse``.
"""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import (
    assert_solved,
    const,
    dense,
    make_model,
    one_line,
    ort_errors,
    reachable_distribution,
    value_info,
)
from onnx import helper

from onnxinv import invert, plugins
from onnxinv.cli import main
from onnxinv.errors import OptionError
from onnxinv.rules import Registry, load_plugins
from onnxinv.rules.base import Family, Interval, PointRule
from onnxinv.settings import Settings
from onnxinv.solvers.base import Solver, SolverOutcome
from onnxinv.solvers.registry import (
    ENTRY_POINT_GROUP,
    SolverRegistry,
    SolverRegistryError,
    default_solvers,
    load_solver_plugins,
)


class NewtonSolver(Solver):
    """Minimum-norm Newton steps with step halving, from random starts (a test's toy solver)."""

    name = "toy-newton"
    summary = "Minimum-norm Newton steps from random starts (defined in a test)."

    def solve(self, k, rng, x0=None, on_progress=None) -> SolverOutcome:
        p = self.problem
        x = p.starts(rng)(k) if x0 is None else torch.from_numpy(x0)
        for _ in range(p.settings.max_iter):
            r, jac = p.residual.value_and_jacobian(x)
            step = (torch.linalg.pinv(jac) @ r.unsqueeze(-1)).squeeze(-1)
            t = torch.ones(k, 1, dtype=x.dtype)
            for _ in range(20):  # halve each sample's step until its residual shrinks
                worse = p.residual.value(x - t * step).norm(dim=1) >= r.norm(dim=1)
                if not worse.any():
                    break
                t[worse] /= 2
            x = x - t * step
        error = p.error(p.residual.value(x)).numpy()
        its = np.full(k, p.settings.max_iter)
        return SolverOutcome(x.numpy(), error, its, [self.name] * k)


def register(registry) -> None:
    """What a solver plugin's entry point names."""
    registry.register(NewtonSolver)


@pytest.fixture
def toy():
    reg = default_solvers()
    reg.register(NewtonSolver, source="test")  # the one registration line
    yield NewtonSolver.name
    reg.unregister(NewtonSolver.name)


MODEL = dense(8, 3, act="Tanh", seed=3)


def test_a_registered_solver_runs_through_the_api(toy):
    p = reachable_distribution(MODEL, "probabilities", seed=1, lo=-1, hi=1)
    result = invert(MODEL, {"distribution": p}, method=toy, samples=6, seed=2)
    assert result.methods == [toy] * 6
    assert_solved(MODEL, result, np.array(p), "probabilities", n=6)
    assert len(np.unique(result.inputs.round(4), axis=0)) == 6


def test_a_registered_solver_runs_through_the_cli(toy, tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    onnx.save(MODEL, path)
    p = reachable_distribution(MODEL, "probabilities", seed=1, lo=-1, hi=1)
    (tmp_path / "t.json").write_text(json.dumps({"distribution": p}))
    listed = CliRunner().invoke(main, ["methods"])
    assert listed.exit_code == 0 and toy in listed.stdout and "defined in a test" in listed.stdout
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["run", str(path), "-t", str(tmp_path / "t.json"), "--method", toy, "-n", "4",
               "-o", str(out), "-q"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    x = np.load(out / "inputs.npy")
    assert (ort_errors(MODEL, x, np.array(p), "probabilities") <= 1e-4).all()
    assert json.loads((out / "report.json").read_text())["settings"]["method"] == toy


def test_unregistered_method_is_refused_in_one_line():
    with pytest.raises(OptionError) as info:
        invert(MODEL, {"class": 0, "confidence": 0.5}, method="toy-newton")
    assert "auto, backward, forward, exact, gd" in one_line(info.value)


def test_solver_plugins_load_through_the_entry_point(monkeypatch):
    ep = metadata.EntryPoint("toy", f"{__name__}:register", ENTRY_POINT_GROUP)
    broken = metadata.EntryPoint("broken", "no_such_module_xyz:register", ENTRY_POINT_GROUP)

    def entry_points(group=None):
        return [ep, broken] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    reg = load_solver_plugins(SolverRegistry())
    # The built-ins come first even without their own entry point; the broken plugin is noted.
    assert reg.names()[:5] == ("auto", "backward", "forward", "exact", "gd")
    assert "toy-newton" in reg.names()
    assert reg.plugins["toy"] == "loaded" and reg.plugins["broken"].startswith("failed")
    off = load_solver_plugins(SolverRegistry(), disabled=["toy"])
    assert "toy-newton" not in off.names() and off.plugins["toy"] == "disabled"


def test_solver_registry_refuses_duplicates_and_non_solvers():
    reg = SolverRegistry()
    reg.register(NewtonSolver)
    with pytest.raises(SolverRegistryError, match="already registered"):
        reg.register(NewtonSolver)
    reg.register(NewtonSolver, override=True)
    with pytest.raises(SolverRegistryError, match="not a Solver"):
        reg.register(object)  # type: ignore[arg-type]

    class Nameless(NewtonSolver):
        name = ""

    with pytest.raises(SolverRegistryError, match="no name"):
        reg.register(Nameless)


def test_methods_lists_the_built_ins():
    res = CliRunner().invoke(main, ["methods"])
    assert res.exit_code == 0
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert names[:5] == ["auto", "backward", "forward", "exact", "gd"]


# ------------------------------------------------------------------------------------- settings


def test_cli_options_are_the_settings_fields():
    run = main.commands["run"]
    params = {p.name for p in run.params}
    for f in dataclasses.fields(Settings):
        assert f.name in params, f"--{f.name} missing from `onnxinv run`"
    defaults = {p.name: p.default for p in run.params}
    for f in dataclasses.fields(Settings):
        if not f.metadata["multiple"]:
            assert defaults[f.name] == f.default, f.name


def test_api_rejects_an_unknown_option_by_name():
    with pytest.raises(OptionError) as info:
        invert(MODEL, {"class": 0, "confidence": 0.5}, samples=2, max_iters=5)
    line = one_line(info.value)
    assert "'max_iters'" in line and "max_iter" in line


@pytest.mark.parametrize(
    "name, value",
    [("samples", 0), ("samples", True), ("seed", -1), ("max_iter", 1.5), ("restarts", -1),
     ("init_std", 0.0), ("max_condition", 1.0), ("null_scale", -0.1), ("gd_lr", float("nan")),
     ("gd_steps", 0), ("chunk_size", "8"), ("timeout", 0), ("bounds", "1,0"),
     ("bounds", (0, float("inf"))), ("input_shape", "a,b"), ("device", "tpu"),
     ("method", ""), ("max_memory", "lots"), ("input", ""), ("fixed", [1, 2]),
     ("disable_plugins", [1])],
)  # fmt: skip
def test_each_setting_is_validated_once_in_one_line(name, value):
    with pytest.raises(OptionError) as info:
        Settings(**{name: value})
    assert name in one_line(info.value)


def test_an_unknown_method_is_refused_in_one_line_before_the_model_is_read(tmp_path):
    """Settings take any method name; a run checks it against the registered solvers first."""
    from onnxinv import invert, sweep

    missing = tmp_path / "no-such-model.onnx"
    for run in (
        lambda: invert(missing, {"class": 1, "confidence": 0.9}, method="sideways"),
        lambda: sweep([str(missing)], out=tmp_path / "sweep", method="sideways"),
    ):
        with pytest.raises(OptionError) as info:
            run()
        line = one_line(info.value)
        assert "'sideways'" in line and "backward" in line and "no-such-model" not in line


def test_an_earlier_option_name_is_still_accepted():
    assert Settings.create(std=0.3).null_scale == 0.3
    with pytest.raises(OptionError, match="earlier name"):
        Settings.create(std=0.3, null_scale=0.2)
    with pytest.raises(OptionError, match="null_scale"):
        Settings.create(std=-1.0)


def test_settings_are_frozen_normalised_and_overridable():
    s = Settings(bounds="0, 1", input_shape="1x3x4", samples=np.int64(3))
    assert s.bounds == (0.0, 1.0) and s.input_shape == (1, 3, 4) and s.samples == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.samples = 4  # type: ignore[misc]
    t = s.replace(samples=5)
    assert t.samples == 5 and t.bounds == (0.0, 1.0) and s.samples == 3
    with pytest.raises(OptionError, match="samples"):
        s.replace(samples=-1)


def test_api_settings_object_and_keywords_combine():
    p = reachable_distribution(MODEL, "probabilities", seed=1, lo=-1, hi=1)
    base = Settings(samples=3, method="forward", seed=4)
    a = invert(MODEL, {"distribution": p}, base)
    b = invert(MODEL, {"distribution": p}, base, samples=5)
    assert len(a) == 3 and len(b) == 5
    assert a.settings["method"] == "forward" and b.settings["seed"] == 4
    np.testing.assert_array_equal(a.inputs, invert(MODEL, {"distribution": p}, base).inputs)


# ------------------------------------------------------------------------------- rule contract


class SinhRule(PointRule):
    """Sinh, written as a bare PointRule (not an ElementwiseRule): a kind the planner never saw."""

    op_type = "Sinh"
    versions = (9,)
    asked = 0

    def forward(self, x):
        return np.sinh(x)

    def forward_interval(self, lo, hi):
        return np.sinh(lo), np.sinh(hi)

    def preimage(self, y):
        return Family.point(np.arcsinh(np.asarray(y, dtype=np.float64)))

    def smooth_inverse(self):
        type(self).asked += 1
        return np.arcsinh


class GroupSoftmax(PointRule):
    """Softmax written from scratch: declares top_only and its free direction itself."""

    op_type = "Softmax"
    versions = (13,)
    top_only = True

    def forward(self, x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def output_domain(self):
        return Interval(0.0, 1.0, open=False)

    def free_directions(self):
        k = self.ctx.input_size
        return np.full((k, 1), 1 / np.sqrt(k))

    def preimage(self, y):
        self.check_domain(y)
        return Family(np.log(np.maximum(y, 1e-300)), self.free_directions())


@pytest.fixture
def registry():
    reg = load_plugins(Registry())
    reg.register(SinhRule, source="test")
    reg.register(GroupSoftmax, override=True, source="test")
    return reg


def _sinh_model(softmax_inside: bool = False):
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (6, 6)) + np.eye(6)
    w2 = rng.normal(0, 0.5, (6, 3))
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["z"]),
             helper.make_node("Sinh", ["z"], ["h"])]  # fmt: skip
    last = "h"
    if softmax_inside:
        nodes.append(helper.make_node("Softmax", [last], ["s"], axis=-1))
        last = "s"
    nodes += [helper.make_node("Gemm", [last, "W2", "b2"], ["logits"]),
              helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)]  # fmt: skip
    inits = [const("W1", w1), const("b1", np.zeros(6)), const("W2", w2), const("b2", np.zeros(3))]
    return make_model(
        nodes, [value_info("x", ["N", 6])], [value_info("probs", ["N", 3])], inits, opset=17
    )


def test_rules_of_new_kinds_are_used_through_what_they_declare(registry):
    model = _sinh_model()
    p = reachable_distribution(model, "probabilities", seed=3, lo=0.2, hi=0.8)
    SinhRule.asked = 0
    result = invert(
        model, {"distribution": p}, method="backward", samples=8, bounds=(0, 1),
        registry=registry,
    )  # fmt: skip
    assert SinhRule.asked > 0  # the joint choice came from smooth_inverse(), not a class check
    assert set(result.methods) == {"backward"}  # no LM: every step was a rule
    assert_solved(model, result, np.array(p), "probabilities", bounds=(0, 1), n=8)
    assert len(np.unique(result.inputs.round(4), axis=0)) == 8
    plan = "\n".join(result.model["plan"])
    assert "Sinh" in plan and "opaque" not in plan


def test_top_only_is_asked_of_the_rule(registry):
    model = _sinh_model(softmax_inside=True)
    p = reachable_distribution(model, "probabilities", seed=3, lo=0.2, hi=0.8)
    result = invert(model, {"distribution": p}, method="auto", samples=4, registry=registry)
    plan = "\n".join(result.model["plan"])
    assert "Softmax inside the graph is solved numerically" in plan
    assert_solved(model, result, np.array(p), "probabilities", n=4)


def test_duplicate_rows_on_samples_that_sit_on_the_bounds():
    """Most coordinates on a bound (a real digit's zeros): repeats still found, no others."""
    from onnxinv.api import _finite_stats, _grid_axes, duplicate_rows

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3000, 64))
    x[rng.random(x.shape) < 0.7] = 0.0  # 70% of each column on the lower bound
    x[:, :8] = np.where(rng.random((3000, 8)) < 0.95, 1.0, x[:, :8])  # and some nearly all on 1
    x[2999] = x[10] + 2e-4
    x[1500] = x[7]
    assert np.flatnonzero(duplicate_rows(x)).tolist() == [1500, 2999]
    axes = _grid_axes(x, _finite_stats(x)[1], 1e-3)
    assert (axes >= 8).all()  # the columns almost all on a bound separate nothing: not chosen


def test_duplicate_rows_finds_repeats_within_the_tolerance_only():
    from onnxinv.api import duplicate_rows

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5000, 16))
    x[5] = x[3] + 1e-5  # a repeat (within 1e-3)
    x[4000] = x[17]  # an exact one
    x[100] = x[50]
    x[100, 0] += 2e-3  # close, but not a repeat
    assert np.flatnonzero(duplicate_rows(x)).tolist() == [5, 4000]
    blocks = np.repeat(rng.normal(size=(3, 4)), 4, axis=0)
    assert duplicate_rows(blocks).tolist() == [False, True, True, True] * 3
    assert duplicate_rows(np.array([[1.0], [1.0005], [2.0]])).tolist() == [False, True, False]
