"""Submitting a study's runs to a cluster through submitit (``pip install "noisypref[slurm]"``).

Each job executes one run through the job function the command line passes in
(``noisypref.cli.jobs.run_job``: ``noisypref run STUDY --out OUT --cache-dir CACHE --run-id ID`` in the
job's own process, exactly as a person would type it). The study folder on shared storage stays the
only coordination (the run's lock, result.json, failure.json), so a job that fails or is killed leaves
the run failed or pending, and running the study again (here, on the cluster, or with --launcher
slurm) takes it up; `noisypref status OUT` works as it does for local runs. The jobs go out as one
job array (``array=True``) or one job each.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SUBMITIT_FOLDER = "slurm"  # inside the study folder: submitit's pickles and the jobs' stdout/stderr
SLURM_COMMANDS = ("sbatch", "srun")  # submitit submits with sbatch, and refuses to start without srun


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
    job: Callable[..., int],
    study_file: Path,
    out: Path,
    cache_dir: Path,
    run_ids: Sequence[str],
    *,
    array: bool = True,
    plugin_folders: Sequence[Path] = (),
) -> list[Any]:
    """Submit one job per run (a job array when ``array``); returns the submitit jobs, in run order. Each
    job calls ``job(study_file, out, cache_dir, run_id, plugin_folders)``, the paths absolute (resolved
    here, where they were given), and fails when it raises: the command line passes
    ``noisypref.cli.jobs.run_job``, which executes `noisypref run --run-id ID`."""
    folders = tuple(Path(folder).resolve() for folder in plugin_folders)
    paths = (Path(study_file).resolve(), Path(out).resolve(), Path(cache_dir).resolve())
    arguments = [(*paths, run_id, folders) for run_id in run_ids]
    if not arguments:
        return []
    if array:
        jobs = executor.map_array(job, *zip(*arguments, strict=True))
    else:
        jobs = [executor.submit(job, *job_arguments) for job_arguments in arguments]
    for run_id, submitted in zip(run_ids, jobs, strict=True):
        logger.info("run %s: job %s", run_id, submitted.job_id)
    return jobs
