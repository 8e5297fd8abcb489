"""`noisypref collect`: gather a study folder's results into DIR/results.parquet."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "collect"
HELP = "write DIR/results.parquet: one row per run of a study"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Write DIR/results.parquet with one row per run of the study in DIR: study, run_id, dataset, "
            "noise_model, target_flip_rate, realised_flip_rate, method_label, method_name, "
            "hyperparameters (JSON, and one hp_<name> column each), seed, model, every metric, "
            "wall_time_s, status (succeeded / failed / pending) and failure_reason. `noisypref run` "
            "does this at its end; run it after cluster jobs (`run --run-id`)."
        ),
    )
    parser.add_argument("out", type=Path, metavar="DIR", help="a study's output folder")
    parser.set_defaults(func=run_collect)


def run_collect(args: argparse.Namespace) -> int:
    import pandas as pd

    from noisypref.benchmark.study import StudyFolder, collect_results

    path = collect_results(StudyFolder(args.out))
    counts = pd.read_parquet(path, columns=["status"])["status"].value_counts()
    print(f"wrote {path}: {counts.sum()} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    return 0
