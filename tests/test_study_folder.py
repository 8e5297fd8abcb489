"""What a study folder holds across runs (issue 19): a torn result.json is not done, is named and is run
again; Ctrl-C while the report is written keeps the runs and names the report command; --force moves the
previous study's runs into superseded/, deleting nothing. The studies run with a fake executor (no
training)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli, write_study

from noisypref.benchmark.storage import write_json_atomic

STUDY = {
    "name": "folder",
    "noise": [{"model": "symmetric", "rates": [0, 0.2]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
    "evaluation": {"num_eval_prompts": 128},
}


def fake_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """A fake run writing result.json last, atomically, as the engine does."""
    result = {
        "run_id": Path(run_dir).name,
        "status": "succeeded",
        "metrics": {"heldout_accuracy": 0.75 - run_config["noise"]["rate"]},
        "config": run_config,
        "wall_time_s": 0.0,
    }
    write_json_atomic(Path(run_dir) / "result.json", result)
    return result


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{Path(__file__).stem}:fake_execute")


def results(out: Path) -> dict[str, int]:
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("runs/*/result.json")}


def test_a_torn_result_is_not_done_is_named_and_is_rerun(tmp_path, capsys, caplog, fake_engine):
    study, out = write_study(tmp_path / "study.yaml", **STUDY), tmp_path / "out"
    assert cli(capsys, "run", study, "--out", out, "--workers", 1, "--no-report")[0] == 0
    finished = results(out)
    torn = next(iter(sorted(out.glob("runs/*/result.json"))))
    torn.write_text(torn.read_text()[:40])
    caplog.set_level(logging.WARNING)
    status, stdout, err = cli(capsys, "status", out)
    assert status == 0, err
    assert "4 runs: 3 done, 0 running, 0 failed, 1 pending" in stdout
    assert str(torn) in caplog.text and "unreadable" in caplog.text
    caplog.clear()
    status, stdout, _ = cli(capsys, "collect", out)
    assert status == 0 and "3 succeeded" in stdout and "1 pending" in stdout
    assert str(torn) in caplog.text
    status, stdout, _ = cli(capsys, "run", study, "--out", out, "--workers", 1, "--no-report")
    assert status == 0 and "1 succeeded, 0 failed, 3 skipped" in stdout
    again = results(out)
    assert json.loads(torn.read_text())["status"] == "succeeded"
    assert {run: mtime for run, mtime in again.items() if run != torn.parent.name} == {
        run: mtime for run, mtime in finished.items() if run != torn.parent.name
    }


def test_ctrl_c_while_writing_the_report_keeps_the_runs_and_names_the_report_command(
    tmp_path, capsys, monkeypatch, fake_engine
):
    import noisypref.reports

    def interrupted(out):
        raise KeyboardInterrupt

    monkeypatch.setattr(noisypref.reports, "write_report", interrupted)
    study, out = write_study(tmp_path / "study.yaml", **STUDY), tmp_path / "out"
    status, _, err = cli(capsys, "run", study, "--out", out, "--workers", 1)
    assert status == 130
    assert "interrupted while writing the report" in err and "All runs are kept (4 of 4 finished)" in err, err
    assert f"noisypref report {out}" in err
    assert len(results(out)) == 4 and (out / "results.parquet").is_file()


def test_force_moves_the_previous_studys_runs_into_superseded(tmp_path, capsys, caplog, fake_engine):
    out = tmp_path / "out"
    first = write_study(tmp_path / "first.yaml", **STUDY)
    assert cli(capsys, "run", first, "--out", out, "--workers", 1, "--no-report")[0] == 0
    first_runs = results(out)
    second = write_study(
        tmp_path / "second.yaml", **{**STUDY, "name": "second", "methods": [{"name": "dpo"}]}
    )
    caplog.set_level(logging.WARNING)
    status, stdout, _ = cli(capsys, "run", second, "--out", out, "--workers", 1, "--no-report", "--force")
    assert status == 0
    assert "0 succeeded, 0 failed, 2 skipped" in stdout  # the two dpo runs are shared and kept
    (superseded,) = (out / "superseded").iterdir()
    moved = {path.parent.name: path.stat().st_mtime_ns for path in superseded.glob("runs/*/result.json")}
    assert len(moved) == 2 and not set(moved) & set(results(out))
    assert {**moved, **results(out)} == first_runs  # nothing deleted, nothing rewritten
    assert yaml.safe_load((superseded / "study.yaml").read_text())["methods"][1]["name"] == "ipo"
    assert (
        "2 run folder(s)" in caplog.text
        and str(superseded) in caplog.text
        and "nothing deleted" in caplog.text
    )
