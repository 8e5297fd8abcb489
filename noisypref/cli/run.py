"""`noisypref run`: run a study (by default the embedded one) into a folder, resumably."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from noisypref.cli import UserError

EXECUTOR_VARIABLE = "NOISYPREF_EXECUTOR"  # "module:function" replacing the engine's execute_run


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a study (default: the embedded default study)",
        description=(
            "Run every run of a study into OUT/runs/<run_id>/ and write OUT/results.parquet. Without a "
            "study file, runs the embedded default study (configs/default.yaml) into runs/default/. "
            "Running the same command again resumes: finished runs (those with result.json) are "
            "skipped, failed ones retried. Several processes may work on one folder at once: each run "
            "is claimed by a lock. Exit status 0 when every run succeeded, 1 when some failed, 2 on a "
            "mistake in the command or the study file."
        ),
    )
    parser.add_argument(
        "study", nargs="?", type=Path, help="study YAML file (default: the embedded default study)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<study name>)")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes on the CPU (default 1: run in this process)"
    )
    parser.add_argument(
        "--devices",
        help="comma-separated CUDA device indices, one worker process per listed device (e.g. 0,1,2,3)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="cache of shared artefacts (default: .cache beside the output folder)"
    )
    parser.add_argument(
        "--force", action="store_true", help="reuse an output folder that holds a different study"
    )
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument(
        "--emit-jobs",
        action="store_true",
        help="print one command per unfinished run (for a cluster's job array) instead of running",
    )
    choice.add_argument(
        "--run-id",
        action="append",
        metavar="ID",
        help="run only this run (repeatable); results.parquet is not rewritten: run `noisypref collect` after",
    )
    parser.set_defaults(func=run_run)


def run_run(args: argparse.Namespace) -> int:
    from noisypref.benchmark.study import (
        DEFAULT_EXECUTOR,
        StudyFolder,
        default_study_path,
        load_study,
        plan_runs,
        run_study,
    )
    from noisypref.benchmark.study.scheduler import default_cache_dir

    study = load_study(args.study or default_study_path())
    out = args.out or Path("runs") / study.name
    devices = parse_devices(args.devices)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give a number of processes >= 1")
    cache_dir = args.cache_dir or default_cache_dir(out)
    if args.emit_jobs:
        folder = StudyFolder(out)
        folder.prepare(study, force=args.force)
        pending = [run for run in plan_runs(study) if not folder.is_done(run.run_id)]
        for run in pending:
            print(job_command(folder.study_file, out, cache_dir, run.run_id))
        print(f"{len(pending)} unfinished run(s) of study {study.name!r}", file=sys.stderr)
        return 0
    summary = run_study(
        study,
        out,
        cache_dir=cache_dir,
        workers=args.workers,
        devices=devices,
        executor=os.environ.get(EXECUTOR_VARIABLE, DEFAULT_EXECUTOR),
        force=args.force,
        run_ids=args.run_id,
        collect=args.run_id is None,
    )
    print(summary.report())
    return 0 if summary.all_succeeded else 1


def parse_devices(text: str | None) -> list[str]:
    if text is None:
        return []
    devices = [part.strip() for part in text.split(",")]
    if not devices or not all(device.isdigit() for device in devices):
        raise UserError(f"--devices {text!r}: give comma-separated CUDA device indices, e.g. 0,1")
    return devices


def job_command(study_file: Path, out: Path, cache_dir: Path, run_id: str) -> str:
    """A shell command computing one run, with absolute paths so it runs from any folder."""
    parts = [
        sys.executable, "-m", "noisypref", "run", str(Path(study_file).resolve()),
        "--out", str(Path(out).resolve()), "--cache-dir", str(Path(cache_dir).resolve()), "--run-id", run_id,
    ]  # fmt: skip
    return shlex.join(parts)
