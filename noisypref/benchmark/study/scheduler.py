"""Running a study: claim each unfinished run, execute it, record success or failure, go on.

A run is done when its result.json exists; `run_study` skips those, so running a study again resumes
it. A run is claimed by an exclusive flock on its `.lock` file for as long as it computes, so two
processes working on one study folder (or many cluster jobs) never compute the same run at once; a
run held by another process is waited for at the end and run here if that process died without
finishing it. A run that raises is recorded in failure.json (reason and traceback) and the study
goes on; running the study again retries it.

Parallelism: with `workers > 1` (or `devices`), runs execute in spawn-started worker processes, each
limited to cores // processes torch threads; with devices, one process per listed device (a device
listed twice gets two), each seeing only its device (CUDA_VISIBLE_DEVICES). Shared artefacts (the
testbed's reference policy and pairs, tokenised pairs, reference log-probs) are built once by the
engine under its own file locks in the cache folder: workers that need one being built wait for it.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from noisypref.benchmark.config.sections import TrackingSettings
from noisypref.benchmark.storage import write_json_atomic
from noisypref.benchmark.study.folder import (
    OutputNotWritable,
    StudyFolder,
    claim_run,
    clear_run_dir,
    read_json,
)
from noisypref.benchmark.study.grid import PlannedRun, plan_runs
from noisypref.benchmark.study.results import collect_results
from noisypref.benchmark.study.schema import Study
from noisypref.benchmark.study.tracking import LiveTracking, finish_trackers
from noisypref.folder_layout import FAILURE_FILE, LOG_FILE, RESULT_FILE
from noisypref.plugins import import_plugins

logger = logging.getLogger(__name__)

DEFAULT_EXECUTOR = "noisypref.benchmark.run.execute:execute_run"
CACHE_FOLDER = ".cache"
KEY_METRIC = "heldout_accuracy"
STDERR_FILE = "stderr.log"  # a worker's stderr while it computes the run
WORKER_DEATHS_ALLOWED = 1  # a run in flight when a worker process dies is retried this many times
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # errors that stop the study, not just one run

SUCCEEDED, FAILED, DONE_ELSEWHERE, HELD = "succeeded", "failed", "done elsewhere", "held elsewhere"

Executor = Callable[[dict[str, Any], Path, Path, "str | None"], dict[str, Any]]


@dataclass(frozen=True)
class RunTask:
    """What a worker needs to attempt one run (picklable: the executor is a "module:function" name
    or a module-level function)."""

    run_id: str
    config: dict[str, Any]
    run_dir: str
    cache_dir: str
    executor: str | Executor
    device: str | None = None  # None: the worker's device, or the CPU
    wait: bool = False  # wait for a lock held elsewhere instead of giving up
    failures_since: float | None = None  # with wait: a failure recorded after this time is final
    plugins: tuple[str, ...] = ()  # the study's plugin modules, imported before the run (noisypref.plugins)
    tracking: TrackingSettings | None = None  # trackers the run is sent to as it trains (study.tracking)
    study: str = ""  # the study's name: the trackers' group
    label: str = ""  # the run's label: its name in the trackers


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str  # SUCCEEDED, FAILED, DONE_ELSEWHERE or HELD
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None


@dataclass
class StudySummary:
    study: str
    out_dir: Path
    total: int
    succeeded: int = 0
    failed: int = 0
    already_done: int = 0  # finished before this invocation started: skipped
    done_elsewhere: int = 0  # finished by another process while this one ran
    wall_time_s: float = 0.0
    failures: list[tuple[PlannedRun, str]] = field(default_factory=list)
    results_table: Path | None = None

    @property
    def all_succeeded(self) -> bool:
        return self.failed == 0 and self.succeeded + self.already_done + self.done_elsewhere == self.total

    def report(self) -> str:
        lines = [
            f"study {self.study}: {self.total} runs in {self.out_dir}: {self.succeeded} succeeded, "
            f"{self.failed} failed, {self.already_done} skipped as already done"
            + (f", {self.done_elsewhere} done by another process" if self.done_elsewhere else "")
            + f"; wall time {self.wall_time_s:.1f} s"
        ]
        lines += [f"  failed {run.run_id} ({run.describe()}): {reason}" for run, reason in self.failures]
        if self.results_table is not None:
            lines.append(f"results: {self.results_table}")
        return "\n".join(lines)


def default_cache_dir(out_dir: Path) -> Path:
    """The contract's default: a cache beside the study folder, shared by the studies there."""
    return Path(out_dir).resolve().parent / CACHE_FOLDER


def resolve_executor(executor: str | Executor) -> Executor:
    """A callable, or "module:function" imported (e.g. the default, the engine's execute_run)."""
    if callable(executor):
        return executor
    module_name, separator, function_name = executor.partition(":")
    if not separator:
        raise ValueError(f"executor {executor!r} must be of the form 'module:function'")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load the run executor {executor!r}: {error}") from error


def select_runs(runs: Sequence[PlannedRun], run_ids: Sequence[str]) -> list[PlannedRun]:
    by_id = {run.run_id: run for run in runs}
    unknown = [run_id for run_id in run_ids if run_id not in by_id]
    if unknown:
        raise ValueError(
            f"run id(s) {', '.join(unknown)} are not in this study; `noisypref validate STUDY` lists its runs"
        )
    return [by_id[run_id] for run_id in dict.fromkeys(run_ids)]


def run_study(
    study: Study,
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    workers: int = 1,
    devices: Sequence[str] = (),
    executor: str | Executor = DEFAULT_EXECUTOR,
    force: bool = False,
    run_ids: Sequence[str] | None = None,
    collect: bool = True,
    progress: bool = True,
    tracking: TrackingSettings | None = None,
) -> StudySummary:
    """Run every unfinished run of `study` (or only `run_ids`) into `out_dir`; see the module doc.

    Returns the summary; `summary.all_succeeded` tells whether every selected run has a result.
    With `collect`, writes out_dir/results.parquet at the end. The progress bar shows on a terminal.
    `tracking` (default: the study's) names the trackers each run is sent to while it trains.
    """
    if workers < 1:
        raise ValueError(f"workers = {workers} is not allowed; it must be an integer >= 1")
    if devices and workers not in (1, len(devices)):
        raise ValueError(
            f"--workers {workers} with --devices {','.join(devices)}: one process runs per listed device "
            "(list a device twice to run two processes on it)"
        )
    start = time.perf_counter()
    started_at = time.time()
    folder = StudyFolder(Path(out_dir))
    runs = plan_runs(study)
    if run_ids is not None:
        runs = select_runs(runs, run_ids)
    resolve_executor(executor)  # fail now, not once per run, when the engine cannot be loaded
    folder.prepare(study, force=force)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(folder.root)
    summary = StudySummary(study.name, folder.root, total=len(runs))
    pending = [run for run in runs if not folder.is_done(run.run_id)]
    summary.already_done = len(runs) - len(pending)
    processes = len(devices) or workers
    logger.info(
        "study %s: %d runs, %d already done, %d to run with %d process(es); out %s, cache %s",
        study.name, len(runs), summary.already_done, len(pending), processes, folder.root, cache,
    )  # fmt: skip
    by_id = {run.run_id: run for run in runs}
    single_device = f"cuda:{devices[0]}" if len(devices) == 1 else None
    tasks = [
        RunTask(
            run.run_id,
            run.config,
            str(folder.run_dir(run.run_id)),
            str(cache),
            executor,
            device=single_device,
            plugins=study.plugins,
            tracking=tracking if tracking is not None else study.tracking,
            study=study.name,
            label=run.describe(),
        )
        for run in pending
    ]
    with (
        tqdm(
            total=len(runs),
            initial=summary.already_done,
            unit="run",
            desc=study.name,
            disable=None if progress else True,
        ) as bar,
        logging_redirect_tqdm(),
        _runner(processes, devices) as runner,
    ):
        tasks_by_id = {task.run_id: task for task in tasks}
        held: list[RunTask] = []
        for outcome in runner(tasks):
            if outcome.status == HELD:
                held.append(tasks_by_id[outcome.run_id])
            else:
                _record(outcome, by_id[outcome.run_id], summary, bar)
        if held:
            logger.info("waiting for %d run(s) held by other processes", len(held))
            waiting = [dataclasses.replace(task, wait=True, failures_since=started_at) for task in held]
            for outcome in runner(waiting):
                _record(outcome, by_id[outcome.run_id], summary, bar)
    summary.wall_time_s = time.perf_counter() - start
    finish_trackers()  # the trackers' services, kept for the whole study (one W&B service, not one per run)
    if collect:
        summary.results_table = collect_results(folder, study)
    return summary


def _record(outcome: RunOutcome, run: PlannedRun, summary: StudySummary, bar: tqdm) -> None:
    if outcome.status == SUCCEEDED:
        summary.succeeded += 1
    elif outcome.status == DONE_ELSEWHERE:
        summary.done_elsewhere += 1
    else:
        summary.failed += 1
        summary.failures.append((run, outcome.reason or ""))
    metric = outcome.metrics.get(KEY_METRIC)
    metric_text = f", {KEY_METRIC} {metric:.3f}" if isinstance(metric, (int, float)) else ""
    seconds = f" in {outcome.wall_time_s:.1f} s" if outcome.wall_time_s is not None else ""
    reason = f": {outcome.reason}" if outcome.status == FAILED else ""
    log = logger.warning if outcome.status == FAILED else logger.info
    log("%s %s: %s%s%s%s", run.run_id, run.describe(), outcome.status, metric_text, seconds, reason)
    bar.update(1)


# ---------------------------------------------------------------------------------------------
# Attempting one run (in this process or in a worker)

_in_worker = False  # set in worker processes
_worker_device: str | None = None


def attempt_run(task: RunTask) -> RunOutcome:
    """Claim the run and execute it unless it is done, held elsewhere, or (when waiting) just failed elsewhere."""
    run_dir = Path(task.run_dir)
    import_plugins(task.plugins)  # a spawned worker registers the study's own methods and noise models too
    with claim_run(run_dir, wait=task.wait) as claimed:
        if not claimed:
            return RunOutcome(task.run_id, HELD)
        folder_result = _read_result(run_dir)
        if folder_result is not None:
            return RunOutcome(
                task.run_id, DONE_ELSEWHERE, metrics=folder_result.get("metrics") or {},
                wall_time_s=folder_result.get("wall_time_s"),
            )  # fmt: skip
        failure = _read_failure(run_dir)
        if (
            task.failures_since is not None
            and failure
            and failure.get("finished_at", 0) >= task.failures_since
        ):
            return RunOutcome(
                task.run_id, FAILED, reason=failure.get("reason"), wall_time_s=failure.get("wall_time_s")
            )
        clear_run_dir(run_dir)
        return _execute(task, run_dir)


def _execute(task: RunTask, run_dir: Path) -> RunOutcome:
    if task.tracking is None or not task.tracking.trackers:
        return _execute_run(task, run_dir)
    with LiveTracking(
        task.tracking, study=task.study, run_id=task.run_id, label=task.label or task.run_id,
        config=task.config, run_dir=run_dir, out_dir=run_dir.parent.parent,
    ):  # fmt: skip
        return _execute_run(task, run_dir)


def _execute_run(task: RunTask, run_dir: Path) -> RunOutcome:
    device = task.device or _worker_device
    start = time.perf_counter()
    try:
        with _run_log(run_dir / LOG_FILE), _worker_stderr(run_dir / STDERR_FILE):
            executor = resolve_executor(task.executor)
            result = executor(task.config, run_dir, Path(task.cache_dir), device)
        if not (run_dir / RESULT_FILE).is_file():
            raise RuntimeError(f"the executor returned without writing {RESULT_FILE}")
    except Exception as error:  # noqa: BLE001 (any failure of one run is recorded; the study goes on)
        wall_time_s = time.perf_counter() - start
        _stop_if_output_not_writable(task.run_id, error)
        reason = str(error) if type(error).__name__ == "RunFailed" else f"{type(error).__name__}: {error}"
        try:
            write_failure(run_dir, task.run_id, reason, traceback.format_exc(), wall_time_s)
        except OSError as write_error:
            _stop_if_output_not_writable(task.run_id, write_error)
            raise
        return RunOutcome(task.run_id, FAILED, reason=reason, wall_time_s=wall_time_s)
    if not isinstance(result, dict):
        result = _read_result(run_dir) or {}
    return RunOutcome(
        task.run_id, SUCCEEDED, metrics=result.get("metrics") or {}, wall_time_s=time.perf_counter() - start
    )


def _stop_if_output_not_writable(run_id: str, error: BaseException) -> None:
    """Raise OutputNotWritable when `error` (or an error it was raised from) is a full or read-only
    disk: every later run would fail the same way, so the study stops, recording nothing for the run."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            raise OutputNotWritable(
                f"run {run_id} stopped: cannot write {error.filename or 'its files'}: {error.strerror}. "
                "The study stopped; finished runs are kept and this run is not taken as finished. "
                "Free some space (or make the folder writable) and run the same command again to resume."
            )
        error = error.__cause__ or error.__context__


def write_failure(run_dir: Path, run_id: str, reason: str, details: str, wall_time_s: float | None) -> None:
    write_json_atomic(
        run_dir / FAILURE_FILE,
        {
            "run_id": run_id,
            "status": "failed",
            "reason": reason,
            "traceback": details,
            "wall_time_s": wall_time_s,
            "finished_at": time.time(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
    )


@contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Copy every log record emitted while the run executes into its run.log; noisypref's own INFO
    records (its phases and progress lines) reach it even when the caller logs only warnings."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    package = logging.getLogger("noisypref")
    package_level = package.level
    if not package.isEnabledFor(logging.INFO):
        package.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
        package.setLevel(package_level)


@contextmanager
def _worker_stderr(path: Path) -> Iterator[None]:
    """In a worker process, send what the run writes to stderr (the engine's progress bars, warnings)
    to a file in its folder: the terminal shows one progress bar, the study's."""
    if not _in_worker:
        yield
        return
    with open(path, "a", encoding="utf-8") as file, redirect_stderr(file):
        yield


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / RESULT_FILE)


def _read_failure(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / FAILURE_FILE)


# ---------------------------------------------------------------------------------------------
# Runners: in this process, or a pool of worker processes


@contextmanager
def _runner(
    processes: int, devices: Sequence[str]
) -> Iterator[Callable[[list[RunTask]], Iterator[RunOutcome]]]:
    if processes == 1:
        yield lambda tasks: (attempt_run(task) for task in tasks)
        return
    with _WorkerPool(processes, devices) as pool:
        yield pool.run


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


class _WorkerPool:
    """Spawn-started worker processes; a pool broken by a dying worker is restarted and the run that
    was in flight retried once, then recorded as failed."""

    def __init__(self, processes: int, devices: Sequence[str]):
        self.processes = processes
        self.devices = list(devices)
        self.threads = max(1, _available_cores() // processes)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _WorkerPool:
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

    def run(self, tasks: list[RunTask]) -> Iterator[RunOutcome]:
        deaths: dict[str, int] = {}
        remaining = list(tasks)
        while remaining:
            if self._pool is None:
                self._start()
            submitted_at = time.time()
            futures = {self._pool.submit(attempt_run, task): task for task in remaining}
            remaining, given_up = [], []
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    if _was_started(task, since=submitted_at):
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
                reason = (
                    f"the worker process died while computing the run ({deaths[task.run_id]} times: "
                    "killed, out of memory or crashed)"
                )
                with claim_run(Path(task.run_dir), wait=True):
                    write_failure(Path(task.run_dir), task.run_id, reason, "", None)
                yield RunOutcome(task.run_id, FAILED, reason=reason)


def _was_started(task: RunTask, *, since: float) -> bool:
    log = Path(task.run_dir) / LOG_FILE
    return log.is_file() and log.stat().st_mtime >= since - 1.0
