"""`noisypref alpacaeval`: score an AlpacaEval annotations file (win rate, standard error, LC win rate)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMMAND = "alpacaeval"
HELP = "score AlpacaEval 2 annotations: win rate, standard error, length-controlled win rate"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Score an annotations.json in the alpaca-eval package's format with its own metric functions: "
            "the leaderboard's win rate and standard error, and a length-controlled win rate. The LC "
            "variant is always named: 'official' (the package's GLM; needs df_gamed.csv from the hub "
            "dataset tatsu-lab/alpaca_eval) or 'offline-glm' (the package's minimal GLM fitted on these "
            "annotations alone; not comparable with the leaderboard's LC). See docs/benchmarks.md."
        ),
    )
    parser.add_argument("--annotations", required=True, type=Path, metavar="FILE", help="annotations.json (or .jsonl, plain or .gz)")
    parser.add_argument("--baseline", help="baseline generator (generator_1) to score against, if several")
    parser.add_argument("--model", help="model generator (generator_2) to score, if several")
    parser.add_argument(
        "--lc-variant",
        choices=["auto", "official", "offline-glm"],
        default="auto",
        help="auto: official if the hub files can be fetched, else offline-glm (default: auto)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noisypref.benchmark.evaluation.alpaca_eval import score_annotations

    score = score_annotations(
        args.annotations, model=args.model, baseline=args.baseline, lc_variant=args.lc_variant
    )
    if args.json:
        print(json.dumps(score.to_dict(), indent=2))
        return 0
    lc_error = "" if score.lc_standard_error is None else f" ± {score.lc_standard_error:.2f}"
    print(
        f"{score.model} vs {score.baseline}: {score.n_total} annotations by {score.annotator or 'unknown annotator'}"
    )
    print(
        f"  win rate                     {score.win_rate:.2f} ± {score.standard_error:.2f} (standard error)"
    )
    lc_value = (
        "not available"
        if score.length_controlled_winrate is None
        else f"{score.length_controlled_winrate:.2f}{lc_error}"
    )
    print(f"  length-controlled win rate   {lc_value} [{score.lc_variant}]")
    print(f"  wins / losses / draws        {score.n_wins} / {score.n_wins_base} / {score.n_draws}")
    if score.n_dropped_null:
        print(f"  left out (null preference)   {score.n_dropped_null}")
    if score.lc_note:
        print(f"  note: {score.lc_note}")
    return 0
