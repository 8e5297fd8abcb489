"""`noisypref methods`: list every registered method with its hyperparameters and defaults."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "methods",
        help="list the registered preference-optimisation methods",
        description=(
            "List every registered method: its loss, its source, whether it needs a reference "
            "model, and each hyperparameter with its default. Use these names and hyperparameters "
            "in the `methods:` section of a study file."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from noisypref.methods import METHODS, available_methods, hyperparameter_defaults

    entries = []
    for name in available_methods():
        cls = METHODS[name]
        entries.append(
            {
                "name": name,
                "loss": cls.summary,
                "source": cls.source,
                "needs_reference": cls.requires_reference,
                "hyperparameters": hyperparameter_defaults(name),
            }
        )
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for entry in entries:
        reference = "reference model" if entry["needs_reference"] else "reference-free"
        print(f"{entry['name']}  ({entry['source']}; {reference})")
        print(f"    loss: {entry['loss']}")
        settings = ", ".join(f"{key}={value!r}" for key, value in entry["hyperparameters"].items())
        print(f"    hyperparameters: {settings}")
    print(f"\n{len(entries)} methods. Build one in Python with noisypref.methods.build(name, **hyperparameters).")
    return 0
