"""`noisypref run`: run a study (by default the embedded one) into a folder, resumably, then report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

from noisypref.cli import UserError, make_output_folder
from noisypref.cli.jobs import check_slurm_launch, job_command, plugin_folders, submit_to_slurm

COMMAND = "run"
HELP = "run a study (default: the embedded default study)"  # the line of `noisypref --help`
EXECUTOR_VARIABLE = "NOISYPREF_EXECUTOR"  # "module:function" replacing the engine's execute_run
INTERRUPTED_STATUS = 128 + signal.SIGINT

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Run every run of a study into OUT/runs/<run_id>/, write OUT/results.parquet and the report "
            "OUT/report/report.html (and report.md). Without a "
            "study file, runs the embedded default study (configs/default.yaml) into runs/default/. "
            "Running the same command again resumes: finished runs (those with result.json) are "
            "skipped, failed ones retried. Several processes may work on one folder at once: each run "
            "is claimed by a lock. Started by a launcher (`torchrun --nproc_per_node N -m noisypref run "
            "STUDY`), every run spans the N processes, sharded when the study sets training.sharding: "
            "fsdp; rank 0 schedules and writes. Exit status 0 when every run succeeded, 1 when some "
            "failed, 2 on a mistake in the command or the study file."
        ),
    )
    parser.add_argument(
        "study", nargs="?", type=Path, help="study YAML file (default: the embedded default study)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<study name>)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on the CPU, each with its share of the cores (default: one per CPU core, "
        "or one per listed device with --devices; 1 runs everything in this process)",
    )
    parser.add_argument(
        "--devices",
        help="comma-separated CUDA device indices, one worker process per listed device (e.g. 0,1,2,3)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="cache of shared artefacts (default: .cache beside the output folder)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="reuse an output folder that holds a different study (its other runs move to DIR/superseded/)",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not write OUT/report/ (`noisypref report OUT` writes it)"
    )
    parser.add_argument(
        "--plugin-path",
        action="append",
        type=Path,
        metavar="DIR",
        help="also look for the study's plugin modules in DIR (repeatable); they are looked up in the "
        "installed packages, then in the study file's folder, then here",
    )
    parser.add_argument(
        "--track",
        metavar="TRACKERS",
        help="send each run's training curve, final metrics and config to these trackers, comma-separated: "
        "tensorboard (OUT/tensorboard/), wandb (honours WANDB_MODE=offline), trackio; replaces the "
        "study's tracking.trackers (pip install 'noisypref[track]')",
    )
    cluster = parser.add_argument_group(
        "clusters", "submit the unfinished runs as Slurm jobs through submitit (pip install 'noisypref[slurm]'); "
        "each job executes `noisypref run STUDY --run-id ID`, the study folder on shared storage is the only "
        "coordination (docs/clusters.md)",
    )
    cluster.add_argument(
        "--launcher", choices=("local", "slurm"), default="local",
        help="local: run here (default); slurm: submit one job per unfinished run and return",
    )  # fmt: skip
    cluster.add_argument("--slurm-partition", help="Slurm partition of the jobs")
    cluster.add_argument("--slurm-gpus-per-job", type=int, default=1, help="GPUs per job (default 1)")
    cluster.add_argument("--slurm-time", type=int, default=240, metavar="MINUTES", help="time limit per job (default 240)")
    cluster.add_argument(
        "--slurm-no-array", action="store_true", help="submit one job per run instead of one job array"
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
    if not sys.stderr.isatty():  # a log file gets noisypref's plain progress lines, not the libraries' bars
        disable_library_progress_bars()
    from noisypref.benchmark.engine import distributed
    from noisypref.benchmark.engine.distributed import launched_world_size
    from noisypref.benchmark.study import (
        DEFAULT_EXECUTOR,
        StudyFolder,
        default_study_path,
        load_study,
        plan_runs,
        run_study,
    )
    from noisypref.benchmark.study.attempt import resolve_executor
    from noisypref.benchmark.study.launch import Leader, control_group, follow
    from noisypref.benchmark.study.preflight import check_preflight
    from noisypref.benchmark.study.scheduler import default_cache_dir, select_runs

    study = load_study(args.study or default_study_path(), plugin_folders=args.plugin_path or ())
    check_data_files(study, args.study)
    if args.track is not None:  # --track replaces the study's trackers; checked as they are
        study = dataclasses.replace(study, tracking=parse_track(study, args.track))
    if args.launcher == "slurm":
        check_slurm_launch(args)
    if args.run_id is not None:
        select_runs(plan_runs(study), args.run_id)  # an unknown id is refused before any folder is written
    out = args.out or Path("runs") / study.name
    devices = parse_devices(args.devices)
    launched = launched_world_size()
    if launched > 1:
        check_launch_arguments(args, launched)
        args.workers = 1
    check_devices_visible(devices)
    if args.workers is None:  # with --devices: one process per listed device
        args.workers = len(devices) or os.cpu_count() or 1
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give a number of processes >= 1")
    check_preflight(study, args.study or default_study_path())  # before any folder is written
    cache_dir = args.cache_dir or default_cache_dir(out)
    make_output_folder(out, "the output folder (--out)")
    make_output_folder(cache_dir, "the cache folder (--cache-dir)")
    if args.launcher == "slurm":
        return submit_to_slurm(study, out, cache_dir, args)
    if args.emit_jobs:
        folder = StudyFolder(out)
        folder.prepare(study, force=args.force)
        pending = [run for run in plan_runs(study) if not folder.is_done(run.run_id)]
        for run in pending:
            print(job_command(folder.study_file, out, cache_dir, run.run_id, plugin_folders(study, args)))
        print(f"{len(pending)} unfinished run(s) of study {study.name!r}", file=sys.stderr)
        return 0
    executor = os.environ.get(EXECUTOR_VARIABLE, DEFAULT_EXECUTOR)
    leader = None
    if launched > 1:  # every run spans all the processes of the launch; rank 0 schedules
        control = control_group()
        if distributed.rank() != 0:
            try:
                follow(resolve_executor(executor), control)
            finally:
                distributed.end_launch()
            return 0
        executor = leader = Leader(resolve_executor(executor), control)
    try:
        summary = run_study(
            study,
            out,
            cache_dir=cache_dir,
            workers=args.workers,
            devices=devices,
            executor=executor,
            force=args.force,
            run_ids=args.run_id,
            collect=args.run_id is None,
        )
    except KeyboardInterrupt:
        print(describe_interruption(study, out, args), file=sys.stderr)
        return INTERRUPTED_STATUS
    finally:
        if leader is not None:
            leader.finish()
            distributed.end_launch()
    print(summary.report())
    status = 0 if summary.all_succeeded else 1
    if args.run_id is None and not args.no_report:
        try:
            write_study_report(out)
        except KeyboardInterrupt:
            finished = summary.succeeded + summary.already_done + summary.done_elsewhere
            command = shlex.join(["noisypref", "report", str(out)])
            print(
                f"noisypref run: interrupted while writing the report. All runs are kept ({finished} of "
                f"{summary.total} finished) in {out}, with results.parquet; to write the report, run: {command}",
                file=sys.stderr,
            )
            return INTERRUPTED_STATUS
    return status


def disable_library_progress_bars() -> None:
    """No tqdm bars from datasets, transformers and the hub (their carriage returns garble a log file)."""
    import datasets
    import huggingface_hub
    import transformers

    os.environ["TQDM_DISABLE"] = "1"  # spawned workers, and tqdm bars created from now on
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def write_study_report(out: Path) -> Path | None:
    """Write OUT/report/ and print the path of report.html; a failure is logged, never raised, so the
    exit status stays the study's."""
    from noisypref.reports import write_report

    try:
        html_path = write_report(out)
    except Exception as error:  # the runs and results.parquet are written; the report is extra
        logger.error("the report of %s could not be written (%s: %s)", out, type(error).__name__, error)
        print(f"report: not written ({type(error).__name__}: {error}); try `noisypref report {out}`")
        return None
    print(f"report: {html_path}")
    return html_path


def check_data_files(study, study_file: Path | None) -> None:
    """Read every local data file of the study once, so that a malformed one stops the command with
    a message (exit status 2) before any run starts, instead of failing every run on it."""
    from noisypref.benchmark.data.loaders import load_preferences

    for index, dataset in enumerate(study.datasets):
        if dataset.kind != "file":
            continue
        try:
            load_preferences(dataset.source, dataset.split)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(f"{study_file}: datasets[{index}] (label {dataset.label!r}): {error}") from None


def describe_interruption(study, out: Path, args: argparse.Namespace) -> str:
    """After Ctrl-C: what is kept (results.parquet rewritten with it) and the command that resumes."""
    from noisypref.benchmark.study import StudyFolder, collect_results, plan_runs

    folder = StudyFolder(out)
    runs = plan_runs(study)
    if args.run_id is not None:
        runs = [run for run in runs if run.run_id in args.run_id]
    done = sum(folder.is_done(run.run_id) for run in runs)
    if args.run_id is None and folder.study_file.is_file():
        collect_results(folder, study)
    resume = ["noisypref", "run", *([str(args.study)] if args.study else []), "--out", str(out)]
    resume += ["--workers", str(args.workers)] if not args.devices else []
    resume += ["--devices", args.devices] if args.devices else []
    resume += ["--cache-dir", str(args.cache_dir)] if args.cache_dir else []
    resume += [part for folder in args.plugin_path or () for part in ("--plugin-path", str(folder))]
    resume += [part for run_id in args.run_id or () for part in ("--run-id", run_id)]
    return (
        f"noisypref run: interrupted. {done} of {len(runs)} runs are done and kept in {out}; the runs "
        "that were computing are discarded and start afresh when resumed. To resume, run the same "
        f"command again: {shlex.join(resume)}"
    )


def check_launch_arguments(args: argparse.Namespace, processes: int) -> None:
    """Options that choose processes do not apply when a launcher started them."""
    clashing = [
        name
        for name, given in (
            ("--workers", args.workers not in (None, 1)),
            ("--devices", args.devices is not None),
            ("--emit-jobs", args.emit_jobs),
        )
        if given
    ]
    if clashing:
        raise UserError(
            f"{', '.join(clashing)}: this command was started by a launcher as one of {processes} processes "
            "(WORLD_SIZE), and every run is spread across all of them; drop the option, or run "
            "`noisypref run` without torchrun/accelerate launch to use it"
        )


def parse_track(study, text: str):
    """The study's tracking settings with the trackers of ``--track``, each one installed here."""
    from noisypref.benchmark.study.tracking import missing_tracker_reasons

    trackers = [name.strip() for name in text.split(",") if name.strip()]
    try:
        tracking = dataclasses.replace(study.tracking, trackers=tuple(trackers))
    except ValueError as error:
        raise UserError(f"--track {text!r}: {error}") from None
    missing = missing_tracker_reasons(tracking.trackers)
    if missing:
        raise UserError(f"--track {text!r}: {'; '.join(missing.values())} (or leave the tracker out)")
    return tracking


def parse_devices(text: str | None) -> list[str]:
    if text is None:
        return []
    devices = [part.strip() for part in text.split(",")]
    if not devices or not all(device.isdigit() for device in devices):
        raise UserError(f"--devices {text!r}: give comma-separated CUDA device indices, e.g. 0,1")
    return devices


def check_devices_visible(devices: list[str]) -> None:
    """Refuse --devices before any work when this torch has no CUDA or fewer devices than listed."""
    if not devices:
        return
    import torch

    listed = f"--devices {','.join(devices)}"
    if not torch.cuda.is_available():
        reason = (
            "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        )
        raise UserError(
            f"{listed}: {reason} (torch {torch.__version__}); drop --devices to run on the CPU "
            "(--workers N chooses the number of CPU processes)"
        )
    visible = torch.cuda.device_count()
    beyond = sorted({device for device in devices if int(device) >= visible}, key=int)
    if beyond:
        raise UserError(
            f"{listed}: device(s) {', '.join(beyond)} do not exist; {visible} CUDA device(s) are visible, "
            f"so the allowed indices are 0 to {visible - 1}"
        )
