"""auto on large runs: both routes timed on a pilot, the faster one solves the rest.

The core assertion stays onnxruntime's: whichever route each sample took, every returned input
gives the target. Which route is faster is made unambiguous by slowing one of them down.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import MODELS, assert_solved, reachable_distribution

from onnxinv import invert
from onnxinv.solvers import auto as auto_mod
from onnxinv.solvers.backward.solver import BackwardSolver
from onnxinv.solvers.forward.solver import ForwardSolver

MODEL = MODELS / "digits_2layer.onnx"
CHUNK = 32  # the pilot is one chunk
N = auto_mod.PILOTS * CHUNK + 37  # enough for a pilot, and not a multiple of a chunk


def _slowed(monkeypatch, cls, seconds_per_sample: float) -> list[int]:
    """Make ``cls.solve`` sleep per sample; returns the list of batch sizes it was called with."""
    calls: list[int] = []
    original = cls.solve

    def slow(self, k, rng, x0=None, on_progress=None):
        calls.append(k)
        time.sleep(seconds_per_sample * k)
        return original(self, k, rng, x0=x0, on_progress=on_progress)

    monkeypatch.setattr(cls, "solve", slow)
    return calls


@pytest.fixture
def target():
    return np.array(reachable_distribution(MODEL, "probabilities", seed=2))


def test_a_fast_backward_route_solves_everything_without_timing_the_forward(target):
    result = invert(MODEL, {"distribution": target.tolist()}, samples=N, bounds=(0, 1), seed=0,
                    chunk_size=CHUNK)  # fmt: skip
    assert_solved(MODEL, result, target, "probabilities", bounds=(0, 1), n=N)
    assert set(result.methods) == {"backward"}
    assert result.model["jacobians"] == "none"  # the forward pass was never converted
    assert not any("timed both routes" in note for note in result.notes)


def test_a_slow_backward_route_hands_the_rest_to_the_forward_pass(monkeypatch, target):
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)  # always worth timing the forward
    # (20 ms a sample: slower than the forward pass even when other jobs slow that down)
    backward_calls = _slowed(monkeypatch, BackwardSolver, 2e-2)
    result = invert(MODEL, {"distribution": target.tolist()}, samples=N, bounds=(0, 1), seed=0,
                    chunk_size=CHUNK)  # fmt: skip
    assert_solved(MODEL, result, target, "probabilities", bounds=(0, 1), n=N)
    assert backward_calls == [CHUNK, CHUNK]  # the pilot only (warm-up and timed)
    paths = np.array(result.methods)
    assert (paths[: 2 * CHUNK] == "backward").all()
    assert (paths[2 * CHUNK :] == "forward").all()
    assert any("by the forward route" in note for note in result.notes)


def test_a_slow_forward_pilot_keeps_the_backward_route(monkeypatch, target):
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)
    forward_calls = _slowed(monkeypatch, ForwardSolver, 5e-3)
    result = invert(MODEL, {"distribution": target.tolist()}, samples=N, bounds=(0, 1), seed=0,
                    chunk_size=CHUNK)  # fmt: skip
    assert_solved(MODEL, result, target, "probabilities", bounds=(0, 1), n=N)
    assert forward_calls == [CHUNK, CHUNK]
    paths = np.array(result.methods)
    assert (paths[2 * CHUNK : 4 * CHUNK] == "forward").all()
    assert (np.delete(paths, np.s_[2 * CHUNK : 4 * CHUNK]) == "backward").all()
    assert any("by the backward route" in note for note in result.notes)


def test_small_runs_take_the_backward_route_without_a_pilot(monkeypatch, target):
    monkeypatch.setattr(auto_mod, "SWITCH_WORTH", 0.0)
    forward_calls = _slowed(monkeypatch, ForwardSolver, 0.0)
    n = auto_mod.PILOTS * CHUNK - 1
    result = invert(MODEL, {"distribution": target.tolist()}, samples=n, bounds=(0, 1), seed=0,
                    chunk_size=CHUNK)  # fmt: skip
    assert_solved(MODEL, result, target, "probabilities", bounds=(0, 1), n=n)
    assert forward_calls == []


def test_what_a_partly_successful_backward_batch_left_gets_fresh_backward_draws(
    monkeypatch, target
):
    """Samples the backward pass left unverified in a batch where it verified others are
    drawn again by the backward pass (its restarts ran out on those anchors), not handed to
    LM: here its first batch spoils 3 samples, and the second draw solves them."""
    calls: list[int] = []
    original = BackwardSolver.solve

    def spoiled(self, k, rng, x0=None, on_progress=None):
        out = original(self, k, rng, x0=x0, on_progress=on_progress)
        calls.append(k)
        if len(calls) == 1:
            out.x[:3] = rng.uniform(0, 1, out.x[:3].shape)
        return out

    monkeypatch.setattr(BackwardSolver, "solve", spoiled)
    result = invert(MODEL, {"distribution": target.tolist()}, samples=20, bounds=(0, 1), seed=0)
    assert_solved(MODEL, result, target, "probabilities", bounds=(0, 1), n=20)
    assert calls[:2] == [20, 3]
    assert set(result.methods) == {"backward"}  # no LM polish, no forward starts
