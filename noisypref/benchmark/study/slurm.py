"""Submitting a study's runs to a cluster through submitit (``pip install "noisypref[slurm]"``).

Each job executes one run: ``noisypref run STUDY --out OUT --cache-dir CACHE --run-id ID``, in the
job's own process, exactly as a person would type it. The study folder on shared storage stays the
only coordination (the run's lock, result.json, failure.json), so a job that fails or is killed leaves
the run failed or pending, and running the study again (here, on the cluster, or with --launcher
slurm) takes it up; `noisypref status OUT` works as it does for local runs. The jobs go out as one
job array (``array=True``) or one job each.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUBMITIT_FOLDER = "slurm"  # inside the study folder: submitit's pickles and the jobs' stdout/stderr
SLURM_COMMANDS = ("sbatch", "srun")  # submitit submits with sbatch, and refuses to start without srun


class JobFailed(RuntimeError):
    """A job's run did not succeed (the run's failure.json says why)."""


@dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None
    gpus_per_job: int = 1
    time_min: int = 240
    cpus_per_job: int | None = None
    array_parallelism: int = 64  # jobs of the array running at once


def missing_slurm_commands() -> list[str]:
    """The Slurm commands submitting needs that this machine does not have on its PATH."""
    return [command for command in SLURM_COMMANDS if shutil.which(command) is None]


def run_command(
    study_file: Path, out: Path, cache_dir: Path, run_id: str, plugin_folders: Sequence[Path] = ()
) -> list[str]:
    """The `noisypref run` arguments a job executes (``plugin_folders``: where the study's plugin
    modules are, for a study file that is the study folder's copy)."""
    return [
        "run", str(Path(study_file).resolve()), "--out", str(Path(out).resolve()),
        "--cache-dir", str(Path(cache_dir).resolve()), "--run-id", run_id, "--workers", "1", "--no-report",
        *(part for folder in plugin_folders for part in ("--plugin-path", str(Path(folder).resolve()))),
    ]  # fmt: skip


def execute_job(arguments: list[str]) -> int:
    """What a job runs: `noisypref ARGUMENTS` in this process; raises when the run did not succeed, so
    that the scheduler marks the job failed."""
    from noisypref.cli import main

    status = main(arguments)
    if status != 0:
        raise JobFailed(f"noisypref {' '.join(arguments)} exited with status {status}")
    return status


def slurm_executor(folder: Path, settings: SlurmSettings) -> Any:
    """A submitit executor for Slurm (``cluster="slurm"``) with the job settings."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    parameters: dict[str, Any] = {
        "timeout_min": settings.time_min,
        "gpus_per_node": settings.gpus_per_job,
        "tasks_per_node": 1,
        "nodes": 1,
        "slurm_array_parallelism": settings.array_parallelism,
    }
    if settings.partition:
        parameters["slurm_partition"] = settings.partition
    if settings.cpus_per_job:
        parameters["cpus_per_task"] = settings.cpus_per_job
    executor.update_parameters(**parameters)
    return executor


def submit_runs(
    executor: Any,
    study_file: Path,
    out: Path,
    cache_dir: Path,
    run_ids: Sequence[str],
    *,
    array: bool = True,
    plugin_folders: Sequence[Path] = (),
) -> list[Any]:
    """Submit one job per run (a job array when ``array``); returns the submitit jobs, in run order."""
    commands = [run_command(study_file, out, cache_dir, run_id, plugin_folders) for run_id in run_ids]
    if not commands:
        return []
    if array:
        jobs = executor.map_array(execute_job, commands)
    else:
        jobs = [executor.submit(execute_job, command) for command in commands]
    for run_id, job in zip(run_ids, jobs, strict=True):
        logger.info("run %s: job %s", run_id, job.job_id)
    return jobs
