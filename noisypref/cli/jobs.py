"""`noisypref run`'s jobs: one run of a study folder each, printed (``--emit-jobs``) or submitted to Slurm
(``--launcher slurm``, through ``noisypref.benchmark.study.slurm``). ``run_arguments`` builds the
`noisypref run` arguments of both; ``run_job`` is what a Slurm job executes (docs/clusters.md)."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from noisypref.cli import UserError

# a Slurm job computes its one run in its own process, and writes no report
SLURM_JOB_OPTIONS = ("--workers", "1", "--no-report")


class JobFailed(RuntimeError):
    """A job's run did not succeed (the run's failure.json says why)."""


def run_arguments(
    study_file: Path, out: Path, cache_dir: Path, run_id: str, plugin_folders: Sequence[Path] = ()
) -> list[str]:
    """The `noisypref run` arguments that compute one run, with absolute paths so that they work from any
    folder (``plugin_folders``: where the study's plugin modules are, for a study file that is the study
    folder's copy)."""
    return [
        "run", str(Path(study_file).resolve()), "--out", str(Path(out).resolve()),
        "--cache-dir", str(Path(cache_dir).resolve()), "--run-id", run_id,
        *(part for folder in plugin_folders for part in ("--plugin-path", str(Path(folder).resolve()))),
    ]  # fmt: skip


def job_command(
    study_file: Path, out: Path, cache_dir: Path, run_id: str, plugin_folders: Sequence[Path] = ()
) -> str:
    """A shell command computing one run (a line of ``--emit-jobs``)."""
    arguments = run_arguments(study_file, out, cache_dir, run_id, plugin_folders)
    return shlex.join([sys.executable, "-m", "noisypref", *arguments])


def run_job(
    study_file: Path, out: Path, cache_dir: Path, run_id: str, plugin_folders: Sequence[Path] = ()
) -> int:
    """What a Slurm job runs: `noisypref run` of the one run, in this process, on one worker and without
    a report; raises when the run did not succeed, so that the scheduler marks the job failed."""
    from noisypref.cli import main

    arguments = [*run_arguments(study_file, out, cache_dir, run_id, plugin_folders), *SLURM_JOB_OPTIONS]
    status = main(arguments)
    if status != 0:
        raise JobFailed(f"noisypref {' '.join(arguments)} exited with status {status}")
    return status


def plugin_folders(study, args: argparse.Namespace) -> list[Path]:
    """Where a job finds the study's plugin modules: a job reads the study folder's copy of the study
    file, so the original file's folder (and --plugin-path) travel with it."""
    if not study.plugins or args.study is None:
        return []
    return [Path(args.study).resolve().parent, *(Path(folder).resolve() for folder in args.plugin_path or ())]


def submit_to_slurm(study, out: Path, cache_dir: Path, args: argparse.Namespace) -> int:
    """Submit the unfinished runs (of --run-id, if given) as Slurm jobs and print their ids."""
    from noisypref.benchmark.study import StudyFolder, plan_runs
    from noisypref.benchmark.study.scheduler import select_runs
    from noisypref.benchmark.study.slurm import SUBMITIT_FOLDER, SlurmSettings, slurm_executor, submit_runs

    folder = StudyFolder(out)
    folder.prepare(study, force=args.force)
    runs = plan_runs(study) if args.run_id is None else select_runs(plan_runs(study), args.run_id)
    pending = [run.run_id for run in runs if not folder.is_done(run.run_id)]
    settings = SlurmSettings(args.slurm_partition, args.slurm_gpus_per_job, args.slurm_time)
    executor = slurm_executor(out / SUBMITIT_FOLDER, settings)
    jobs = submit_runs(
        executor, run_job, folder.study_file, out, cache_dir, pending, array=not args.slurm_no_array,
        plugin_folders=plugin_folders(study, args),
    )  # fmt: skip
    for run_id, job in zip(pending, jobs, strict=True):
        print(f"{run_id}  job {job.job_id}")
    print(
        f"submitted {len(jobs)} job(s) for the unfinished runs of study {study.name!r} (logs: {out / SUBMITIT_FOLDER}); "
        f"watch them with `noisypref status {out}`, then `noisypref collect {out}` and `noisypref report {out}`"
    )
    return 0


def check_slurm_launch(args: argparse.Namespace) -> None:
    """Everything --launcher slurm needs, before any folder is written: options that fit together,
    submitit, and a Slurm installation on this machine."""
    if args.emit_jobs:
        raise UserError(
            "--launcher slurm and --emit-jobs do not go together: --launcher slurm submits the jobs itself, "
            "--emit-jobs prints their commands for you to submit; give one of them"
        )
    if args.slurm_gpus_per_job < 0 or args.slurm_time < 1:
        raise UserError(
            f"--slurm-gpus-per-job {args.slurm_gpus_per_job} --slurm-time {args.slurm_time}: the GPUs per "
            "job must be >= 0 and the time limit >= 1 minute"
        )
    if importlib.util.find_spec("submitit") is None:
        raise UserError("--launcher slurm needs submitit: pip install 'noisypref[slurm]'")
    from noisypref.benchmark.study.slurm import missing_slurm_commands

    missing = missing_slurm_commands()
    if missing:
        raise UserError(
            f"--launcher slurm: this machine has no Slurm ({' and '.join(missing)} not found on PATH); "
            "run the command on a login node of the cluster, or print one job command per unfinished run "
            "with --emit-jobs (instead of --launcher slurm) and submit them yourself"
        )
