"""Helpers of the tests that drive `noisypref` in this process: run a command, check a user error, write
small data and study files. Imported by test modules (``from cli_helpers import cli``); not a test module."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from noisypref.cli import main


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `noisypref ARGV`, run in this process."""
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return status, out, err


def assert_user_error(status: int, err: str, *names: object) -> None:
    assert status == 2, err
    assert "error:" in err, err
    for name in names:
        assert str(name) in err, (name, err)


def write_pairs(path: Path, count: int, **columns) -> Path:
    """`count` informative pairs as JSON lines; `columns` maps a column to a list of values (or one)."""
    rows = []
    for index in range(count):
        row = {
            "prompt": f"prompt {index}",
            "chosen": f"good answer {index}",
            "rejected": f"bad answer {index}",
        }
        for name, values in columns.items():
            row[name] = values[index] if isinstance(values, list) else values
        rows.append(row)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_study(path: Path, **sections) -> Path:
    """A small study file (symmetric noise at 0.2, DPO) with `sections` added or replaced."""
    study = {
        "name": "issue19",
        "noise": [{"model": "symmetric", "rates": [0.2]}],
        "methods": [{"name": "dpo"}],
    }
    study.update(sections)
    path.write_text(yaml.safe_dump(study))
    return path
