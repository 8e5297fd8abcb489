"""`noisypref noise`: the acceptance run on HH-RLHF, formats, listing and errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from noisypref.cli import USER_ERROR_STATUS, main
from noisypref.noise_injection import NOISE_MODELS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_RLHF_FILE = SHARED_DATA / "hh_rlhf" / "harmless-base-test.jsonl.gz"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"the public test data folder {SHARED_DATA} is absent"
)


@pytest.fixture(autouse=True, scope="module")
def no_progress_bars():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def read_flips(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@needs_shared_data
def test_symmetric_noise_on_hh_rlhf_flips_694_of_2312_pairs_reproducibly(tmp_path, capsys):
    outputs = []
    for run in ("first", "second"):
        out = tmp_path / run
        argv = ["noise", "--data", str(HH_RLHF_FILE), "--model", "symmetric", "--rate", "0.3", "--seed", "1"]
        assert main([*argv, "--out", str(out)]) == 0
        assert "flipped 694 of 2312 pairs" in capsys.readouterr().out
        outputs.append(out)

    first, second = outputs
    for name in ("noisy.jsonl", "flips.csv", "flips.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()

    flips = read_flips(first / "flips.csv")
    assert len(flips) == 2312
    assert sum(row["is_flipped"] == "True" for row in flips) == 694  # round(0.3 * 2312)
    summary = json.loads((first / "flips.json").read_text())
    assert (summary["num_flipped"], summary["num_pairs"]) == (694, 2312)

    # The noisy file holds every pair once, in order, labels swapped exactly where flips.csv says.
    noisy = [json.loads(line) for line in (first / "noisy.jsonl").read_text(encoding="utf-8").splitlines()]
    with gzip.open(HH_RLHF_FILE, "rt", encoding="utf-8") as file:
        raw = [json.loads(line) for line in file]
    assert [row["pair_id"] for row in noisy] == [row["pair_id"] for row in flips]
    for row, original, flip in zip(noisy, raw, flips, strict=True):
        expected = (original["chosen"], original["rejected"])
        if flip["is_flipped"] == "True":
            expected = expected[::-1]
        assert (row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]) == expected


def test_model_options_and_parquet_output(tmp_path, capsys):
    rows = [
        {
            "prompt": f"q{i}",
            "chosen": f"good {i}",
            "rejected": f"bad {i}",
            "score_chosen": i / 10,
            "score_rejected": 0.0,
        }
        for i in range(40)
    ]
    data_path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(data_path, "wt", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    out = tmp_path / "out"
    argv = ["noise", "--data", str(data_path), "--model", "confidence", "--rate", "0.25", "--seed", "5"]
    argv += [
        "--option",
        "mode=bernoulli",
        "--option",
        "temperature=0.5",
        "--format",
        "parquet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "confidence noise, seed 5" in capsys.readouterr().out

    noisy = pd.read_parquet(out / "noisy.parquet")
    flips = read_flips(out / "flips.csv")
    summary = json.loads((out / "flips.json").read_text())
    assert summary["options"] == {"temperature": 0.5, "mode": "bernoulli"}
    assert all(0.0 < float(row["flip_probability"]) <= 1.0 for row in flips)
    for noisy_row, original, flip in zip(noisy.itertuples(), rows, flips, strict=True):
        swapped = flip["is_flipped"] == "True"
        assert noisy_row.chosen == (original["rejected"] if swapped else original["chosen"])
        assert noisy_row.score_chosen == (original["score_rejected"] if swapped else original["score_chosen"])


def test_list_shows_every_model_with_its_options(capsys):
    assert main(["noise", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in NOISE_MODELS:
        assert f"{name}: " in listing
    assert "mode (default 'exact')" in listing
    assert "temperature (default 1.0)" in listing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rate", "1.5"], "flip rate 1.5"),
        (["--rate", "0.2", "--option", "colour=red"], "no option 'colour'"),
        (["--rate", "0.2", "--option", "mode"], "not of the form KEY=VALUE"),
    ],
)
def test_bad_arguments_exit_with_status_2_and_a_message(tmp_path, capsys, extra, message):
    data_path = tmp_path / "pairs.jsonl"
    data_path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    argv = ["noise", "--data", str(data_path), "--model", "symmetric", "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == USER_ERROR_STATUS
    error = capsys.readouterr().err
    assert "noisypref noise: error:" in error and message in error
    assert not (tmp_path / "out").exists()


def test_missing_arguments_are_named(capsys):
    assert main(["noise", "--model", "symmetric"]) == USER_ERROR_STATUS
    assert "missing --data, --rate, --out" in capsys.readouterr().err


def test_a_flip_record_reads_back_from_its_files(tmp_path, capsys):
    from noisypref.noise_injection import FlipRecord, inject

    rows = [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "score_chosen": i / 10, "score_rejected": 0.0}
        for i in range(30)
    ]
    rows[3]["rejected"] = rows[3]["chosen"]  # one identical pair
    data_path = tmp_path / "pairs.jsonl"
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["noise", "--data", str(data_path), "--model", "confidence", "--rate", "0.3", "--seed", "2"]
    assert main([*argv, "--option", "mode=bernoulli", "--out", str(out)]) == 0
    capsys.readouterr()

    read = FlipRecord.read(out / "flips.csv")
    from noisypref.benchmark.data.loaders import load_preferences

    _, original = inject(load_preferences(str(data_path)), "confidence", 0.3, 2, mode="bernoulli")
    assert read.summary() == original.summary()
    pd.testing.assert_frame_equal(read.table, original.table)
    assert read.identical_pairs == 1

    (out / "flips.json").write_text(json.dumps({**original.summary(), "num_flipped": 0}), encoding="utf-8")
    with pytest.raises(ValueError, match="do not belong together"):
        FlipRecord.read(out / "flips.csv")
    (out / "flips.json").unlink()
    with pytest.raises(ValueError, match=r"flips\.csv: no flips\.json .* or result\.json"):
        FlipRecord.read(out / "flips.csv")
