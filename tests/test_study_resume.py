"""`noisypref run` resumes a study killed part-way (here in worker processes), and two processes
share one study folder safely.

The studies run as real `python -m noisypref run` processes whose executor (NOISYPREF_EXECUTOR) is
`slow_execute` below: a fake run that takes a moment and writes a journal line when it starts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
JOURNAL_VARIABLE = "NOISYPREF_TEST_JOURNAL"
DELAY_VARIABLE = "NOISYPREF_TEST_DELAY"
MEET_VARIABLE = "NOISYPREF_TEST_MEET"  # processes whose first runs wait for each other
WAIT_LIMIT_S = 120

STUDY = {
    "name": "resume",
    "noise": [{"model": "symmetric", "rates": [0, 0.2, 0.4]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
    "seeds": [0, 1],
}
RUNS = 3 * 2 * 2


def slow_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    journal = Path(os.environ[JOURNAL_VARIABLE])
    with open(journal, "a") as file:
        file.write(f"start {Path(run_dir).name} {os.getpid()}\n")
    meet = int(os.environ.get(MEET_VARIABLE, "0"))
    deadline = time.monotonic() + WAIT_LIMIT_S
    while meet and len(journal_pids(journal)) < meet and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(os.environ[DELAY_VARIABLE]))
    result = {
        "run_id": Path(run_dir).name,
        "status": "succeeded",
        "metrics": {"heldout_accuracy": 0.7 - run_config["noise"]["rate"]},
        "config": run_config,
        "seed": run_config["seed"],
        "realised_flip_rate": run_config["noise"]["rate"],
        "wall_time_s": 0.0,
    }
    temporary = Path(run_dir) / "result.json.tmp"
    temporary.write_text(json.dumps(result))
    os.replace(temporary, Path(run_dir) / "result.json")
    return result


def journal_starts(journal: Path) -> list[tuple[str, int]]:
    if not journal.exists():
        return []
    return [(line.split()[1], int(line.split()[2])) for line in journal.read_text().splitlines()]


def journal_pids(journal: Path) -> set[int]:
    return {pid for _, pid in journal_starts(journal)}


def start_study(
    study_file: Path, out: Path, journal: Path, *, delay: float, meet: int = 0, workers: int = 1
) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), str(TESTS), os.environ.get("PYTHONPATH")])),
        "NOISYPREF_EXECUTOR": "test_study_resume:slow_execute",
        JOURNAL_VARIABLE: str(journal),
        DELAY_VARIABLE: str(delay),
        MEET_VARIABLE: str(meet),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "noisypref",
            "run",
            str(study_file),
            "--out",
            str(out),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed as a whole
    )


def finished_runs(out: Path) -> dict[str, tuple[int, int]]:
    """run id -> (mtime_ns, inode) of its result.json."""
    results = (out / "runs").glob("*/result.json")
    return {path.parent.name: (path.stat().st_mtime_ns, path.stat().st_ino) for path in results}


def test_a_study_killed_part_way_resumes_without_redoing_or_duplicating_runs(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    out, journal = tmp_path / "out", tmp_path / "journal.txt"

    first = start_study(study_file, out, journal, delay=0.3)
    deadline = time.monotonic() + WAIT_LIMIT_S
    while len(finished_runs(out)) < 4:
        assert first.poll() is None, f"the study ended before it was killed: {first.communicate()}"
        assert time.monotonic() < deadline, "the study made no progress"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = finished_runs(out)
    assert 4 <= len(before) < RUNS

    second = start_study(study_file, out, journal, delay=0.0, workers=2)  # resumes in two worker processes
    stdout, stderr = second.communicate(timeout=WAIT_LIMIT_S)
    assert second.returncode == 0, stderr
    after = finished_runs(out)

    assert len(after) == RUNS  # nothing missing
    assert {run_id: after[run_id] for run_id in before} == before  # finished runs untouched
    starts = Counter(run_id for run_id, _ in journal_starts(journal))
    assert set(starts) == set(after)
    assert all(starts[run_id] == 1 for run_id in before)  # ... and not recomputed
    # One process computes one run at a time: at most one run was in flight when it was killed.
    assert sum(starts.values()) - RUNS <= 1
    assert len(journal_pids(journal)) >= 2  # the killed process, then the workers of the second
    assert f"{RUNS - len(before)} succeeded, 0 failed, {len(before)} skipped as already done" in stdout
    frame = pd.read_parquet(out / "results.parquet")
    assert len(frame) == RUNS and frame["run_id"].is_unique and set(frame["status"]) == {"succeeded"}


def test_two_processes_on_one_study_folder_never_compute_a_run_twice(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    out, journal = tmp_path / "out", tmp_path / "journal.txt"

    processes = [start_study(study_file, out, journal, delay=0.2, meet=2) for _ in range(2)]
    outputs = [process.communicate(timeout=WAIT_LIMIT_S) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr

    starts = journal_starts(journal)
    assert len(journal_pids(journal)) == 2  # both processes computed runs
    assert sorted(run_id for run_id, _ in starts) == sorted(set(run_id for run_id, _ in starts))
    assert len(starts) == RUNS == len(finished_runs(out))
    succeeded = [int(re.search(r"(\d+) succeeded", stdout).group(1)) for stdout, _ in outputs]
    assert sum(succeeded) == RUNS
