"""Attempting one run of a study, in this process or in a worker: claim it, execute it, record how it went.

A run is claimed by an exclusive flock on its `.lock` file for as long as it computes, so two
processes working on one study folder (or many cluster jobs) never compute the same run at once. A
run that is done (its result.json exists) or held by another process is not executed; a run that
raises is recorded in failure.json (reason and traceback). A full or read-only disk stops the study
(`OutputNotWritable`): every later run would fail the same way.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisypref.benchmark.config.sections import TrackingSettings
from noisypref.benchmark.storage import write_json_atomic
from noisypref.benchmark.study.folder import (
    OutputNotWritable,
    claim_run,
    clear_run_dir,
    read_json,
)
from noisypref.benchmark.study.tracking import LiveTracking
from noisypref.benchmark.study.workers import worker_device, worker_stderr
from noisypref.folder_layout import FAILURE_FILE, LOG_FILE, RESULT_FILE
from noisypref.plugins import import_plugins

STDERR_FILE = "stderr.log"  # a worker's stderr while it computes the run
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
    device = task.device or worker_device()
    start = time.perf_counter()
    try:
        with _run_log(run_dir / LOG_FILE), worker_stderr(run_dir / STDERR_FILE):
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


def record_worker_death(task: RunTask, deaths: int) -> RunOutcome:
    """A run whose worker process died ``deaths`` times while computing it: recorded as failed."""
    reason = (
        f"the worker process died while computing the run ({deaths} times: "
        "killed, out of memory or crashed)"
    )
    with claim_run(Path(task.run_dir), wait=True):
        write_failure(Path(task.run_dir), task.run_id, reason, "", None)
    return RunOutcome(task.run_id, FAILED, reason=reason)


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


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / RESULT_FILE)


def _read_failure(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / FAILURE_FILE)
