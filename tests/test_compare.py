"""`noisypref compare` on studies that differ in what its table did not show: training and other
settings (steps 20 vs 30), runs that failed (their methods left short), the same folder given twice,
and a path that is a file. Mistakes exit 2 naming the path; nothing is written.
"""

from __future__ import annotations

import pandas as pd
import yaml
from cli_helpers import cli
from test_report_findings import STUDY_YAML, make_study


def with_settings(**sections) -> str:
    """STUDY_YAML with sections replaced (a resolved study.yaml, as `noisypref run` writes it)."""
    document = yaml.safe_load(STUDY_YAML) or {}
    document.update(sections)
    return yaml.safe_dump(document, sort_keys=False)


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith(f"| {first_cell}")
    ]


def test_differing_training_and_method_settings_are_flagged(tmp_path, capsys):
    first = make_study(tmp_path / "a", seeds=range(3), with_items=False, study_yaml=with_settings(
        training={"steps": 20, "batch_size": 8}, methods=[{"name": "dpo", "hyperparameters": {"beta": 0.1}}]))
    second = make_study(tmp_path / "b", seeds=range(3), with_items=False, study_yaml=with_settings(
        training={"steps": 30, "batch_size": 8}, methods=[{"name": "dpo", "hyperparameters": {"beta": 0.2}}]))  # fmt: skip
    status, markdown, err = cli(capsys, "compare", first, second)
    assert status == 0, err
    assert table_rows(markdown, "≠ training.steps") == [["≠ training.steps", "20", "30"]]
    assert table_rows(markdown, "≠ methods[dpo].hyperparameters.beta") == [
        ["≠ methods[dpo].hyperparameters.beta", "0.1", "0.2"]
    ]
    assert not table_rows(markdown, "≠ training.batch_size")  # equal settings are not listed


def test_failed_runs_are_reported_not_silently_dropped(tmp_path, capsys, caplog):
    first = make_study(tmp_path / "a", seeds=range(3), with_items=False)
    second = make_study(tmp_path / "b", seeds=range(3), with_items=False, seed=9)
    results = pd.read_parquet(second / "results.parquet")
    gamma = results["method_label"] == "gamma"
    results.loc[gamma, "status"] = "failed"
    results.loc[gamma, "failure_reason"] = "out of GPU memory"
    results.loc[gamma, "heldout_accuracy"] = None
    results.to_parquet(second / "results.parquet", index=False)
    status, markdown, err = cli(capsys, "compare", first, second)
    assert status == 0, err
    total = int(gamma.sum())
    assert table_rows(markdown, "≠ runs without a result") == [
        ["≠ runs without a result", "none", f"gamma: {total} failed of {total}"]
    ]
    assert "runs without a result enter no finding: gamma" in caplog.text


def test_the_same_folder_twice_is_refused(tmp_path, capsys, monkeypatch):
    study = make_study(tmp_path / "a", seeds=range(3), with_items=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "comparison.md"
    status, _, err = cli(capsys, "compare", study, "a/", "--out", out)
    assert status == 2, err
    assert "a is given twice" in err and "distinct study folders" in err
    assert not out.exists()


def test_a_file_is_named_as_a_file_not_as_missing(tmp_path, capsys):
    study = make_study(tmp_path / "a", seeds=range(3), with_items=False)
    status, _, err = cli(capsys, "compare", study, study / "results.parquet")
    assert status == 2, err
    assert f"{study / 'results.parquet'} is a file, not a study folder" in err and "does not exist" not in err
