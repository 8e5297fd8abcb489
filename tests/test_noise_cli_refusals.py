"""`noisypref noise` mistakes: a failed command leaves --out as it found it (no empty folder, no part of
an output), and an option given twice is refused instead of the last one silently winning (a file type
given as a second --format is pointed to --file-type); --split on a local file, a seed outside the study
bound and an --out holding an earlier output are refused. Exit status 2, one message naming the option
and both values or the file. A noise model whose realised rate is far from the target warns and says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, cli, write_pairs


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


# ---------------------------------------------------------------------------------------------
# Flags a run would trip on, and a realised rate far from the target (issue 19)


def noise(capsys, data: Path, out: Path, *flags: object) -> tuple[int, str, str]:
    return cli(capsys, "noise", "--data", data, "--model", "symmetric", "--rate", 0.2, "--out", out, *flags)


def test_noise_split_on_a_local_file_is_refused(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    status, _, err = noise(capsys, data, tmp_path / "out", "--split", "test")
    assert_user_error(status, err, "--split 'test'", data, "hub dataset")
    assert not (tmp_path / "out").exists()


def test_noise_seed_outside_the_study_bound_is_refused(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    for seed in (-1, 2**32):
        status, _, err = noise(capsys, data, tmp_path / "out", "--seed", seed)
        assert_user_error(status, err, f"--seed {seed}", ">= 0 and <= 4294967295")
    assert not (tmp_path / "out").exists()
    assert noise(capsys, data, tmp_path / "out", "--seed", 2**32 - 1)[0] == 0


def test_noise_out_onto_an_earlier_output_is_refused_unless_forced(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "out"
    assert noise(capsys, data, out, "--seed", 1)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    status, _, err = noise(capsys, data, out, "--seed", 2)
    assert_user_error(status, err, out / "noisy.jsonl", out / "flips.csv", out / "flips.json", "--force")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert noise(capsys, data, out, "--seed", 2, "--force")[0] == 0
    assert json.loads((out / "flips.json").read_text())["seed"] == 2


def test_annotators_far_from_the_target_rate_warn_and_say_why(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", 400)
    status, out, err = cli(
        capsys, "noise", "--data", data, "--model", "annotators", "--rate", 0.2, "--option", "accuracy=0.3",
        "--out", tmp_path / "annotators",
    )  # fmt: skip
    assert status == 0, err
    # Three annotators wrong with probability 0.7 each: the majority errs with 3 * 0.7^2 * 0.3 + 0.7^3.
    expected_rate = 3 * 0.7**2 * 0.3 + 0.7**3
    assert "warning: the realised flip rate" in err and "far from the target 0.2 (400 pairs)" in err, err
    assert "3 annotator(s) with accuracy 0.3" in err and f"expected rate is {expected_rate:.4f}" in err, err
    realised = json.loads((tmp_path / "annotators" / "flips.json").read_text())["realised_rate"]
    assert f"{realised:.4f}" in err
    # A calibrated model gives no warning.
    status, _, err = noise(capsys, data, tmp_path / "symmetric", "--option", "mode=exact")
    assert status == 0 and "warning" not in err, err
