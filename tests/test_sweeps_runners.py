"""Running a sweep's tasks on this machine (onnxinv/sweeps/runners.py): one more attempt for a
failed task, in this process and in a process pool (where a dead worker breaks the pool), and
the progress bar's counts. Stand-in tasks (sweep_tasks.py): no solving here."""

from __future__ import annotations

import os

import pytest
import sweep_tasks
from helpers import BUNDLED

from onnxinv import Settings
from onnxinv.sweeps import Pair
from onnxinv.sweeps.runners import RETRIES, ProgressBar, run_local, run_pool

M1 = str(BUNDLED[1])


def pairs(n: int = 4) -> list[Pair]:
    return [Pair(k, "m", M1, "", k, 0.9, 1e-4, Settings()) for k in range(n)]


@pytest.mark.parametrize("task", [sweep_tasks.crash_once, sweep_tasks.raise_once])
def test_process_pool_runs_a_failed_task_once_more(tmp_path, monkeypatch, task):
    """A worker that dies breaks the pool: the pairs it held run again in a new one (those that
    had not started are not charged an attempt); a task that raises is re-submitted once, and
    one that fails twice is reported, not raised."""
    monkeypatch.setenv("SWEEP_TEST_MARKERS", str(tmp_path))
    done = {p.cls: r for p, r in run_pool(pairs(), task, workers=2, bar=None)}
    assert sorted(done) == [0, 1, 2, 3]  # each pair once
    if task is sweep_tasks.crash_once:
        assert (tmp_path / "crashed-1").exists()
        assert all(done[k][0] == k for k in range(4))
    else:
        assert (tmp_path / "raised-2").exists()
        assert all(done[k][0] == k for k in range(3))
        assert isinstance(done[3], RuntimeError) and "class 3 fails" in str(done[3])
    assert {done[k][1] for k in range(3)} != {os.getpid()}  # in worker processes


def test_one_worker_runs_the_tasks_here_with_one_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_TEST_MARKERS", str(tmp_path))
    calls = []

    def counted(pair, model=None, on_progress=None):
        calls.append(pair.cls)
        return sweep_tasks.raise_once(pair, model, on_progress)

    done = list(run_local(pairs(), counted, workers=1, bar=None))
    assert [p.cls for p, _ in done] == [0, 1, 2, 3]  # in order
    assert [r for _, r in done[:3]] == [(k, os.getpid()) for k in range(3)]  # in this process
    assert isinstance(done[3][1], RuntimeError)
    assert calls == [0, 1, 2, 2, 3, 3] and RETRIES == 1  # one more attempt, not more


def test_progress_bar_counts_samples_and_pairs(capsys):
    bar = ProgressBar(pairs(2), samples=4)
    bar.samples_done(0, 3)
    bar.samples_done(0, 5)  # never more than a pair's samples
    assert bar.tqdm.n == 4
    bar.finished(pairs(2)[1])  # a pair that reported nothing: its samples counted as it ends
    assert (bar.tqdm.n, bar.done) == (8, 1)
    bar.close()
    assert "1/2 pairs" in capsys.readouterr().err
