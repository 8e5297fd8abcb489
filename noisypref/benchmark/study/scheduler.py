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

One run's attempt (claim, execute, record) is `noisypref.benchmark.study.attempt`; the worker
processes are `noisypref.benchmark.study.workers`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from noisypref.benchmark.config.sections import TrackingSettings
from noisypref.benchmark.study.attempt import (
    DONE_ELSEWHERE,
    FAILED,
    HELD,
    SUCCEEDED,
    Executor,
    RunOutcome,
    RunTask,
    attempt_run,
    record_worker_death,
    resolve_executor,
)
from noisypref.benchmark.study.folder import StudyFolder
from noisypref.benchmark.study.grid import PlannedRun, plan_runs
from noisypref.benchmark.study.results import collect_results
from noisypref.benchmark.study.schema import Study
from noisypref.benchmark.study.tracking import finish_trackers
from noisypref.benchmark.study.workers import WorkerPool

logger = logging.getLogger(__name__)

DEFAULT_EXECUTOR = "noisypref.benchmark.run.execute:execute_run"
CACHE_FOLDER = ".cache"
KEY_METRIC = "heldout_accuracy"


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


@contextmanager
def _runner(
    processes: int, devices: Sequence[str]
) -> Iterator[Callable[[list[RunTask]], Iterator[RunOutcome]]]:
    """Attempt tasks in this process, or in a pool of worker processes (``noisypref.benchmark.study.workers``)."""
    if processes == 1:
        yield lambda tasks: (attempt_run(task) for task in tasks)
        return
    with WorkerPool(processes, devices, attempt_run, record_worker_death) as pool:
        yield pool.run
