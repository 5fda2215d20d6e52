"""The solver interface and its registry, from a newcomer's side: a solver defined here (one
class) plus one registration line runs through the API and the CLI, with no other edit, and its
samples are verified by onnxruntime; plugins arrive through the entry point."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import (
    assert_solved,
    dense,
    one_line,
    ort_errors,
    reachable_distribution,
)

from onnxinv import invert, plugins
from onnxinv.cli import main
from onnxinv.errors import OptionError
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
