"""Sweeps: every (model, class) pair inverted, on this machine's cores or a Ray cluster.

* :mod:`.run` – :func:`sweep`: plans the pairs, runs them, writes the folder;
* :mod:`.task` – one pair's task (:func:`run_pair`), run wherever the pair runs;
* :mod:`.summary` – one row per pair (:class:`SweepRow`, :class:`SweepSummary`);
* :mod:`.shards` – the sweep's folder: marker, shards, summary files, figure;
* :mod:`.runners` – this machine: in this process or a process pool, the progress bar;
* :mod:`.cluster` – a Ray cluster: connecting (by address, with its token), Ray tasks.
"""

from .run import sweep
from .summary import SweepRow, SweepSummary
from .task import Pair, ShardResult, run_pair

__all__ = ["Pair", "ShardResult", "SweepRow", "SweepSummary", "run_pair", "sweep"]
