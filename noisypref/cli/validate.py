"""`noisypref validate`: check a study file and show the runs it expands to, without running anything."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "validate"
HELP = "check a study file and print its grid of runs"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Load and validate a study file (every problem is reported at once, with its field path) "
            "and read its local data files, then print the expanded grid: how many runs, the competitors and "
            "their with/without pairs, the references (drawn, never ranked), and a table of the runs (run id, "
            "dataset, noise, rate, method, seed, model), references apart. Nothing is run."
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
    from noisypref.benchmark.study.grid import skipped_reference_points
    from noisypref.benchmark.study.preflight import check_preflight
    from noisypref.cli.run import check_data_files

    path = args.study or default_study_path()
    study = load_study(path)
    check_data_files(study, path)
    check_preflight(study, path, machine=not args.elsewhere)
    runs = plan_runs(study)
    print(f"{path}: study {study.name!r} is valid")
    print(describe_grid(study, grid_point_count(study), len(runs), skipped_reference_points(study)))
    print(describe_methods(study))
    if not args.count:
        competitors = [run for run in runs if not run.is_reference]
        references = [run for run in runs if run.is_reference]
        print()
        print(run_table(competitors))
        if references:
            print()
            print(f"reference runs ({len(references)}; drawn beside the competitors, never ranked):")
            print(run_table(references))
    return 0


def describe_grid(study, grid_points: int, runs: int, skipped_references: int = 0) -> str:
    from noisypref.benchmark.config.references import NO_REFERENCE

    noise_points = sum(len(noise.rates) for noise in study.noise)
    variants = study.method_variants()
    references = sum(1 for variant in variants if variant.reference_kind != NO_REFERENCE)
    methods = f"{len(variants)} method setting(s)"
    if references:
        methods += f" ({len(variants) - references} competitor(s), {references} reference(s))"
    cleaning = f"{len(study.cleaning)} cleaning entries x " if len(study.cleaning) > 1 else ""
    text = (
        f"grid: {len(study.datasets)} dataset(s) x {noise_points} (noise model, rate) x {cleaning}"
        f"{methods} x {len(study.seeds)} seed(s) x "
        f"{len(study.models)} model(s) = {grid_points} grid points -> {runs} runs"
    )
    merged = grid_points - skipped_references - runs
    if skipped_references:
        text += (
            f" ({skipped_references} reference grid points skipped: at rate 0 a clean_only run has no "
            "flipped pair to remove and a known-rate run gets ε = 0, so each is its base run; a method "
            "reference trains on the noisy pairs as they are, never after a cleaning entry)"
        )
    if merged:
        text += (
            f" ({merged} grid points merged into identical runs: "
            "a rate-0 run is the same for every noise model)"
        )
    return text


def describe_methods(study) -> str:
    """The competitors (ranked) with their with/without bases, then the references (drawn, never ranked)."""
    from noisypref.benchmark.config.references import CLEAN_ONLY, NO_REFERENCE, symbolic_hyperparameters
    from noisypref.cleaning.base import ORACLE_JUDGE

    variants = study.method_variants()
    bases = study.base_labels()
    competitors = [variant.label for variant in variants if variant.reference_kind == NO_REFERENCE]
    lines = [f"competitors (ranked): {', '.join(competitors)}"]
    pairs = [f"{label} against {base}" for label, base in bases.items() if base is not None]
    pairs += [f"{pair['method']} against {pair['base']} (report.pairs)" for pair in study.report.pairs]
    if pairs:
        lines.append(f"with/without pairs: {'; '.join(pairs)}")
    for variant in variants:
        if variant.reference_kind == CLEAN_ONLY:
            what = f"{variant.name} trained on the noisy pairs minus the flipped ones (the oracle)"
        elif variant.reference_kind != NO_REFERENCE:
            symbols = ", ".join(symbolic_hyperparameters(variant.hyperparameters))
            what = f"{variant.name} with {symbols} = each run's realised flip rate"
        else:
            continue
        lines.append(f"reference {variant.label} ({variant.reference_kind}, drawn, never ranked): {what}")
    for entry in study.cleaning:
        kind = NO_REFERENCE if entry.settings is None else entry.settings.reference_kind
        if kind == NO_REFERENCE:
            continue
        reads = "the flip record" if entry.settings.judge == ORACLE_JUDGE else "the realised flip rate (its budget)"
        lines.append(f"reference cleaning {entry.label} ({kind}, drawn, never ranked): reads {reads}, "
                     "which no real cleaner knows")  # fmt: skip
    return "\n".join(lines)


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
