"""A pool of spawn-started worker processes that attempt a study's runs, and what a worker knows of itself.

Each worker is limited to cores // processes torch threads; with devices, one process per listed
device (a device listed twice gets two), each seeing only its device (CUDA_VISIBLE_DEVICES). The pool
calls ``attempt(task)`` in a worker for every task; a pool broken by a dying worker is restarted and
the run that was in flight retried ``WORKER_DEATHS_ALLOWED`` times, then handed to ``worker_died``.

The worker initialiser sets this module's state in each worker process (``in_worker``, ``worker_device``):
what the run attempt reads to find its device and where its stderr goes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

from tqdm import tqdm

from noisypref.folder_layout import LOG_FILE

logger = logging.getLogger(__name__)

WORKER_DEATHS_ALLOWED = 1  # a run in flight when a worker process dies is retried this many times

_in_worker = False  # set in worker processes
_worker_device: str | None = None


def in_worker() -> bool:
    """Whether this process is a worker of a pool (set by the pool's initialiser)."""
    return _in_worker


def worker_device() -> str | None:
    """The device this worker process was given ("cuda": the one it sees), or None."""
    return _worker_device


@contextmanager
def worker_stderr(path: Path) -> Iterator[None]:
    """In a worker process, send what the run writes to stderr (the engine's progress bars, warnings)
    to a file in its folder: the terminal shows one progress bar, the study's."""
    if not _in_worker:
        yield
        return
    with open(path, "a", encoding="utf-8") as file, redirect_stderr(file):
        yield


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def _environment(variables: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block (worker processes started in it inherit them)."""
    previous = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _initialise_worker(threads: int, device_queue: Any) -> None:
    global _in_worker, _worker_device
    _in_worker = True
    # Ctrl-C reaches every process of the terminal's group: the main process handles it and stops
    # the workers (an idle worker would otherwise die with a traceback).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore, which a stopped worker would leave behind
    # (and Python warn about); a worker's bars go to its run's stderr.log, a thread lock is enough.
    tqdm.set_lock(threading.RLock())
    if device_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device_queue.get()
        _worker_device = "cuda"  # the one device this process sees
    import torch

    torch.set_num_threads(threads)
    # Workers log INFO into each run's run.log; only warnings reach the terminal.
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s [worker %(process)d]: %(message)s"))
    root = logging.getLogger()
    root.addHandler(console)
    root.setLevel(logging.INFO)


class WorkerPool:
    """Spawn-started worker processes; a pool broken by a dying worker is restarted and the run that
    was in flight retried once, then given to ``worker_died(task, deaths)``, whose outcome is yielded.

    ``attempt`` runs in the workers: a module-level function (it is pickled by name). A task has the
    ``run_id`` and ``run_dir`` of its run."""

    def __init__(
        self,
        processes: int,
        devices: Sequence[str],
        attempt: Callable[[Any], Any],
        worker_died: Callable[[Any, int], Any],
    ) -> None:
        self.processes = processes
        self.devices = list(devices)
        self.threads = max(1, _available_cores() // processes)
        self.attempt = attempt
        self.worker_died = worker_died
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        # Read by libraries as they are imported, so set before the workers start: the workers' torch
        # threads, and one progress bar on the terminal -- the study's, in this process.
        threads = str(self.threads)
        self._worker_environment = _environment(
            {
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads,
                "TQDM_DISABLE": "1",
                "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            }
        )
        self._worker_environment.__enter__()
        self._start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            if self._pool is not None:
                if exc_info[0] is not None:  # the study stops (Ctrl-C, a full disk): so do the runs in flight
                    # The pool's worker processes (no public accessor before Python 3.14's terminate_workers).
                    for process in list((self._pool._processes or {}).values()):
                        process.terminate()
                self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._worker_environment.__exit__(*exc_info)

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        device_queue = None
        if self.devices:
            device_queue = context.Queue()
            for device in self.devices:
                device_queue.put(device)
        self._pool = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=context,
            initializer=_initialise_worker,
            initargs=(self.threads, device_queue),
        )

    def run(self, tasks: list[Any]) -> Iterator[Any]:
        deaths: dict[str, int] = {}
        remaining = list(tasks)
        while remaining:
            if self._pool is None:
                self._start()
            submitted_at = time.time()
            futures = {self._pool.submit(self.attempt, task): task for task in remaining}
            remaining, given_up = [], []
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    if _was_started(Path(task.run_dir), since=submitted_at):
                        deaths[task.run_id] = deaths.get(task.run_id, 0) + 1
                    too_many = deaths.get(task.run_id, 0) > WORKER_DEATHS_ALLOWED
                    (given_up if too_many else remaining).append(task)
                    continue
                yield outcome
            if not (remaining or given_up):
                continue
            logger.warning("a worker process died; %d run(s) to retry in a new pool", len(remaining))
            self._pool.shutdown(wait=True, cancel_futures=True)  # every worker is gone: their locks are free
            self._pool = None
            for task in given_up:
                yield self.worker_died(task, deaths[task.run_id])


def _was_started(run_dir: Path, *, since: float) -> bool:
    log = run_dir / LOG_FILE
    return log.is_file() and log.stat().st_mtime >= since - 1.0
