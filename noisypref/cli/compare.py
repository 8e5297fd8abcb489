"""`noisypref compare`: two or more studies side by side, the same findings table for each."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "compare"
HELP = "put the findings of two or more study folders side by side"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Compute the findings of each study folder as `noisypref report` does (each method against the "
            "baseline at each flip rate and on the robustness AUC: difference, 95 % interval, Holm p, "
            "verdict) and print them as one Markdown document: what differs between the studies, then "
            "one table per primary metric with a column per study and condition."
        ),
    )
    parser.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="study folders (at least two)")
    parser.add_argument("--baseline", metavar="LABEL", help="method label to compare against in every study")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the Markdown to FILE")
    parser.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from noisypref.reports.compare import compare_studies

    markdown = compare_studies(args.dirs, baseline=args.baseline)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown, encoding="utf-8")
    print(markdown, end="")
    return 0
