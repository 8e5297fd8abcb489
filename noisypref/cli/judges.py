"""`noisypref judges`: list every registered cleaning judge with its source and options."""

from __future__ import annotations

import argparse
import json

COMMAND = "judges"
HELP = "list the registered data-cleaning judges"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "List every registered cleaning judge: what it scores, its source, whether it needs a model, and "
            "each option with its default. Use these names and options in the `cleaning:` section of a study "
            "file (docs/cleaning.md)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noisypref.cleaning import JUDGES

    entries = []
    for name in sorted(JUDGES):
        judge = JUDGES[name]
        entries.append(
            {
                "name": name,
                "description": judge.description,
                "source": judge.source,
                "reads_flip_record": judge.reads_flip_record,
                "needs_model": judge.make_options().needs_models,
                "options": {option: default for option, default, _ in judge.option_help()},
            }
        )
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for entry in entries:
        name = entry["name"]
        needs = "reads the flip record: a reference" if entry["reads_flip_record"] else (
            "needs the run's reference model" if entry["needs_model"] else "reads the data only"
        )  # fmt: skip
        print(f"{name}  ({entry['source']}; {needs})")
        print(f"    {entry['description']}")
        for option, default, help_text in JUDGES[name].option_help():
            print(f"    {option} (default {json.dumps(default)}): {help_text}")
        if not JUDGES[name].option_help():
            print("    (no options)")
    print(
        f"\n{len(entries)} judges. Treatments: remove, flip; budgets: estimated (the judge's own estimate), "
        "realised_rate, a fraction, {threshold: x}."
    )
    return 0
