"""The `noisypref` command line.

Each sub-command is one module in this package exposing ``COMMAND`` (its name), ``HELP`` (its line in
`noisypref --help`) and ``register(subparsers)``, which adds its parser and sets ``func`` (called with
the parsed arguments, returning an exit status). Adding a command is adding a module and one line to
``COMMAND_MODULES``.

The command line answers at once: a command module imports only the standard library at its top; what
a command needs (torch, datasets, the registries its options list) it imports in ``register`` and in
the function that runs it, and only the command named on the command line is registered in full --
`noisypref --help`, `--version` and `status` import no torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import tempfile
from pathlib import Path

from noisypref import __version__

COMMAND_MODULES = [
    "noisypref.cli.methods",
    "noisypref.cli.noise",
    "noisypref.cli.judges",
    "noisypref.cli.alpacaeval",
    "noisypref.cli.report",
    "noisypref.cli.compare",
    "noisypref.cli.validate",
    "noisypref.cli.run",
    "noisypref.cli.status",
    "noisypref.cli.collect",
]

USER_ERROR_STATUS = 2


# Errors of the file system the user's paths point into (a folder given for a file, no permission,
# a read-only or full disk): shown as one message naming the path, exit status 2.
FILE_SYSTEM_ERRORS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EISDIR, errno.ENOTDIR,
    errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP,
}  # fmt: skip


class UserError(Exception):
    """A mistake in what the user asked for: shown as one message, exit status 2, no traceback."""


class StoreOnce(argparse.Action):
    """An option that takes one value and may be given once: a second occurrence is refused (argparse
    would silently keep the last), naming both values."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001 (argparse's)
        given = namespace.__dict__.setdefault("_options_given", {})
        if self.dest in given:
            parser.error(self.refusal(option_string, given[self.dest], values))
        given[self.dest] = values
        setattr(namespace, self.dest, values)

    def refusal(self, option_string: str, first: object, second: object) -> str:
        return f"argument {option_string}: given twice ({first}, then {second}); give it once"


def describe_os_error(error: OSError) -> str:
    """The message of a file-system error: the path, the reason, and what to do about a full disk."""
    text = f"{error.filename}: {error.strerror or error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        text += "; free some space and run the same command again (finished work is kept)"
    return text


def make_output_folder(path: Path, what: str) -> None:
    """Create the folder `path` if needed and check a file can be written in it; UserError naming
    the folder otherwise, before any work is done."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        reason = "it is a file, not a folder" if path.is_file() else error.strerror or str(error)
        raise UserError(f"{what} {path} cannot be written: {reason}") from None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of the command line; ``command``'s module adds its options, the other commands
    are listed by name and help line (their options are parsed only when they are named)."""
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
        module = importlib.import_module(module_name)
        if module.COMMAND == command:
            module.register(subparsers)
        else:
            subparsers.add_parser(module.COMMAND, help=module.HELP)
    return parser


def named_command(argv: list[str]) -> str | None:
    """The command an argument list names: its first word that is not an option (none of the options
    before the command takes a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(named_command(argv))
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
    except OSError as error:
        if error.errno not in FILE_SYSTEM_ERRORS or error.filename is None:
            raise  # not about a path the user gave or a disk: an internal error, shown with its traceback
        print(f"noisypref {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"noisypref {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
