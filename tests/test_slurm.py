"""Clusters (issue 18): runs submitted through submitit, each job executing `noisypref run --run-id`, the
study folder the only coordination. submitit's local executor runs the jobs as real processes from
real pickles: one job succeeds, one fails, one is killed mid-run and a second submission finishes it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from noisypref.benchmark.storage import write_json_atomic
from noisypref.benchmark.study import StudyFolder, parse_study, plan_runs
from noisypref.cli import main
from noisypref.cli.jobs import run_job

submitit = pytest.importorskip("submitit", reason="submitit (the slurm extra) is not installed")

from noisypref.benchmark.study import slurm  # noqa: E402 (after the skip: it is submitit's front)

TESTS = Path(__file__).resolve().parent
STUDY = {
    "name": "cluster",
    "noise": [{"model": "symmetric", "rates": [0.1]}],
    "methods": [
        {"name": "dpo"},
        {"label": "broken", "name": "dpo", "hyperparameters": {"beta": 0.2}},
        {"label": "slow", "name": "dpo", "hyperparameters": {"beta": 0.3}},
    ],
}
MARKERS_VARIABLE = "NOISYPREF_TEST_MARKERS"


def cluster_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """The run executor of the jobs: 'broken' raises; 'slow' records its pid and waits while the file
    'hold' exists; the others succeed at once."""
    markers = Path(os.environ[MARKERS_VARIABLE])
    label = run_config["method"]["label"]
    if label == "broken":
        raise RuntimeError("this run always fails")
    if label == "slow":
        (markers / "slow.pid").write_text(str(os.getpid()))
        deadline = time.monotonic() + 300
        while (markers / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    result = {"status": "succeeded", "metrics": {"heldout_accuracy": 0.5}, "pid": os.getpid()}
    write_json_atomic(Path(run_dir) / "result.json", result)
    return result


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(MARKERS_VARIABLE, str(markers))
    monkeypatch.setenv("NOISYPREF_EXECUTOR", f"{__name__}:cluster_execute")
    # the jobs are new Python processes: they import this module (and noisypref) from these paths
    paths = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path for path in paths if path))
    study_file = tmp_path / "study.json"
    study_file.write_text(json.dumps(STUDY))
    return tmp_path, study_file, markers


def _wait_for(path: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_jobs_run_the_runs_a_failure_is_recorded_and_a_killed_run_is_finished_by_a_rerun(cluster, capsys):
    tmp_path, study_file, markers = cluster
    out, cache = tmp_path / "out", tmp_path / "cache"
    study = parse_study(STUDY)
    runs = {run.method: run for run in plan_runs(study)}
    folder = StudyFolder(out)
    folder.prepare(study)
    (markers / "hold").touch()
    executor = submitit.LocalExecutor(folder=str(out / slurm.SUBMITIT_FOLDER))
    executor.update_parameters(timeout_min=10)
    run_ids = [runs[label].run_id for label in ("dpo", "broken", "slow")]
    jobs = dict(zip(("dpo", "broken", "slow"), slurm.submit_runs(executor, run_job, folder.study_file, out, cache, run_ids), strict=True))

    _wait_for(markers / "slow.pid")
    os.kill(int((markers / "slow.pid").read_text()), signal.SIGKILL)  # the job dies mid-run
    for job in jobs.values():
        job.wait()
    assert jobs["dpo"].exception() is None and jobs["dpo"].result() == 0
    assert "exited with status 1" in str(jobs["broken"].exception())
    assert jobs["slow"].exception() is not None  # killed: submitit reports the job as not completed

    # The study folder tells the same story: done, failed (with the reason), and pending (the kill
    # left no result and no failure; its lock died with the process).
    assert folder.is_done(runs["dpo"].run_id)
    assert "this run always fails" in folder.read_failure(runs["broken"].run_id)["reason"]
    assert not folder.is_done(runs["slow"].run_id) and folder.read_failure(runs["slow"].run_id) is None
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    assert "3 runs: 1 done, 0 running, 1 failed, 1 pending" in capsys.readouterr().out

    # Submitting again takes up the unfinished runs only: the killed one completes.
    (markers / "hold").unlink()
    again = slurm.submit_runs(executor, run_job, folder.study_file, out, cache, [runs["slow"].run_id])
    assert again[0].result() == 0
    assert folder.is_done(runs["slow"].run_id)


def test_launcher_slurm_submits_the_unfinished_runs_as_one_array(cluster, monkeypatch, capsys):
    tmp_path, study_file, _ = cluster
    out = tmp_path / "out"
    made = {}

    def local_executor(folder, settings):  # stands in for the cluster: same jobs, run here
        made["settings"] = settings
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=10)
        made["executor"] = executor
        return executor

    monkeypatch.setattr(slurm, "slurm_executor", local_executor)
    monkeypatch.setattr(slurm, "missing_slurm_commands", list)  # the stand-in cluster has what Slurm needs
    study = parse_study(STUDY)
    done = next(run for run in plan_runs(study) if run.method == "dpo")
    folder = StudyFolder(out)
    folder.prepare(study)
    write_json_atomic(folder.run_dir(done.run_id) / "result.json", {"status": "succeeded", "metrics": {}})
    broken = next(run for run in plan_runs(study) if run.method == "broken")
    argv = ["run", str(study_file), "--out", str(out), "--launcher", "slurm", "--slurm-partition", "gpu",
            "--slurm-gpus-per-job", "2", "--slurm-time", "90", "--run-id", done.run_id, "--run-id", broken.run_id]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert made["settings"] == slurm.SlurmSettings("gpu", 2, 90)
    assert "submitted 1 job(s)" in printed and f"{broken.run_id}  job " in printed  # the done run is not resubmitted
    _wait_for(folder.run_dir(broken.run_id) / "failure.json")  # the job ran the run, and recorded its failure
