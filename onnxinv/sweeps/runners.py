"""Running a sweep's tasks on this machine: in this process, or in a pool of processes.

* :func:`run_local` – the tasks in turn in this process (one worker), else :func:`run_pool`:
  spawned processes, each limited to its share of the cores (:func:`limit_threads`), a dead
  worker's pairs run again in a new pool;
* :class:`ProgressBar` – samples solved and pairs done, on stderr.

Both runners yield each pair with its result, or with its error once :data:`RETRIES` more
attempts failed too; the caller writes the shards.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from .task import Pair, ShardResult

RETRIES = 1  # extra attempts a failed task gets (Ray's max_retries, a re-submission locally)
Task = Callable[..., ShardResult]  # run_pair or a stand-in: (pair, model=None, on_progress=None)
Finished = Iterator[tuple[Pair, ShardResult | BaseException]]  # what the runners yield


class ProgressBar:
    """A tqdm bar over the samples of the pairs to run, with the pairs done beside it."""

    def __init__(self, pairs: list[Pair], samples: int):
        from tqdm import tqdm

        self.pairs, self.samples = len(pairs), samples
        self.done = 0
        self.counted: dict[int, int] = {}
        self.tqdm = tqdm(total=len(pairs) * samples, desc="sweep", unit="sample",
                         file=sys.stderr, leave=False)  # fmt: skip
        self.tqdm.set_postfix_str(f"0/{self.pairs} pairs")

    def samples_done(self, index: int, n: int) -> None:
        room = self.samples - self.counted.get(index, 0)
        n = min(n, room)
        if n > 0:
            self.counted[index] = self.counted.get(index, 0) + n
            self.tqdm.update(n)

    def finished(self, pair: Pair) -> None:
        self.samples_done(pair.index, self.samples)  # what was not reported (dropped, failed)
        self.done += 1
        self.tqdm.set_postfix_str(f"{self.done}/{self.pairs} pairs")

    def close(self) -> None:
        self.tqdm.close()


_EVENTS = None  # in a pool worker: the queue progress events go to
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """Torch, BLAS and onnxruntime in this process use at most ``threads`` threads.

    Torch is limited now if it is loaded, else through OMP_NUM_THREADS when it loads (not
    importing it here spares the workers that never need it its loading time).
    """
    from ..load import runtime

    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    runtime.INTRA_OP_THREADS = threads


def _init_worker(threads: int, events) -> None:
    global _EVENTS
    _EVENTS = events
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    limit_threads(threads)


def _pool_task(task: Task, pair: Pair) -> ShardResult:
    _EVENTS.put(("start", pair.index, 0))
    return task(pair, on_progress=lambda n: _EVENTS.put(("samples", pair.index, n)))


@contextlib.contextmanager
def _thread_env(threads: int):
    """BLAS/OpenMP thread counts for the worker processes started meanwhile (they read them
    when numpy loads, before any of our code runs there)."""
    before = {n: os.environ.get(n) for n in THREAD_VARIABLES}
    os.environ.update({n: str(threads) for n in THREAD_VARIABLES})
    try:
        yield
    finally:
        for n, v in before.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def run_local(pairs: list[Pair], task: Task, workers: int, bar: ProgressBar | None) -> Finished:
    """Run the tasks on this machine: in this process for one worker, else in a process pool
    (spawned, ``workers`` processes, ``cores // workers`` threads each). Yields each pair with
    its result, or with its error after the one retry."""
    if not pairs:
        return
    workers = min(workers, len(pairs))
    if workers == 1:
        for pair in pairs:
            on_progress = None if bar is None else lambda n, i=pair.index: bar.samples_done(i, n)
            for attempt in range(RETRIES + 1):
                try:
                    yield pair, task(pair, on_progress=on_progress)
                    break
                except Exception as exc:
                    if attempt == RETRIES:
                        yield pair, exc
        return
    yield from run_pool(pairs, task, workers, bar)


def run_pool(pairs: list[Pair], task: Task, workers: int, bar: ProgressBar | None) -> Finished:
    """Run the tasks in ``workers`` spawned processes with ``cores // workers`` threads each.

    A task that raises is submitted once more. A worker that dies breaks the pool: the pairs
    it held run again in a new pool, those that had not started without being charged an
    attempt. ``task`` must be importable in a spawned process (a module-level function).
    """
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.SimpleQueue()  # synchronous puts: a "start" is sent before a worker can die
    failures: dict[int, int] = {}
    todo = list(pairs)
    with _thread_env(threads):
        while todo:  # one round per pool; a worker's death breaks the pool, the next takes over
            pool = ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=ctx,
                initializer=_init_worker, initargs=(threads, events),
            )  # fmt: skip
            try:
                futures = {pool.submit(_pool_task, task, p): p for p in todo}
                todo, started = [], set()
                while futures:
                    done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(events, started, bar)
                    for future in done:
                        pair = futures.pop(future)
                        exc = future.exception()
                        if exc is None:
                            yield pair, future.result()
                        elif isinstance(exc, BrokenProcessPool) and pair.index not in started:
                            todo.append(pair)  # had not started: not the one that broke it
                        elif failures.setdefault(pair.index, 0) >= RETRIES:
                            yield pair, exc
                        else:
                            failures[pair.index] += 1
                            if isinstance(exc, BrokenProcessPool):
                                todo.append(pair)
                            else:
                                try:
                                    futures[pool.submit(_pool_task, task, pair)] = pair
                                except BrokenProcessPool:
                                    todo.append(pair)
            except BaseException:  # an interrupt, or the caller stopped early: end the workers
                pool.shutdown(wait=False, cancel_futures=True)
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
                raise
            pool.shutdown()


def _drain(events, started: set[int], bar: ProgressBar | None) -> None:
    while not events.empty():
        kind, index, n = events.get()
        if kind == "start":
            started.add(index)
        elif bar is not None:
            bar.samples_done(index, n)
