"""Crash harness: interrupt `noisypref run` (real engine) at random moments, resume, and check that
nothing is lost, computed twice, or half-written.

    PYTHONPATH=. python scripts/crash_harness.py --trials 24 --work /tmp/noisypref-crash-harness
    PYTHONPATH=. python scripts/crash_harness.py --smoke     # one kill trial on a study of 2 runs, no report

A tiny testbed study is first run uninterrupted (the reference). Then each trial starts `noisypref run`
on a study folder and does one of:

    kill             SIGKILL the process group at a random moment (start-up, testbed build, a run, collect)
    kill-workers     the same with --workers 2
    interrupt        SIGINT to the process group, as Ctrl-C does; expects exit 130 and the resume command
    interrupt-workers  the same with --workers 2
    two-processes    two processes on the one folder; each SIGKILLed at its own random moment
    disk-full        a result.json write fails half-way with ENOSPC; expects exit 2 and the resume advice
    nan              a run's loss turns NaN at step 3; expects failure.json naming the step (retried later)

The last line printed is JSON: the tally (trials, signals, faults, rounds, runs lost, duplicated,
mismatching, problems) and the wall time. After each trial: no lock is held, every result.json is complete, and none written earlier changed.
When a study folder is complete (a final uninterrupted resume finishes it), its results.parquet must
equal the reference's (every metric column, exactly: CPU runs are deterministic per seed), every run
must be present once, and the journal written around each run must show no run computed twice, at
once or in sequence. Then a fresh folder and cache start the next round. Exit status 0 when all holds.

The runs execute through NOISYPREF_EXECUTOR=crash_harness:journaled_execute_run, the engine's
execute_run with a journal line at its start and end (and the injected faults of a trial).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOURNAL_VARIABLE = "CRASH_HARNESS_JOURNAL"
TRIAL_VARIABLE = "CRASH_HARNESS_TRIAL"
FAULT_VARIABLE = "CRASH_HARNESS_FAULT"  # "disk-full:N" or "nan:N": the N-th run this process starts
NAN_STEP = 3
SCENARIOS = (
    "kill",
    "kill",
    "kill-workers",
    "interrupt",
    "interrupt-workers",
    "two-processes",
    "disk-full",
    "nan",
)
EXIT_TIMEOUT_S = 120
NO_REPORT: list[str] = []  # --smoke: ["--no-report"] (the report takes longer than the runs)

STUDY = {
    "name": "crash_harness",
    "datasets": [
        {
            "kind": "testbed",
            "testbed": {
                "sft_steps": 30, "num_train_pairs": 128, "num_heldout_pairs": 64, "num_eval_prompts": 32,
                "hidden_size": 32, "intermediate_size": 64, "num_layers": 1,
            },
        }
    ],
    "noise": [{"model": "symmetric", "rates": [0, 0.2, 0.4]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}, {"name": "cdpo"}],
    "seeds": [0, 1],
    "training": {"steps": 30, "batch_size": 16, "log_every": 5, "max_length": 64, "max_prompt_length": 32},
    "evaluation": {"num_eval_prompts": 32, "max_new_tokens": 8},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The executor the studies run (in the `noisypref run` processes)

_attempts_started = 0


def journaled_execute_run(
    run_config: dict, run_dir: Path, cache_dir: Path, device: str | None = None
) -> dict:
    """The engine's execute_run, journalled, with this trial's injected fault."""
    from noisypref.benchmark.run.execute import execute_run

    global _attempts_started
    _attempts_started += 1
    run_id = Path(run_dir).name
    _journal("start", run_id)
    try:
        with _injected_fault(_attempts_started):
            result = execute_run(run_config, run_dir, cache_dir, device)
    except BaseException:
        _journal("fail", run_id)
        raise
    _journal("end", run_id)
    return result


def _journal(event: str, run_id: str) -> None:
    line = f"{event} {run_id} {os.getpid()} {os.environ.get(TRIAL_VARIABLE, '-')} {time.time():.6f}\n"
    descriptor = os.open(os.environ[JOURNAL_VARIABLE], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def _injected_fault(attempt: int) -> Iterator[None]:
    kind, _, number = os.environ.get(FAULT_VARIABLE, "").partition(":")
    if not kind or int(number) != attempt:
        yield
        return
    if kind == "disk-full":  # result.json's temporary file fills the disk half-way
        write_text = Path.write_text

        def full_disk(path: Path, text: str, *args, **kwargs):
            if not path.name.startswith(".result.json.tmp"):
                return write_text(path, text, *args, **kwargs)
            write_text(path, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        Path.write_text = full_disk
        try:
            yield
        finally:
            Path.write_text = write_text
    elif kind == "nan":  # the method's objective turns NaN at one training step
        import noisypref.benchmark.run.prepare as run_module

        build = run_module.build
        run_module.build = lambda name, **options: _NaNAtStep(build(name, **options))
        try:
            yield
        finally:
            run_module.build = build
    else:
        raise ValueError(f"{FAULT_VARIABLE}={os.environ[FAULT_VARIABLE]!r}: unknown fault")


class _NaNAtStep:
    """A method whose objective is NaN at training step NAN_STEP; everything else is the method's."""

    def __init__(self, method) -> None:
        self._method, self._calls = method, 0

    def __call__(self, logps):
        import dataclasses

        output = self._method(logps)
        self._calls += self._method.training
        if self._method.training and self._calls == NAN_STEP:
            output = dataclasses.replace(output, objective=output.objective * float("nan"))
        return output

    def __getattr__(self, name):
        return getattr(self._method, name)


# ---------------------------------------------------------------------------------------------
# The harness


@dataclass
class Round:
    """One study folder, interrupted until complete."""

    index: int
    out: Path
    cache: Path
    journal: Path
    trial_ends: dict[str, float] = field(default_factory=dict)  # trial -> when its processes were gone
    kills: dict[str, float] = field(default_factory=dict)  # pid -> when it was sent SIGKILL


@dataclass
class Tally:
    trials: Counter = field(default_factory=Counter)
    kills: int = 0
    signalled_trials: int = 0
    interrupts: int = 0
    faults: int = 0
    rounds: int = 0
    runs_checked: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatching: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        print(f"  PROBLEM: {text}", flush=True)
        self.problems.append(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24, help="interrupted trials (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random moments and scenarios")
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/noisypref-crash-harness"), help="work folder (emptied)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=540.0, help="start no trial after this many seconds"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds, for CI: one kill trial on a study of 2 runs, no report"
    )
    args = parser.parse_args()
    study = STUDY
    if args.smoke:
        args.trials = 1
        study = {**STUDY, "methods": [{"name": "dpo"}], "noise": [{"model": "symmetric", "rates": [0, 0.2]}],
                 "seeds": [0]}  # fmt: skip
        NO_REPORT.append("--no-report")

    from noisypref.benchmark.study import load_study, plan_runs

    rng = random.Random(args.seed)
    started = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    study_file = args.work / "study.yaml"
    study_file.write_text(json.dumps(study, indent=2))  # JSON is YAML
    run_ids = [run.run_id for run in plan_runs(load_study(study_file))]
    tally = Tally()

    print(f"reference: {len(run_ids)} runs, uninterrupted", flush=True)
    reference_round = Round(
        -1, args.work / "reference", args.work / "reference-cache", args.work / "reference.jsonl"
    )
    status, _, stderr = run_to_end(study_file, reference_round, "reference")
    if status != 0:
        print(stderr, file=sys.stderr)
        return 1
    reference = metric_table(reference_round.out)
    print(f"reference done in {time.monotonic() - started:.0f} s", flush=True)

    round_ = new_round(args.work, 0)
    trial = 0
    while trial < args.trials and time.monotonic() - started < args.time_limit:
        scenario = rng.choice(SCENARIOS)
        before = finished_results(round_.out)
        trial_started = time.monotonic()
        signals_before = tally.kills + tally.interrupts
        outcome = run_trial(scenario, study_file, round_, str(trial), rng, tally)
        tally.trials[scenario] += 1
        tally.signalled_trials += tally.kills + tally.interrupts > signals_before
        check_after_trial(round_, before, tally)
        done = len(finished_results(round_.out))
        print(
            f"trial {trial:2d} round {round_.index} {scenario:<17} {outcome:<40} "
            f"{done:2d}/{len(run_ids)} runs done  ({time.monotonic() - trial_started:.0f} s)",
            flush=True,
        )
        trial += 1
        if done == len(run_ids):
            finish_round(study_file, round_, run_ids, reference, tally)
            round_ = new_round(args.work, round_.index + 1)
    if finished_results(round_.out) or round_.journal.exists():
        finish_round(study_file, round_, run_ids, reference, tally)

    print()
    print("| what | count |")
    print("|---|---|")
    print(
        f"| trials, by scenario | {trial} ({', '.join(f'{k} {v}' for k, v in sorted(tally.trials.items()))}) |"
    )
    print(f"| kill trials (a SIGKILL or SIGINT landed while the study ran) | {tally.signalled_trials} |")
    print(f"| signals sent: SIGKILL / SIGINT | {tally.kills} / {tally.interrupts} |")
    print(f"| faults injected (full disk, NaN loss) | {tally.faults} |")
    print(f"| study folders completed and compared | {tally.rounds} ({tally.runs_checked} runs) |")
    print(f"| runs lost | {tally.lost} |")
    print(f"| runs duplicated (computed twice) | {tally.duplicated} |")
    print(f"| results mismatching the uninterrupted study | {tally.mismatching} |")
    print(f"| other problems | {len(tally.problems)} |")
    print(f"wall time {time.monotonic() - started:.0f} s")
    figures = {
        "trials": trial, "trials_by_scenario": dict(tally.trials), "signalled_trials": tally.signalled_trials,
        "kills": tally.kills, "interrupts": tally.interrupts, "faults": tally.faults, "rounds": tally.rounds,
        "runs_checked": tally.runs_checked, "lost": tally.lost, "duplicated": tally.duplicated,
        "mismatching": tally.mismatching, "problems": len(tally.problems), "wall_s": time.monotonic() - started,
    }  # fmt: skip
    print(json.dumps(figures))
    return 0 if not tally.problems and tally.lost == tally.duplicated == tally.mismatching == 0 else 1


def new_round(work: Path, index: int) -> Round:
    root = work / f"round-{index}"
    return Round(index, root / "out", root / "cache", root / "journal.jsonl")


def start(
    study_file: Path, round_: Round, trial: str, *, workers: int = 1, fault: str = ""
) -> subprocess.Popen:
    python_path = os.pathsep.join(
        filter(None, [str(REPO), str(REPO / "scripts"), os.environ.get("PYTHONPATH")])
    )
    environment = {
        **os.environ,
        "PYTHONPATH": python_path,
        "NOISYPREF_EXECUTOR": "crash_harness:journaled_execute_run",
        JOURNAL_VARIABLE: str(round_.journal),
        TRIAL_VARIABLE: trial,
        FAULT_VARIABLE: fault,
    }
    command = [sys.executable, "-m", "noisypref", "run", str(study_file), "--out", str(round_.out)]
    command += ["--cache-dir", str(round_.cache), "--workers", str(workers), *NO_REPORT]
    log = round_.out.parent / f"trial-{trial}-{time.monotonic_ns()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command, env=environment, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    process.log = log  # type: ignore[attr-defined]
    return process


def run_to_end(study_file: Path, round_: Round, trial: str) -> tuple[int, str, str]:
    process = start(study_file, round_, trial)
    status = process.wait(timeout=600)
    wait_for_group(process.pid)
    round_.trial_ends[trial] = time.time()
    return status, "", process.log.read_text()


def wait_for_group(group: int) -> None:
    """Wait until every process of the group (the worker processes too) is gone."""
    deadline = time.monotonic() + EXIT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(group, signal.SIGKILL)
    raise RuntimeError(f"processes of group {group} outlived the harness's wait")


def first_activity(round_: Round, trial: str, process: subprocess.Popen, limit: float = 60.0) -> None:
    """Wait until this trial's process starts a run (or ends)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if round_.journal.exists() and f" {trial} " in round_.journal.read_text():
            return
        time.sleep(0.05)


def kill_at_random(
    process: subprocess.Popen, round_: Round, trial: str, rng: random.Random, tally: Tally
) -> str:
    if rng.random() < 0.2:
        time.sleep(rng.uniform(0.5, 9.0))  # mostly during start-up and planning
    else:
        first_activity(round_, trial, process)
        time.sleep(rng.uniform(0.0, 4.0))  # the testbed build, a run, the next run, collect
    if process.poll() is not None:
        return f"finished first (exit {process.returncode})"
    round_.kills[str(process.pid)] = time.time()  # it computes nothing after this
    os.killpg(process.pid, signal.SIGKILL)
    tally.kills += 1
    process.wait()
    return "killed"


def run_trial(
    scenario: str, study_file: Path, round_: Round, trial: str, rng: random.Random, tally: Tally
) -> str:
    workers = 2 if scenario.endswith("-workers") else 1
    if scenario in ("kill", "kill-workers"):
        process = start(study_file, round_, trial, workers=workers)
        outcome = kill_at_random(process, round_, trial, rng, tally)
        wait_for_group(process.pid)
    elif scenario in ("interrupt", "interrupt-workers"):
        process = start(study_file, round_, trial, workers=workers)
        first_activity(round_, trial, process)
        time.sleep(rng.uniform(0.0, 4.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            tally.interrupts += 1
            status = process.wait(timeout=EXIT_TIMEOUT_S)
            output = process.log.read_text()
            last_line = output.strip().splitlines()[-1] if output.strip() else ""
            if (
                status != 130
                or "Traceback" in output
                or "To resume, run the same command again" not in last_line
            ):
                tally.problem(f"trial {trial}: Ctrl-C gave exit {status}; output ends {output[-600:]!r}")
            outcome = "interrupted, resume command shown"
        else:
            outcome = f"finished first (exit {process.returncode})"
        wait_for_group(process.pid)
    elif scenario == "two-processes":
        processes = [start(study_file, round_, trial) for _ in range(2)]
        outcomes = [kill_at_random(process, round_, trial, rng, tally) for process in processes]
        for process in processes:
            wait_for_group(process.pid)
        outcome = " / ".join(outcomes)
    elif scenario == "disk-full":
        process = start(study_file, round_, trial, fault=f"disk-full:{rng.randint(1, 3)}")
        tally.faults += 1
        status = process.wait(timeout=600)
        wait_for_group(process.pid)
        output = process.log.read_text()
        if status == 2:
            if "No space left on device" not in output or "Traceback" in output or "to resume" not in output:
                tally.problem(f"trial {trial}: the full disk was not explained: {output[-600:]!r}")
            outcome = "stopped on the full disk (exit 2)"
        else:
            outcome = f"exit {status} (fewer runs left than the fault's position)"
    elif scenario == "nan":
        process = start(study_file, round_, trial, fault=f"nan:{rng.randint(1, 2)}")
        tally.faults += 1
        outcome = kill_at_random(process, round_, trial, rng, tally)
        wait_for_group(process.pid)
        output = process.log.read_text()
        reasons = [json.loads(path.read_text())["reason"] for path in round_.out.glob("runs/*/failure.json")]
        if any(f"non-finite loss at step {NAN_STEP} of method" in reason for reason in reasons):
            outcome += ", a run failed at its NaN step"
        if "Traceback" in output:
            tally.problem(f"trial {trial}: a traceback: {output[-600:]!r}")
    else:
        raise ValueError(scenario)
    round_.trial_ends[trial] = time.time()
    return outcome


def finished_results(out: Path) -> dict[str, tuple[int, int]]:
    """run id -> (inode, mtime_ns) of its result.json."""
    results = {}
    for path in out.glob("runs/*/result.json"):
        stat = path.stat()
        results[path.parent.name] = (stat.st_ino, stat.st_mtime_ns)
    return results


def check_after_trial(round_: Round, before: dict[str, tuple[int, int]], tally: Tally) -> None:
    from noisypref.benchmark.study.folder import lock_is_held

    after = finished_results(round_.out)
    for run_id, identity in before.items():
        if after.get(run_id) != identity:
            tally.problem(
                f"round {round_.index}: the finished run {run_id}'s result.json was rewritten or removed"
            )
    for run_dir in round_.out.glob("runs/*"):
        if lock_is_held(run_dir):
            tally.problem(f"{run_dir}: its lock is still held after every process ended")
        result_file = run_dir / "result.json"
        if result_file.exists():
            try:
                result = json.loads(result_file.read_text())
            except json.JSONDecodeError:
                tally.problem(f"{result_file} is not complete JSON")
                continue
            if result.get("run_id") != run_dir.name or result.get("status") != "succeeded":
                tally.problem(f"{result_file} is not the finished run's result")


def finish_round(study_file: Path, round_: Round, run_ids: list[str], reference, tally: Tally) -> None:
    """Resume the folder to completion, then compare it with the reference and read the journal."""
    before = finished_results(round_.out)
    status, _, output = run_to_end(study_file, round_, f"final-{round_.index}")
    check_after_trial(round_, before, tally)
    if status != 0:
        tally.problem(f"round {round_.index}: the final resume exited {status}: {output[-600:]!r}")
        return
    tally.rounds += 1
    table = metric_table(round_.out)
    present = Counter(table["run_id"])
    lost = [run_id for run_id in run_ids if present[run_id] == 0]
    lost += list(table.loc[table["status"] != "succeeded", "run_id"])
    tally.lost += len(set(lost))
    tally.duplicated += sum(count - 1 for count in present.values() if count > 1)
    tally.runs_checked += len(table)
    merged = table.merge(reference, on="run_id", suffixes=("", "_reference"))
    columns = [column for column in reference.columns if column not in ("run_id", "status")]
    mismatching = [
        row["run_id"]
        for _, row in merged.iterrows()
        if any(not _same(row[column], row[f"{column}_reference"]) for column in columns)
    ]
    tally.mismatching += len(mismatching) + (len(run_ids) - len(merged))
    if mismatching:
        tally.problem(f"round {round_.index}: results differ from the reference for {mismatching}")
    computed_twice = computed_twice_in(round_)
    tally.duplicated += len(computed_twice)
    if computed_twice:
        tally.problem(f"round {round_.index}: runs computed twice: {computed_twice}")
    print(
        f"round {round_.index} complete: {len(table)} runs, lost {len(set(lost))}, "
        f"computed twice {len(computed_twice)}, mismatching {len(mismatching)}",
        flush=True,
    )


def _same(value, reference_value) -> bool:
    both_missing = value != value and reference_value != reference_value  # NaN == NaN here
    return both_missing or value == reference_value


def metric_table(out: Path):
    import pandas as pd

    table = pd.read_parquet(out / "results.parquet")
    return table.drop(columns=["wall_time_s", "failure_reason"]).sort_values("run_id").reset_index(drop=True)


def computed_twice_in(round_: Round) -> list[str]:
    """Run ids with two successful computations, or two attempts in flight at once."""
    entries = [line.split() for line in round_.journal.read_text().splitlines()]
    ends = Counter(run_id for event, run_id, *_ in entries if event == "end")
    twice = {run_id for run_id, count in ends.items() if count > 1}
    attempts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    open_attempts: dict[tuple[str, str], tuple[float, str]] = {}
    for event, run_id, pid, trial, at in sorted(entries, key=lambda entry: float(entry[4])):
        if event == "start":
            open_attempts[(run_id, pid)] = (float(at), trial)
        else:
            started, _ = open_attempts.pop((run_id, pid))
            attempts[run_id].append((started, float(at)))
    # An attempt that neither ended nor failed was killed: it ended when its process was sent SIGKILL,
    # or (a worker process) when its trial's processes were all gone.
    for (run_id, pid), (started, trial) in open_attempts.items():
        attempts[run_id].append((started, round_.kills.get(pid, round_.trial_ends[trial])))
    for run_id, intervals in attempts.items():
        intervals.sort()
        if any(next_start < end for (_, end), (next_start, _) in zip(intervals, intervals[1:])):
            twice.add(run_id)
    return sorted(twice)


if __name__ == "__main__":
    sys.exit(main())
