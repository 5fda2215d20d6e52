"""auto's route. A small run (fewer than ``PILOTS`` chunks): the backward route on all of it
under a time cap, the forward pass solving what a cut left. A large run: the backward route
piloted on a warm-up chunk and a timed chunk, the forward pass timed against it when that is
worth it, and the faster route solving the rest. A plan whose first LM starts at the model's
input sends the run to the forward pass at once.

The core assertion stays onnxruntime's: whichever route each sample took, every returned input
gives the target (:func:`helpers.assert_solved`). Which route is faster is made unambiguous by
slowing one down (a sleep per sample); the calls each solver receives show the run's shape.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import MODELS, assert_solved, reachable_distribution

from onnxinv import invert
from onnxinv.errors import ConversionError, MemoryBudgetError
from onnxinv.solvers import auto as auto_mod
from onnxinv.solvers.auto import AutoSolver
from onnxinv.solvers.backward.plan import BackwardPass
from onnxinv.solvers.backward.solver import BackwardSolver
from onnxinv.solvers.base import SolverOutcome
from onnxinv.solvers.forward.solver import ForwardSolver

MODEL = MODELS / "digits_2layer.onnx"
BOUNDS = (0.0, 1.0)
SLOW = 0.1  # seconds a sample: a slowed route verifies at most 10 samples a second

#: (samples, chunk size, the backward pilot's calls): a large run (at least PILOTS chunks)
#: pilots on a warm-up chunk, then a timed one.
LARGE = pytest.param(auto_mod.PILOTS * 8 + 5, 8, [8, 8], id="large")


@pytest.fixture(scope="module", autouse=True)
def warm():
    """One forward inversion first: imports onnx2torch and torch's forward-mode machinery
    (seconds, once per process), so no test's timed pilot pays for them."""
    target = reachable_distribution(MODEL, "probabilities", seed=5)
    invert(MODEL, {"distribution": target}, samples=1, bounds=BOUNDS, seed=0, method="forward")


@pytest.fixture(scope="module")
def target() -> np.ndarray:
    return np.array(reachable_distribution(MODEL, "probabilities", seed=2))


def run(target, k: int, chunk: int = 256):
    result = invert(MODEL, {"distribution": target.tolist()}, samples=k, bounds=BOUNDS, seed=0,
                    chunk_size=chunk)  # fmt: skip
    assert_solved(MODEL, result, target, "probabilities", bounds=BOUNDS, n=k)
    return result


def spy(monkeypatch, cls, name: str = "solve", seconds_per_sample: float = 0.0) -> list:
    """Record the sample counts ``cls.<name>`` is called with, sleeping per sample first."""
    calls: list[int] = []
    original = getattr(cls, name)

    def wrapper(self, k, rng, *args, **kwargs):
        calls.append(k)
        time.sleep(seconds_per_sample * k)
        return original(self, k, rng, *args, **kwargs)

    monkeypatch.setattr(cls, name, wrapper)
    return calls


def note_with(result, text: str) -> list[str]:
    return [note for note in result.notes if text in note]


# -------------------------------------------------------------------- a fast backward route


@pytest.mark.parametrize(
    ("k", "chunk", "backward"),
    [
        pytest.param(8, 256, [8], id="k=8"),  # a small run: all of it, at once
        pytest.param(auto_mod.PILOTS * 32 + 37, 32, [32, 32, 229], id="large"),
    ],
)
def test_a_fast_backward_route_solves_everything_without_the_forward(
    monkeypatch, target, k, chunk, backward
):
    backward_calls = spy(monkeypatch, BackwardSolver)
    forward_calls = spy(monkeypatch, ForwardSolver)
    prepared = spy(monkeypatch, ForwardSolver, "prepare")
    result = run(target, k, chunk)
    assert backward_calls == backward
    assert forward_calls == [] and prepared == []
    assert set(result.methods) == {"backward"}
    assert result.model["jacobians"] == "none"  # the model was never converted
    assert not note_with(result, "timed both routes")


# ---------------------------------------------------------------- a slow backward route


@pytest.mark.parametrize("k", [8, 12])
def test_a_small_run_cut_at_its_cap_leaves_what_the_backward_route_left_to_the_forward(
    monkeypatch, target, k
):
    """A backward pass that sleeps 0.1 s a sample runs far past the cap (0.3 s here): it is
    called once, on the whole run, and leaves every sample unverified; the forward pass solves
    them (its last call), with a note, and nothing is piloted."""
    monkeypatch.setattr(auto_mod, "PILOT_CAP", 0.3)
    monkeypatch.setattr(auto_mod, "PILOT_MODEL_RUNS", 0)
    backward_calls = spy(monkeypatch, BackwardSolver, seconds_per_sample=SLOW)
    forward_calls = spy(monkeypatch, ForwardSolver)
    result = run(target, k)
    assert backward_calls == [k]
    assert forward_calls[-1] == k  # (after the route's own polish, cut short)
    assert set(result.methods) == {"forward"}
    text = f"auto cut the backward route at its time cap with {k} of {k} samples unverified"
    assert len(note_with(result, text)) == 1
    assert not note_with(result, "timed both routes")


def test_a_small_run_within_its_cap_is_not_cut(monkeypatch, target):
    """The same slowed backward pass (0.8 s on 8 samples) under the default cap (3 s at
    least): it verifies the whole run alone."""
    backward_calls = spy(monkeypatch, BackwardSolver, seconds_per_sample=SLOW)
    forward_calls = spy(monkeypatch, ForwardSolver)
    result = run(target, 8)
    assert backward_calls == [8] and forward_calls == []
    assert set(result.methods) == {"backward"}
    assert not note_with(result, "auto cut")


@pytest.mark.parametrize(("k", "chunk", "pilot_calls"), [LARGE])
def test_a_slow_backward_route_hands_the_rest_to_the_forward_pass(
    monkeypatch, target, k, chunk, pilot_calls
):
    """Ten samples a second at best: the rest would take the backward route over SWITCH_WORTH
    seconds, so the forward pass is timed on as many samples, wins, and solves the rest. The
    backward pilot's verified samples are kept, first."""
    backward_calls = spy(monkeypatch, BackwardSolver, seconds_per_sample=SLOW)
    forward_calls = spy(monkeypatch, ForwardSolver)
    result = run(target, k, chunk)
    pilot = pilot_calls[-1]
    kept = sum(pilot_calls)
    assert backward_calls == pilot_calls  # the pilot only
    assert forward_calls == [pilot, k - kept - pilot]  # its own pilot, then the rest
    paths = np.array(result.methods)
    assert (paths[:kept] == "backward").all()
    assert (paths[kept:] == "forward").all()
    assert len(note_with(result, "by the forward route")) == 1


def test_the_forward_pilot_is_timed_without_the_one_time_conversion(monkeypatch, target):
    """A conversion that takes 1 s (as a first one does, with its imports): the forward pass
    then verifies its 2 pilot samples in a fraction of the 0.2 s the backward pilot took (on its
    timed chunk of a large run), so it should solve the rest."""
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)
    spy(monkeypatch, BackwardSolver, seconds_per_sample=SLOW)
    original = ForwardSolver.prepare
    converted: list[bool] = []

    def slow_conversion(self):
        if not converted:
            time.sleep(1.0)
        converted.append(True)
        original(self)

    monkeypatch.setattr(ForwardSolver, "prepare", slow_conversion)
    result = run(target, auto_mod.PILOTS * 2, chunk=2)
    assert len(note_with(result, "by the forward route")) == 1


# ---------------------------------------------------------------- a slow forward pilot


def test_a_slow_forward_pass_is_never_called_on_a_small_run(monkeypatch, target):
    """A small run the backward route verifies within its cap is not piloted: the forward
    pass (slowed to 0.1 s a sample) is never called, however cheap SWITCH_WORTH makes it."""
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)
    backward_calls = spy(monkeypatch, BackwardSolver)
    forward_calls = spy(monkeypatch, ForwardSolver, seconds_per_sample=SLOW)
    result = run(target, 64)
    assert backward_calls == [64] and forward_calls == []
    assert set(result.methods) == {"backward"}
    assert not note_with(result, "timed both routes") and not note_with(result, "auto cut")


@pytest.mark.parametrize(("k", "chunk", "pilot_calls"), [LARGE])
def test_a_slow_forward_pilot_keeps_the_backward_route(monkeypatch, target, k, chunk, pilot_calls):
    """The forward pilot may take no longer than the backward pilot did (which verified all
    of its samples): cut there, it verifies nothing, the backward route solves the rest,
    including the forward pilot's samples again."""
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)  # always time the forward pass
    backward_calls = spy(monkeypatch, BackwardSolver)
    forward_calls = spy(monkeypatch, ForwardSolver, seconds_per_sample=SLOW)
    result = run(target, k, chunk)
    pilot = pilot_calls[-1]
    assert forward_calls == [pilot]
    assert backward_calls == [*pilot_calls, k - sum(pilot_calls)]
    assert set(result.methods) == {"backward"}
    assert len(note_with(result, "by the backward route")) == 1


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(("prepare", ConversionError("Foo has no converter")), id="conversion"),
        pytest.param(
            ("solve", MemoryBudgetError("one sample's Jacobian needs 9 GiB")), id="memory"
        ),
    ],
)
def test_a_forward_pass_that_cannot_run_leaves_the_backward_route(monkeypatch, target, failure):
    name, error = failure
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(ForwardSolver, name, fail)
    backward_calls = spy(monkeypatch, BackwardSolver)
    result = run(target, 64, chunk=8)  # a large run: its pilot times the forward pass
    assert backward_calls == [8, 8, 48]
    assert set(result.methods) == {"backward"}
    assert note_with(result, f"auto kept the backward route: the forward pass {error}")
    assert not note_with(result, "timed both routes")


# ---------------------------------------------------------- a backward route that reaches nothing


def test_a_backward_route_that_verifies_nothing_leaves_everything_to_the_forward(
    monkeypatch, target
):
    """Every backward route's samples are spoiled (random points of the box) on a large run:
    the forward pilot verifies its samples, and the forward pass solves all the others."""
    route_calls: list[int] = []
    original = AutoSolver._backward_route

    def spoiled(self, k, rng, on_progress):
        route_calls.append(k)
        out = original(self, k, rng, on_progress)
        out.x = rng.uniform(*BOUNDS, out.x.shape)
        out.verification = self.problem.verify(out.x)
        return out

    monkeypatch.setattr(AutoSolver, "_backward_route", spoiled)
    forward_calls = spy(monkeypatch, ForwardSolver)
    result = run(target, auto_mod.PILOTS * 2, chunk=2)
    assert route_calls == [2, 2]  # the pilot only (a warm-up chunk, a timed one)
    assert forward_calls == [2, 14]
    assert set(result.methods) == {"forward"}
    assert len(note_with(result, ": 0 verified/s backward")) == 1
    assert len(note_with(result, "by the forward route")) == 1


# ----------------------------------------------------------------------------- the pilot's cap


HANG = 3.0  # seconds a hanging backward pass would run


@pytest.mark.parametrize(
    ("k", "chunk", "pilots"),
    [
        pytest.param(16, 256, 1, id="small"),  # the whole run, once
        pytest.param(32, 4, 2, id="large"),
    ],
)
def test_the_backward_pilot_is_cut_at_its_cap(monkeypatch, target, k, chunk, pilots):
    """A backward pass that would run for 3 s stops when the cap (0.3 s here) brings the
    deadline forward; the deadline is restored after it, and the forward pass solves every
    sample (on a small run, as what the cut left; on a large one, as the faster route)."""
    monkeypatch.setattr(auto_mod, "PILOT_CAP", 0.3)
    monkeypatch.setattr(auto_mod, "PILOT_MODEL_RUNS", 1)
    stopped_after: list[float] = []

    def hanging(self, k, rng, x0=None, on_progress=None):
        start = time.monotonic()
        while not self.problem.expired() and time.monotonic() - start < HANG:
            time.sleep(0.01)
        stopped_after.append(time.monotonic() - start)
        return SolverOutcome.unsolved(rng.uniform(*BOUNDS, (k, self.problem.n)), "backward")

    monkeypatch.setattr(BackwardSolver, "solve", hanging)
    start = time.monotonic()
    result = run(target, k, chunk)
    assert len(stopped_after) == pilots
    assert all(0.2 < s < 1.5 for s in stopped_after), stopped_after
    assert time.monotonic() - start < HANG - 0.2
    assert set(result.methods) == {"forward"}
    text = "auto cut the backward route" if pilots == 1 else "by the forward route"
    assert len(note_with(result, text)) == 1


# ------------------------------------------------------ partly successful backward batches


@pytest.mark.parametrize(
    ("spoil", "chunk", "calls"),
    [
        pytest.param(3, 256, [20, 3], id="in-a-small-run"),  # 3 of the run's 20 samples
        pytest.param(1, 2, [2, 1, 2, 16], id="in-the-pilot"),  # 1 of the warm-up chunk's 2
        pytest.param(3, 2, [2, 2, 16, 3], id="in-the-rest"),  # 3 of the 16 of the rest
    ],
)
def test_what_a_partly_successful_backward_batch_left_gets_fresh_backward_draws(
    monkeypatch, target, spoil, chunk, calls
):
    """Samples the backward pass left unverified in a batch where it verified others are
    drawn again by the backward pass (its restarts ran out on those anchors), not handed to
    LM: the first batch larger than ``spoil`` loses ``spoil`` samples, the next draw solves
    them."""
    seen: list[int] = []
    original = BackwardSolver.solve

    def spoiled(self, k, rng, x0=None, on_progress=None):
        out = original(self, k, rng, x0=x0, on_progress=on_progress)
        seen.append(k)
        if k > spoil and not getattr(self, "spoilt", False):
            self.spoilt = True
            out.x[:spoil] = rng.uniform(*BOUNDS, out.x[:spoil].shape)
        return out

    monkeypatch.setattr(BackwardSolver, "solve", spoiled)
    forward_calls = spy(monkeypatch, ForwardSolver)
    result = run(target, 20, chunk)
    assert seen == calls
    assert forward_calls == []  # no LM polish, no forward starts, no forward pilot
    assert set(result.methods) == {"backward"}


# ------------------------------------------------------------ a plan whose LM starts at the input


def test_a_plan_whose_lm_starts_at_the_input_goes_straight_to_the_forward_pass(monkeypatch, target):
    monkeypatch.setattr(BackwardPass, "lm_from_input", property(lambda self: True))
    backward_calls = spy(monkeypatch, BackwardSolver)
    forward_calls = spy(monkeypatch, ForwardSolver)
    result = run(target, 8)
    assert backward_calls == []
    assert forward_calls == [8]
    assert set(result.methods) == {"forward"}
    assert len(note_with(result, "auto solved by the forward pass: the backward pass")) == 1
    assert not note_with(result, "timed both routes") and not note_with(result, "auto cut")


def test_the_bundled_model_has_a_chain_pass_so_its_lm_does_not_start_at_the_input(monkeypatch):
    """digits_2layer's plan runs a chain pass below its LM: auto keeps the backward route."""
    seen: list[tuple[bool, bool]] = []
    original = BackwardPass.lm_from_input.fget

    def recorded(self):
        seen.append((original(self), self._chain is not None))
        return seen[-1][0]

    monkeypatch.setattr(BackwardPass, "lm_from_input", property(recorded))
    target = np.array(reachable_distribution(MODEL, "probabilities", seed=3))
    result = run(target, 4)
    assert seen and set(seen) == {(False, True)}
    assert not note_with(result, "auto solved by the forward pass")
