"""`noisypref methods`: list every registered method with its hyperparameters and defaults."""

from __future__ import annotations

import argparse
import json

COMMAND = "methods"
HELP = "list the registered preference-optimisation methods"  # the line of `noisypref --help`


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "List every registered method: its loss, its source, whether it needs a reference "
            "model, each hyperparameter with its default, the base method of a method that adds a "
            "dynamic margin to one (a study compares the two: with and without), and the hyperparameters "
            "that are an assumed flip rate (a study may set them to realised_flip_rate). Use these names "
            "and hyperparameters in the `methods:` section of a study file."
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
                "base_method": cls.base_method,
                "flip_rate_hyperparameters": list(cls.flip_rate_hyperparameters),
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
        if entry["base_method"] is not None:
            print(f"    base method: {entry['base_method']} (this method without the dynamic margin)")
        if entry["flip_rate_hyperparameters"]:
            names = ", ".join(entry["flip_rate_hyperparameters"])
            print(f"    assumed flip rate: {names} (takes realised_flip_rate: each run's realised flip rate)")
    print(f"\n{len(entries)} methods. Build one in Python with noisypref.methods.build(name, **hyperparameters).")
    return 0
