"""The plan (``onnxinv.solvers.backward.plan.BackwardPass``): inverse rules through invertible blocks, LM on opaque ones.

* On fully invertible chains every sample comes out exact, with no LM, and onnxruntime confirms
  it on the original model.
* On Linear → Tanh → (residual add: opaque) → Linear → Softmax, LM runs on the opaque block and
  nowhere else; a sample flagged exact is verified.
* The Softmax's free direction (an additive constant on the logits) is used: through a square
  Linear layer the samples differ exactly along the pulled-back constant direction.
* The exact flag never claims what onnxruntime does not confirm, and an unreachable target is
  never flagged exact.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from solver_suites import Case, case, export_bytes, pairwise_gap, reachable
from torch import nn

from onnxinv.settings import Settings
from onnxinv.solvers.backward.plan import BackwardPass
from onnxinv.solvers.base import ModelProblem


class Residual(nn.Module):
    """``h + tanh(W h + b)``: a residual sum, which no inverse rule covers (an opaque block)."""

    def __init__(self, d: int):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, h):
        return h + torch.tanh(self.lin(h))


def mixed_case(bounds) -> Case:
    """Linear(8, 6) → Tanh → residual add → Linear(6, 3) → Softmax, a reachable distribution."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), Residual(6), nn.Linear(6, 3), nn.Softmax(-1))
    m.eval()
    p = reachable(m, 8, seed=3, bounds=bounds)
    settings = Settings(samples=6, seed=0, bounds=bounds)
    target = {"distribution": (p / p.sum()).tolist()}
    return Case("mixed", m, export_bytes(m, 8), target, "probabilities", settings)


@pytest.fixture
def lm_calls(monkeypatch):
    """Every (source, destination) tensor pair the plan runs LM between."""
    calls: list[tuple[str, str]] = []
    solve = BackwardPass._solve

    def spy(self, src, dst, fam, rng, exact, iterations):
        calls.append((src, dst))
        return solve(self, src, dst, fam, rng, exact, iterations)

    monkeypatch.setattr(BackwardPass, "_solve", spy)
    return calls


def run(c: Case, b: int, seed: int = 0, problem: ModelProblem | None = None):
    problem = problem or c.model_problem()
    plan = BackwardPass(problem)
    return problem, plan, plan.run(b, np.random.default_rng(seed))


@pytest.mark.parametrize("name", ["plain", "bounded", "underdetermined"])
def test_fully_invertible_chain_is_exact_without_lm(name, lm_calls):
    c = case(name)
    problem, plan, out = run(c, 6)
    assert problem.partition.fully_invertible
    assert out.x.shape == (6, c.n_in)
    assert out.solved.all()
    assert not plan.used_lm and lm_calls == []
    assert problem.verify(out.x).verified.all()
    assert (c.ort_errors(out.x) <= c.tolerance).all()
    if c.bounds is not None:
        assert out.x.min() >= c.bounds[0] and out.x.max() <= c.bounds[1]
    assert pairwise_gap(out.x) > 1e-3


@pytest.mark.parametrize("bounds", [None, (-1.0, 1.0)], ids=["unbounded", "bounded"])
def test_lm_runs_only_on_the_opaque_block(bounds, lm_calls):
    c = mixed_case(bounds)
    problem, plan, out = run(c, 6)
    kinds = [b.kind for b in problem.partition.blocks]
    assert kinds == ["invertible", "opaque", "invertible"]
    opaque = problem.partition.blocks[1]
    assert plan.used_lm
    assert set(lm_calls) == {(opaque.input, opaque.output)}
    errors = c.ort_errors(out.x)
    verified = problem.verify(out.x).verified
    assert verified[out.solved].all() and (errors[out.solved] <= c.tolerance).all()
    if bounds is None:  # nothing stands in the way: every sample exact
        assert out.solved.all()
    else:  # the box may leave some to the polish; most come out exact
        assert out.solved.sum() >= 3
        assert out.x.min() >= -1 and out.x.max() <= 1
    assert pairwise_gap(out.x[out.solved]) > 1e-3


class Token(nn.Module):
    """A ViT's front in miniature: a learned patch map beside a constant class token, plus a
    position embedding (an invertible Add between two opaque blocks)."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(4, 4)
        self.token = nn.Parameter(torch.randn(1, 2))
        self.pos = nn.Parameter(torch.randn(1, 6))

    def forward(self, x):
        h = torch.tanh(self.patch(x)) * x  # no inverse rule: opaque
        return torch.cat([self.token + 0 * x[:, :2], h], 1) + self.pos  # batch-free export


def token_case() -> Case:
    torch.manual_seed(1)
    m = nn.Sequential(Token(), Residual(6), nn.Linear(6, 3), nn.Softmax(-1)).eval()
    p = reachable(m, 4, seed=2, bounds=(-1.0, 1.0))
    settings = Settings(samples=6, seed=0, bounds=(-1.0, 1.0))
    target = {"distribution": (p / p.sum()).tolist()}
    return Case("token", m, export_bytes(m, 4), target, "probabilities", settings)


def test_lm_below_an_opaque_block_runs_from_the_input(lm_calls):
    """Values LM could find for the upper opaque block alone include a class token the lower
    block never outputs: the plan solves from the model's input up to the exact tail at once."""
    c = token_case()
    problem, plan, out = run(c, 6)
    kinds = [b.kind for b in problem.partition.blocks]
    assert kinds.count("opaque") == 2, kinds
    top = [b for b in problem.partition.blocks if b.kind == "opaque"][-1]
    assert lm_calls == [(problem.partition.input, top.output)]
    assert out.solved.sum() >= 5
    assert (c.ort_errors(out.x[out.solved]) <= c.tolerance).all()
    assert out.x.min() >= -1 and out.x.max() <= 1
    assert (out.iterations > 0).all()


def test_a_chain_with_an_expanding_layer_needs_no_lm(lm_calls):
    """2 inputs -> 5 hidden: the layer-by-layer pullback cannot be exact there, but the chain's
    joint choice (the input determines every layer) solves it exactly, with no LM."""
    c = case("overdetermined")
    problem, plan, out = run(c, 4)
    assert problem.partition.fully_invertible
    assert not plan.used_lm and lm_calls == []
    assert out.solved.all() and problem.verify(out.x).verified.all()


def square_softmax() -> tuple[Case, np.ndarray]:
    """Softmax(W x + b) with W square, and the unit direction W⁻¹ 1 its preimages move along."""
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1)).eval()
    p = reachable(m, 3, seed=7)
    c = Case(
        "softmax",
        m,
        export_bytes(m, 3),
        {"distribution": (p / p.sum()).tolist()},
        "probabilities",
        Settings(samples=6),
    )
    d = np.linalg.solve(m[0].weight.detach().double().numpy(), np.ones(3))
    return c, d / np.linalg.norm(d)


def test_softmax_free_direction_is_used():
    """The preimage of a distribution is the line x0 + t · W⁻¹ 1 (a logit constant)."""
    c, d = square_softmax()
    problem, plan, out = run(c, 6)
    assert out.solved.all() and not plan.used_lm
    assert problem.verify(out.x).verified.all()
    assert (c.ort_errors(out.x) <= c.tolerance).all()
    diffs = out.x[:, None] - out.x[None]
    norms = np.linalg.norm(diffs, axis=-1)
    assert norms.max() > 1e-2  # the samples differ...
    far = norms > 1e-9
    along = np.abs(diffs @ d)[far] / norms[far]
    np.testing.assert_allclose(along, 1.0, atol=1e-6)  # ...only along the free direction


def test_one_free_direction_gives_as_many_samples_as_asked():
    c, _ = square_softmax()
    _, _, out = run(c, 6)
    assert pairwise_gap(out.x) > 1e-3


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "bounded",
        "underdetermined",
        "overdetermined",
        "unreachable-sigmoid",
        "unreachable-box",
    ],
)
def test_exact_flag_is_never_optimistic(name):
    c = case(name)
    problem, _, out = run(c, 5, seed=3)
    verified = problem.verify(out.x).verified
    assert verified[out.solved].all()
    assert (c.ort_errors(out.x)[out.solved] <= c.tolerance).all()
    if name.startswith("unreachable"):
        assert not out.solved.any() and not verified.any()


def test_same_rng_same_samples_other_rng_other_samples():
    c = mixed_case(None)
    problem = c.model_problem()
    plan = BackwardPass(problem)
    a = plan.run(3, np.random.default_rng(1)).x
    b = plan.run(3, np.random.default_rng(1)).x
    other = plan.run(3, np.random.default_rng(2)).x
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - other).max() > 1e-3


def test_past_deadline_returns_random_inputs_flagged_inexact(lm_calls):
    c = mixed_case((-1.0, 1.0))
    problem = ModelProblem(
        c.settings, c.loaded, c.objective, deadline=time.monotonic() - 1, max_memory=None
    )
    _, plan, out = run(c, 4, problem=problem)
    assert not out.solved.any()
    assert lm_calls == [] and not plan.used_lm
    assert out.x.shape == (4, 8) and out.x.min() >= -1 and out.x.max() <= 1


@pytest.mark.parametrize("n_in, from_input", [(4, True), (8, False)])
def test_lm_starts_at_the_input_above_a_chain_that_cannot_be_onto(n_in, from_input, lm_calls):
    """Linear(n_in, 6) → residual add → Linear(6, 3) → Softmax. With 4 inputs the chain's 6
    outputs span a 4-dimensional subspace, so LM on the residual block alone would aim at
    values no input reaches (a ViT's patch embedding beside its class token): the plan is the
    forward pass, LM from the model's input. With 8 inputs the chain pulls LM's point back."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(n_in, 6), Residual(6), nn.Linear(6, 3), nn.Softmax(-1)).eval()
    p = reachable(m, n_in, seed=2, bounds=(-1.0, 1.0))
    c = Case("onto" if n_in == 8 else "expanding", m, export_bytes(m, n_in),
             {"distribution": (p / p.sum()).tolist()}, "probabilities",
             Settings(samples=4, seed=0, bounds=(-1.0, 1.0)))  # fmt: skip
    problem, plan, out = run(c, 4)
    assert plan.lm_from_input is from_input
    assert [src == problem.partition.input for src, _ in lm_calls] == [from_input]
    check = problem.verify(out.x)
    assert check.verified[out.solved].all()  # (the plan alone; auto polishes what it leaves)
    assert check.verified.all() or not from_input, check.errors
