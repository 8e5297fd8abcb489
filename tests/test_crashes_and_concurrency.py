"""Crashes and concurrency lose nothing: `noisypref run` killed (SIGKILL) at random moments and resumed,
interrupted with Ctrl-C (SIGINT), run twice at once on one folder, and a lock left by a killed process.

The studies run a fake engine (NOISYPREF_EXECUTOR = `journaled_execute` below) that takes a moment,
writes files as the engine does (intermediate files directly, result.json atomically, a shared cache
under a file lock) and journals when each run starts and ends. The processes are forked from this
one (no interpreter start-up), except for the Ctrl-C test, which runs `python -m noisypref`.
scripts/crash_harness.py does the same with the real engine and many more kills.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch
import yaml
from tqdm import tqdm

from noisypref.benchmark.engine.reference import reference_logps
from noisypref.benchmark.storage import cached_torch_file, write_json_atomic
from noisypref.cli import main

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FORK = multiprocessing.get_context("fork")
JOURNAL_VARIABLE = "NOISYPREF_TEST_JOURNAL"
DELAY_VARIABLE = "NOISYPREF_TEST_DELAY"  # seconds a fake run takes
CACHE_BUILD_S = 0.1
EXECUTOR = f"{Path(__file__).stem}:journaled_execute"
WAIT_LIMIT_S = 60

STUDY = {
    "name": "crash",
    "noise": [{"model": "symmetric", "rates": [0, 0.2, 0.4]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
    "seeds": [0, 1],
}
RUNS = 3 * 2 * 2


def journaled_execute(run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None) -> dict:
    """A fake run: journal its start, write metrics lines over its duration, read a shared cache,
    write result.json atomically (as the engine does), journal its end."""
    run_dir, run_id = Path(run_dir), Path(run_dir).name
    journal(run_id, "start")
    steps, delay = 5, float(os.environ[DELAY_VARIABLE])
    shared = cached_torch_file(Path(cache_dir) / "shared.pt", slow_build, "shared test value")
    with open(run_dir / "metrics.jsonl", "a") as metrics:
        for step in range(1, steps + 1):
            time.sleep(delay / steps)
            metrics.write(json.dumps({"step": step}) + "\n")
            metrics.flush()
    rate, seed, label = run_config["noise"]["rate"], run_config["seed"], run_config["method"]["label"]
    result = {
        "run_id": run_id,
        "status": "succeeded",
        "metrics": {
            "heldout_accuracy": 0.7 - rate / 2 + seed / 100 + len(label) / 1000,
            "shared_value": float(shared["value"].sum()),
        },
        "config": run_config,
        "seed": seed,
        "realised_flip_rate": rate,
        "wall_time_s": delay,
    }
    write_json_atomic(run_dir / "result.json", result)
    journal(run_id, "end")
    return result


def slow_build() -> dict:
    time.sleep(CACHE_BUILD_S)
    return {"value": torch.tensor([1.0, 2.0, 3.0])}


def journal(run_id: str, event: str) -> None:
    line = f"{event} {run_id} {os.getpid()} {time.time():.6f}\n"
    descriptor = os.open(os.environ[JOURNAL_VARIABLE], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(descriptor, line.encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(descriptor)


def read_journal(path: Path) -> list[tuple[str, str, int, float]]:
    if not path.exists():
        return []
    entries = [line.split() for line in path.read_text().splitlines()]
    return [(event, run_id, int(pid), float(at)) for event, run_id, pid, at in entries]


# ---------------------------------------------------------------------------------------------
# Running `noisypref` in a forked process


def own_tqdm_lock() -> None:
    """In a forked process: tqdm's default lock is a semaphore shared with every process forked from
    this one, and a process killed while holding it would block all the others (and this one).
    Every tqdm class (datasets' and huggingface_hub's have their own) gets a lock of this process."""
    classes = [tqdm]
    while classes:
        progress_class = classes.pop()
        progress_class.set_lock(threading.RLock())
        classes.extend(progress_class.__subclasses__())


def _cli_child(argv: list[str], log: str, environment: dict[str, str]) -> None:
    own_tqdm_lock()
    os.environ.update(environment)
    log_file = open(log, "a", buffering=1)  # noqa: SIM115 (the process ends with it open)
    sys.stdout = sys.stderr = log_file
    logging.root.handlers.clear()  # pytest's; main() installs a stderr handler instead
    sys.exit(main(argv))


def fork_cli(argv: list[object], log: Path, **environment: str) -> multiprocessing.Process:
    process = FORK.Process(target=_cli_child, args=([str(arg) for arg in argv], str(log), environment))
    process.start()
    return process


def environment(journal_path: Path, delay: float, **extra: str) -> dict[str, str]:
    return {
        "NOISYPREF_EXECUTOR": EXECUTOR,
        JOURNAL_VARIABLE: str(journal_path),
        DELAY_VARIABLE: str(delay),
        **extra,
    }


def finished(out: Path) -> dict[str, int]:
    """run id -> mtime (ns) of its result.json."""
    return {path.parent.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*/result.json")}


def wait_until(condition, what: str, limit: float = WAIT_LIMIT_S) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_no_run_computed_twice_at_once(entries, deaths: dict[int, float]) -> None:
    """Attempts of one run id (start to end, or to the death of a killed process) never overlap."""
    attempts = defaultdict(list)
    starts = {}
    for event, run_id, pid, at in sorted(entries, key=lambda entry: entry[3]):
        if event == "start":
            starts[(run_id, pid)] = at
        else:
            attempts[run_id].append((starts.pop((run_id, pid)), at))
    for (run_id, pid), started in starts.items():  # never ended: its process was killed
        attempts[run_id].append((started, deaths[pid]))
    for run_id, intervals in attempts.items():
        intervals.sort()
        for (_, end), (next_start, _) in zip(intervals, intervals[1:]):
            assert next_start >= end, f"run {run_id} was computed by two processes at once"


def metric_table(out: Path) -> pd.DataFrame:
    frame = pd.read_parquet(out / "results.parquet")
    return frame.drop(columns=["wall_time_s"]).sort_values("run_id").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Tests


def test_sigkill_at_random_moments_loses_and_duplicates_no_run(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    journal_path, log = tmp_path / "journal.txt", tmp_path / "log.txt"
    reference, out = tmp_path / "reference", tmp_path / "out"
    command = ["run", study_file, "--out", out, "--cache-dir", tmp_path / "cache", "--workers", "1"]
    uninterrupted = fork_cli(
        [
            "run",
            study_file,
            "--out",
            reference,
            "--cache-dir",
            tmp_path / "reference-cache",
            "--workers",
            "1",
        ],
        log,
        **environment(tmp_path / "reference-journal.txt", 0.0),
    )
    uninterrupted.join(WAIT_LIMIT_S)
    assert uninterrupted.exitcode == 0, log.read_text()

    rng = random.Random(9)
    deaths: dict[int, float] = {}
    kept: dict[str, int] = {}
    for _ in range(5):
        process = fork_cli(command, log, **environment(journal_path, 0.15))
        time.sleep(rng.uniform(0.05, 0.5))
        process.kill()
        deaths[process.pid] = time.time()
        process.join()
        now_finished = finished(out)
        assert {run_id: now_finished[run_id] for run_id in kept} == kept  # finished runs never rewritten
        kept = now_finished
    assert len(kept) < RUNS, "the kills came too late to interrupt the study"
    final = fork_cli(command, log, **environment(journal_path, 0.15))
    final.join(WAIT_LIMIT_S)
    assert final.exitcode == 0, log.read_text()

    entries = read_journal(journal_path)
    ends = defaultdict(int)
    for event, run_id, _, _ in entries:
        ends[run_id] += event == "end"
    result_times = finished(out)
    assert len(result_times) == RUNS and max(ends.values()) == 1  # every run once, none twice
    assert {run_id: result_times[run_id] for run_id in kept} == kept
    for event, run_id, _, at in entries:  # no run started again once its result.json was in place
        assert event == "end" or at * 1e9 <= result_times[run_id], run_id
    assert_no_run_computed_twice_at_once(entries, deaths)
    assert torch.load(tmp_path / "cache" / "shared.pt")["value"].tolist() == [1.0, 2.0, 3.0]
    pd.testing.assert_frame_equal(metric_table(out), metric_table(reference))
    assert set(metric_table(out)["status"]) == {"succeeded"}


def test_two_processes_share_a_study_without_computing_a_run_twice(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    journal_path, out = tmp_path / "journal.txt", tmp_path / "out"
    processes = [
        fork_cli(
            ["run", study_file, "--out", out, "--workers", "1"],
            tmp_path / f"log{index}.txt",
            **environment(journal_path, 0.1),
        )
        for index in range(2)
    ]
    for process in processes:
        process.join(WAIT_LIMIT_S)
        assert process.exitcode == 0, (tmp_path / "log0.txt").read_text() + (
            tmp_path / "log1.txt"
        ).read_text()

    entries = read_journal(journal_path)
    starts = [run_id for event, run_id, _, _ in entries if event == "start"]
    assert sorted(starts) == sorted(set(starts)) and len(starts) == RUNS  # each run computed exactly once
    assert {pid for _, _, pid, _ in entries} == {process.pid for process in processes}  # both worked
    assert_no_run_computed_twice_at_once(entries, deaths={})
    assert set(metric_table(out)["status"]) == {"succeeded"}


def test_a_lock_left_by_a_killed_process_is_recovered(tmp_path, capsys):
    from noisypref.benchmark.study.folder import lock_is_held

    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "seeds": [0]}))
    journal_path, out, log = tmp_path / "journal.txt", tmp_path / "out", tmp_path / "log.txt"
    first = fork_cli(
        ["run", study_file, "--out", out, "--workers", "1"], log, **environment(journal_path, 60.0)
    )
    wait_until(lambda: read_journal(journal_path), "the first run to start")
    run_id = read_journal(journal_path)[0][1]
    run_dir = out / "runs" / run_id
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), "the run to write a file")
    assert lock_is_held(run_dir)
    assert main(["status", str(out)]) == 0
    assert f"running  {run_id}" in capsys.readouterr().out

    first.kill()
    first.join()
    assert not lock_is_held(run_dir)  # released by the OS with the process
    assert not (run_dir / "result.json").exists()  # its partial files are not a finished run
    second = fork_cli(
        ["run", study_file, "--out", out, "--workers", "1"], log, **environment(journal_path, 0.05)
    )
    second.join(WAIT_LIMIT_S)
    assert second.exitcode == 0, log.read_text()
    assert json.loads((run_dir / "result.json").read_text())["run_id"] == run_id
    assert [line for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [
        json.dumps({"step": step}) for step in range(1, 6)
    ]  # the killed attempt's lines were cleared, not appended to


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_a_rerun_completes(tmp_path):
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    journal_path, out = tmp_path / "journal.txt", tmp_path / "out"
    variables = environment(journal_path, 0.3)
    python_path = os.pathsep.join(filter(None, [str(REPO), str(TESTS), os.environ.get("PYTHONPATH")]))
    with open(tmp_path / "stderr.txt", "w") as stderr_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "noisypref", "run", str(study_file), "--out", str(out), "--workers", "1"],
            env={**os.environ, **variables, "PYTHONPATH": python_path},
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
        wait_until(lambda: len(finished(out)) >= 2 or process.poll() is not None, "two runs to finish")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=WAIT_LIMIT_S)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    done_before = finished(out)
    assert 2 <= len(done_before) < RUNS
    message = stderr.strip().splitlines()[-1]
    assert message.startswith(f"noisypref run: interrupted. {len(done_before)} of {RUNS} runs are done"), (
        message
    )
    assert message.endswith(
        f"To resume, run the same command again: noisypref run {study_file} --out {out} --workers 1"
    )
    table = pd.read_parquet(out / "results.parquet")  # written with what is done
    assert (table["status"] == "succeeded").sum() == len(done_before)
    assert set(table["status"]) == {"succeeded", "pending"}

    rerun = fork_cli(["run", study_file, "--out", out, "--workers", "1"], tmp_path / "log.txt", **variables)
    rerun.join(WAIT_LIMIT_S)
    assert rerun.exitcode == 0, (tmp_path / "log.txt").read_text()
    done_after = finished(out)
    assert len(done_after) == RUNS and {run_id: done_after[run_id] for run_id in done_before} == done_before
    assert set(pd.read_parquet(out / "results.parquet")["status"]) == {"succeeded"}


# ---------------------------------------------------------------------------------------------
# The reference log-prob cache, built by two processes at once


def _reference_in_child(model, tokens, cache_dir: str, marker: str) -> None:
    import noisypref.benchmark.engine.reference as reference_module

    torch.set_num_threads(1)  # first, in a forked process: torch's thread pool is not fork-safe
    own_tqdm_lock()
    compute = reference_module.summed_response_logps

    def slow_sequence_logps(*args, **kwargs):
        with open(marker, "a") as file:
            file.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other process to arrive while this one computes
        return compute(*args, **kwargs)

    reference_module.summed_response_logps = slow_sequence_logps
    logps = reference_logps(model, tokens, model_identity="tiny", cache_dir=cache_dir, pad_token_id=0)
    torch.save({"a": logps.logp_a, "b": logps.logp_b}, f"{cache_dir}/seen-by-{os.getpid()}.pt")


def test_two_processes_building_one_reference_cache_write_one_valid_file(tmp_path, tiny_llama_config):
    import datasets
    from transformers import AutoModelForCausalLM

    from noisypref.benchmark.engine.tokenization import tokenize_pairs
    from noisypref.benchmark.testbed import build_word_tokenizer

    tokenizer = build_word_tokenizer(num_topics=2, num_words=6)
    pairs = datasets.Dataset.from_dict(
        {
            "pair_id": [f"pair-{index}" for index in range(6)],
            "prompt": ["topic_0", "topic_1", "topic_0 topic_1"] * 2,
            "chosen": ["w0 w1", "w2", "w3 w4 w5", "w1", "w0", "w5 w5"],
            "rejected": ["w2", "w3 w3", "w1", "w4 w0", "w5", "w2 w1"],
        }
    )
    tokens = tokenize_pairs(pairs, tokenizer, max_length=32, max_prompt_length=16)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        tiny_llama_config(len(tokenizer), max_position_embeddings=64)
    ).eval()
    marker = tmp_path / "computed.txt"
    processes = [
        FORK.Process(target=_reference_in_child, args=(model, tokens, str(tmp_path), str(marker)))
        for _ in range(2)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(WAIT_LIMIT_S)
        assert process.exitcode == 0
    assert len(marker.read_text().splitlines()) == 1  # computed once; the other process waited and loaded
    cache = tmp_path / "reference_logps"
    cached = list(cache.glob("reference-*.pt"))
    assert len(cached) == 1 and not list(cache.glob(".*tmp*"))
    stored = torch.load(cached[0])
    assert stored["pair_ids"] == [f"pair-{index}" for index in range(6)]
    seen = [torch.load(path) for path in tmp_path.glob("seen-by-*.pt")]
    assert len(seen) == 2
    for values in seen:
        assert torch.equal(values["a"], stored["logp_a"]) and torch.equal(values["b"], stored["logp_b"])
