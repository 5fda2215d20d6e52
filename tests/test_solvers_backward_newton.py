"""The Newton chain solver (``onnxinv.solvers.backward.newton``): its choices depend on the seed.

Each run tries the two box strategies on a few samples and gives the rest of the batch to the
one that reached more per unit of work. That work is counted (multiply-adds), not timed: a
machine busy with something else must not change which samples come out.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import MODELS, ort_outputs

from onnxinv import invert
from onnxinv.solvers.backward import newton
from onnxinv.solvers.backward.newton import ChainSolver

MODEL = MODELS / "digits_2layer.onnx"


def real_target(index: int) -> list[float]:
    x = np.load(MODELS / "digits_val.npz")["x"][index : index + 1]
    p = ort_outputs(MODEL, x)[0].astype(np.float64)
    return (p / p.sum()).tolist()


def run(index: int, seed: int) -> np.ndarray:
    result = invert(MODEL, {"distribution": real_target(index)}, method="backward",
                    samples=64, bounds=(0, 1), seed=seed)  # fmt: skip
    assert result.n_verified == 64
    return result.inputs


@pytest.mark.parametrize("index", [5, 17])
def test_a_slow_machine_gets_the_same_samples(monkeypatch, index):
    """The first strategy tried is slowed down (as a busy machine or a first call's set-up
    would): the samples stay the same bit for bit, and the choice is the same."""
    calm = run(index, seed=3)
    chosen = []
    original_solve = ChainSolver.solve

    def solve(self, fam, rng):
        out = original_solve(self, fam, rng)
        chosen.append(self.preferred())
        return out

    forward = ChainSolver.forward
    calls = {"n": 0}

    def slow_forward(self, x):
        calls["n"] += 1
        if calls["n"] <= 8:
            time.sleep(0.005)
        return forward(self, x)

    box_step = newton.box_step

    def slow_box_step(*args):
        time.sleep(0.005)
        return box_step(*args)

    monkeypatch.setattr(ChainSolver, "solve", solve)
    busy = run(index, seed=3)
    monkeypatch.setattr(ChainSolver, "forward", slow_forward)
    first_slowed = run(index, seed=3)  # (affine scaling is tried first)
    monkeypatch.setattr(ChainSolver, "forward", forward)
    monkeypatch.setattr(newton, "box_step", slow_box_step)
    projection_slowed = run(index, seed=3)  # (only the active set projects its steps)
    assert calls["n"] > 8
    assert chosen[0] is not None and chosen.count(chosen[0]) == 3
    for other in (busy, first_slowed, projection_slowed):
        assert np.array_equal(calm, other)


def test_work_counts_what_an_attempt_does():
    """Counted work grows with the samples and the iterations an attempt needs."""
    solver = ChainSolver([], [], 4, (0, 1), None)
    assert solver.preferred() is None
    solver.record_trial(True, 16, 16, 1e6)
    solver.record_trial(False, 16, 16, 4e6)
    assert solver.preferred() is True  # the same samples for a quarter of the work
    solver.record_trial(True, 0, 16, 1e7)
    assert solver.preferred() is False


def test_the_module_keeps_no_clock_in_its_choices():
    """Time enters the chain solver only as the run's deadline."""
    import inspect

    source = inspect.getsource(newton)
    assert "perf_counter" not in source and "process_time" not in source
