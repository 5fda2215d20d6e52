"""Tasks for the sweep tests' worker processes, importable there without torch (unlike the test
module, whose helpers load it): a spawned worker imports the module of the task it runs."""

from __future__ import annotations

import os


def echo(pair, model=None, on_progress=None):
    """A stand-in for ``run_pair``: no solving, just which pair ran in which process."""
    return (pair.cls, os.getpid())


def _first_time(pair, what: str) -> bool:
    marker = os.path.join(os.environ["SWEEP_TEST_MARKERS"], f"{what}-{pair.cls}")
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def crash_once(pair, model=None, on_progress=None):
    """Class 1 kills its worker process on its first attempt (the pool breaks)."""
    if pair.cls == 1 and _first_time(pair, "crashed"):
        os._exit(3)
    return echo(pair)


def raise_once(pair, model=None, on_progress=None):
    """Class 2 raises on its first attempt; class 3 on every attempt."""
    if pair.cls == 3 or pair.cls == 2 and _first_time(pair, "raised"):
        raise RuntimeError(f"class {pair.cls} fails")
    return echo(pair)
