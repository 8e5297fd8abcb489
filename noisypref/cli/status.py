"""`noisypref status`: what a study folder holds: done, running, failed and pending runs."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

COMMAND = "status"
HELP = "show the done, running, failed and pending runs of a study folder"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Count the runs of the study in DIR (its study.yaml) by state: done (result.json in place), "
            "running (a process holds the run's lock), failed (failure.json; the reason is shown) and "
            "pending; list the running and failed ones, each running run with its phase, step/total and "
            "ETA from the heartbeat file the run updates (runs/<run_id>/heartbeat.json)."
        ),
    )
    parser.add_argument("out", type=Path, metavar="DIR", help="a study's output folder")
    parser.add_argument("--all", action="store_true", help="list every run, pending and done ones too")
    parser.set_defaults(func=run_status)


def run_status(args: argparse.Namespace) -> int:
    from noisypref.benchmark.progress import HEARTBEAT_FILE, describe_heartbeat, read_heartbeat
    from noisypref.benchmark.study import StudyFolder
    from noisypref.benchmark.study.folder import DONE, FAILED, PENDING, RUNNING, STATES
    from noisypref.folder_layout import RUNS_FOLDER

    folder = StudyFolder(args.out)
    name, runs = folder.planned_runs()
    statuses = [folder.status(run) for run in runs]
    counts = Counter(status.state for status in statuses)
    print(
        f"study {name!r} in {args.out}: {len(runs)} runs: "
        + ", ".join(f"{counts[state]} {state}" for state in STATES)
    )
    for state in (RUNNING, FAILED, PENDING, DONE) if args.all else (RUNNING, FAILED):
        for status in (status for status in statuses if status.state == state):
            reason = f": {status.reason}" if status.reason else ""
            if state == RUNNING:
                beat = read_heartbeat(folder.run_dir(status.run.run_id) / HEARTBEAT_FILE)
                reason = f": {describe_heartbeat(beat)}" if beat is not None else ": starting (no heartbeat yet)"
            print(f"  {state:<8} {status.run.run_id}  {status.run.describe()}{reason}")
    known = {run.run_id for run in runs}
    runs_folder = args.out / RUNS_FOLDER
    others = (
        [path.name for path in runs_folder.iterdir() if path.is_dir() and path.name not in known]
        if runs_folder.is_dir()
        else []
    )
    if others:
        print(f"  ({len(others)} other run folder(s) in {runs_folder} are not runs of this study)")
    return 0
