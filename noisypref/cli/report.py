"""`noisypref report`: the findings of a study first (which methods hold up, by how much, how sure),
then robustness curves, diagnostics, detailed tables and an appendix."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "report"
HELP = "write the report of a study folder (findings, curves, tables, tests) into DIR/report/"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Read DIR/results.parquet (plus DIR/metrics.json, DIR/study.yaml and DIR/runs/<run_id>/ where "
            "present) and write DIR/report/: report.html (one self-contained file), report.md, figures/ "
            "(PNG and SVG), figures.pdf, tables/ (Markdown and LaTeX), findings.csv, intervals.csv, "
            "summary.csv and paired_tests.csv. The report opens with its findings: each method against the "
            "baseline on the primary metrics with 95 % hierarchical bootstrap intervals, Holm-adjusted "
            "p-values and a verdict. Only result files are read; sections whose inputs are missing are "
            "replaced by a note."
        ),
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="study folder (the one `noisypref run` wrote)")
    parser.add_argument(
        "--baseline",
        metavar="LABEL",
        help=(
            "method label the findings and paired tests compare against (default: report.baseline of "
            "study.yaml, else 'dpo'; a default that is not a label falls back to the first label, with a note)"
        ),
    )
    parser.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help="metric column to report (repeatable; default: every metric with a value)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="target flip rate of the training curves and γ diagnostics (default: the highest)",
    )
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from noisypref.reports import write_report

    html_path = write_report(args.dir, baseline=args.baseline, metrics=args.metric, curve_rate=args.rate)
    print(f"report written to {html_path} (and {html_path.with_name('report.md')})")
    return 0
