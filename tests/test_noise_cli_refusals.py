"""`noisypref noise` mistakes: a failed command leaves --out as it found it (no empty folder, no part of
an output), and an option given twice is refused instead of the last one silently winning (a file type
given as a second --format is pointed to --file-type). Exit status 2, one message naming the option
and both values or the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noisypref.cli import main


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    try:
        status = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return status, out, err


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"  # no score columns: what the confidence model needs is missing
    rows = [{"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--model", "confidence"], "needs the column(s) score_chosen, score_rejected"),
        (["--model", "symmetric", "--data-option", "data_dir=x"], "data_dir apply to hub datasets only"),
    ],
    ids=["confidence-without-scores", "data-option-on-a-file"],
)
def test_a_failed_noise_command_leaves_no_output_folder(tmp_path, capsys, pairs, flags, named):
    out = tmp_path / "out"
    status, _, err = cli(capsys, "noise", "--data", pairs, "--rate", "0.2", "--out", out, *flags)
    assert status == 2 and str(pairs) in err and named in err, err
    assert not out.exists()
    # a folder that existed keeps what it held, and gains nothing
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    status, _, _ = cli(capsys, "noise", "--data", pairs, "--rate", "0.2", "--out", out, *flags)
    assert status == 2 and [path.name for path in out.iterdir()] == ["notes.txt"]


def test_a_repeated_format_is_refused_pointing_a_file_type_to_file_type(tmp_path, capsys, pairs):
    out = tmp_path / "out"
    status, _, err = cli(
        capsys, "noise", "--data", pairs, "--model", "symmetric", "--rate", "0.2", "--out", out,
        "--format", "same", "--format", "parquet",
    )  # fmt: skip
    assert status == 2
    assert "argument --format: given twice (same, then parquet)" in err
    assert "parquet is a file type: give --format same --file-type parquet" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("repeated", "message"),
    [
        (["--out", "a", "--out", "b"], "argument --out: given twice (a, then b)"),
        (["--rate", "0.2", "--rate", "0.4"], "argument --rate: given twice (0.2, then 0.4)"),
        (["--seed", "1", "--seed", "2"], "argument --seed: given twice (1, then 2)"),
    ],
    ids=["out", "rate", "seed"],
)
def test_any_repeated_single_value_option_is_refused(tmp_path, capsys, pairs, monkeypatch, repeated, message):
    monkeypatch.chdir(tmp_path)
    given = {"--data": str(pairs), "--model": "symmetric", "--rate": "0.2", "--out": "a"}
    given.pop(repeated[0], None)
    argv = [part for flag, value in given.items() for part in (flag, value)] + repeated
    status, _, err = cli(capsys, "noise", *argv)
    assert status == 2 and message in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_two_file_types_are_refused(tmp_path, capsys, pairs):
    out = tmp_path / "out"
    status, _, err = cli(capsys, "noise", "--data", pairs, "--model", "symmetric", "--rate", "0.2", "--out", out,
                         "--format", "parquet", "--file-type", "jsonl")  # fmt: skip
    assert status == 2 and "--format parquet and --file-type jsonl name two file types" in err
    assert not out.exists()
