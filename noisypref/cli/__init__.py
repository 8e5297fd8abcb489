"""The `noisypref` command line.

Each sub-command is one module in this package exposing ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed arguments, returning an exit status).
Adding a command is adding a module and one line to ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from noisypref import __version__

COMMAND_MODULES = [
    "noisypref.cli.methods",
    "noisypref.cli.noise",
    "noisypref.cli.alpacaeval",
    "noisypref.cli.report",
    "noisypref.cli.validate",
    "noisypref.cli.run",
    "noisypref.cli.status",
    "noisypref.cli.collect",
]

USER_ERROR_STATUS = 2


class UserError(Exception):
    """A mistake in what the user asked for: shown as one message, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="noisypref",
        description=(
            "Preference optimisation under noisy labels: inject controlled label flips into a "
            "preference dataset, train DPO-family methods with and without dynamic target margins "
            "(gamma-PO), evaluate and report robustness."
        ),
        epilog="Run `noisypref COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"noisypref {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return USER_ERROR_STATUS
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as error:
        print(f"noisypref {args.command}: error: {error}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"noisypref {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
