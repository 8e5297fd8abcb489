"""`noisypref validate`: check a study file and show the runs it expands to, without running anything."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "validate",
        help="check a study file and print its grid of runs",
        description=(
            "Load and validate a study file (every problem is reported at once, with its field path) "
            "and read its local data files, then print the expanded grid: how many runs and a table of them (run id, dataset, noise, "
            "rate, method, seed, model). Nothing is run."
        ),
    )
    parser.add_argument(
        "study", nargs="?", type=Path, help="study YAML file (default: the embedded default study)"
    )
    parser.add_argument("--count", action="store_true", help="print the counts only, not the table")
    parser.add_argument(
        "--elsewhere",
        action="store_true",
        help="the study is meant for another machine: do not check that its models resolve here "
        "(alias, local folder, cached or reachable hub id) or that flex_attention has CUDA",
    )
    parser.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from noisypref.benchmark.study import default_study_path, grid_point_count, load_study, plan_runs
    from noisypref.benchmark.study.preflight import check_preflight
    from noisypref.cli.run import check_data_files

    path = args.study or default_study_path()
    study = load_study(path)
    check_data_files(study, path)
    check_preflight(study, path, machine=not args.elsewhere)
    runs = plan_runs(study)
    print(f"{path}: study {study.name!r} is valid")
    print(describe_grid(study, grid_point_count(study), len(runs)))
    if not args.count:
        print()
        print(run_table(runs))
    return 0


def describe_grid(study, grid_points: int, runs: int) -> str:
    noise_points = sum(len(noise.rates) for noise in study.noise)
    cleaning = f"{len(study.cleaning)} cleaning entries x " if len(study.cleaning) > 1 else ""
    text = (
        f"grid: {len(study.datasets)} dataset(s) x {noise_points} (noise model, rate) x {cleaning}"
        f"{len(study.method_variants())} method setting(s) x {len(study.seeds)} seed(s) x "
        f"{len(study.models)} model(s) = {grid_points} grid points -> {runs} runs"
    )
    if runs < grid_points:
        text += (
            f" ({grid_points - runs} grid points merged into identical runs: "
            "a rate-0 run is the same for every noise model)"
        )
    return text


def run_table(runs) -> str:
    import pandas as pd

    table = pd.DataFrame(
        {
            "run_id": [run.run_id for run in runs],
            "dataset": [run.dataset for run in runs],
            "noise": [run.noise_model for run in runs],
            "rate": [run.noise_rate for run in runs],
            "method": [run.method for run in runs],
            "seed": [run.seed for run in runs],
            "model": [run.model for run in runs],
        }
    )
    if any(run.cleaning != "none" for run in runs):  # a study with a cleaning axis (docs/cleaning.md)
        table.insert(4, "cleaning", [run.cleaning for run in runs])
    return table.to_string(index=False)
