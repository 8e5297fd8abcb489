"""Every script in benchmarks/ and scripts/ runs in its smoke mode and ends with its JSON line (issue 24).

A refactor that breaks a benchmark or a device script fails here, not on the one GPU run. The scripts are
found by glob: a new ``benchmarks/*.py`` or ``scripts/*.py`` is run with ``--smoke`` (and fails here if
``--help`` names no such flag); a shell script needs its smoke command in ``SHELL_SMOKE``. Each must exit 0
and print, as its last line of standard output, a JSON object whose numbers are all finite, whose times,
speeds and sizes (keys ending in ``_s``, ``_ms``, ``_seconds``, ``_per_second``, ``_per_cpu_second``,
``_mib``, ``_flops``) are positive, and whose headline figures (``HEADLINES``) are there and positive.

The selected scripts run two at a time (CI has 2 cores), once per session; each test then reads its
script's outcome. In all about a minute on 2 idle cores (crash_harness's is the longest: three
``noisypref run`` processes).

scripts/gpu_check.sh's CPU dry run (GPU_CHECK_CPU=1) takes minutes and is not run by default: its smoke
command prints the plan (a test checks that the step limits fit the budget), and each script it calls
runs here in smoke mode. ``NOISYPREF_GPU_CHECK_DRY_RUN=1`` runs the whole dry run as well.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON_SCRIPTS = sorted(REPO.glob("benchmarks/*.py")) + sorted(REPO.glob("scripts/*.py"))
SHELL_SCRIPTS = sorted(REPO.glob("scripts/*.sh"))
SHELL_SMOKE = {  # the smoke command of each shell script (they run without a Python interpreter's flags)
    "scripts/gpu_check.sh": ["--plan"],
    "scripts/build_wheels.sh": ["--smoke"],
    "scripts/device_rehearsal.sh": ["--smoke"],
}
HEADLINES = {  # dotted paths into the JSON line ("*": every element or value) that must be positive
    "benchmarks/throughput.py": ["models.*.systems.*.pairs_per_second", "models.*.gamma.margin_solve_seconds"],
    "benchmarks/engine_vs_trl.py": ["steady_engine", "steady_trl", "steady_cpu_trl_precomputed_reference_trl"],
    "benchmarks/margin_solver.py": ["exact_256_ms.cpu.*"],
    "benchmarks/cli_startup.py": ["commands.*.wall_s", "commands.*.cpu_s", "cli_import_modules"],
    "benchmarks/study_cost.py": ["per_run_total.default", "per_run_total.before", "runs_measured"],
    "benchmarks/study_power.py": ["runs"],
    "scripts/check_wheels.py": ["wheels", "total_mib"],
    "scripts/device_data.py": ["pairs", "bytes"],
    "scripts/crash_harness.py": ["rounds", "runs_checked", "trials"],
    "scripts/gpu_check_studies.py": ["total_runs"],
    "scripts/random_qwen2_model.py": ["parameters"],
    "scripts/random_text_model.py": ["parameters", "vocabulary"],
    "scripts/gpu_check.sh": ["budget_s", "steps_s", "step_limits_s.*"],
    "scripts/build_wheels.sh": ["wheels"],
    "scripts/device_rehearsal.sh": ["device_requirements"],
}
POSITIVE_KEY = re.compile(r"(_s|_ms|_seconds|_per_second|_per_cpu_second|_mib|_flops)$")
TIMEOUT_S = 600


@dataclass(frozen=True)
class Outcome:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def smoke_command(path: Path) -> list[str]:
    if path.suffix == ".sh":
        return ["bash", str(path), *SHELL_SMOKE.get(relative(path), ["<no smoke command in SHELL_SMOKE>"])]
    return [sys.executable, str(path), "--smoke"]


def run(command: list[str]) -> Outcome:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PYTHON": sys.executable,  # the shell scripts' interpreter: this one
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    try:
        done = subprocess.run(
            command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        return Outcome(command, -1, error.stdout or "", f"timed out after {TIMEOUT_S} s")
    return Outcome(command, done.returncode, done.stdout, done.stderr)


def selected_scripts(session: pytest.Session) -> list[str]:
    """The scripts whose smoke test this session runs (all of them unless deselected with -k)."""
    return sorted(
        {item.callspec.params["script"] for item in session.items if hasattr(item, "callspec")
         and item.originalname == "test_the_script_runs_in_smoke_mode_and_ends_with_its_json_line"}
    )  # fmt: skip


@pytest.fixture(scope="session")
def smoke_outcomes(request: pytest.FixtureRequest) -> dict[str, Outcome]:
    scripts = selected_scripts(request.session)
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = pool.map(lambda script: run(smoke_command(REPO / script)), scripts)
        return dict(zip(scripts, outcomes, strict=True))


def leaves(value, path: tuple[str, ...] = ()):
    """(path, key, number) for every number in a JSON value; the key is the nearest mapping key."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from leaves(child, (*path, str(key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, (*path, str(index)))
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    else:
        key = next((part for part in reversed(path) if not part.isdigit()), "")
        yield ".".join(path), key, value


def select(value, dotted: str) -> list:
    """The values at a dotted path; ``*`` takes every element of a list or value of a mapping."""
    values = [value]
    for part in dotted.split("."):
        found = []
        for current in values:
            if part == "*":
                found += list(current.values()) if isinstance(current, dict) else list(current)
            elif isinstance(current, dict) and part in current:
                found.append(current[part])
        values = found
    return values


def json_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "printed nothing on standard output"
    figures = json.loads(lines[-1])
    assert isinstance(figures, dict), f"the last line is JSON but not an object: {lines[-1][:200]}"
    return figures


@pytest.mark.parametrize("script", [relative(path) for path in PYTHON_SCRIPTS + SHELL_SCRIPTS])
def test_the_script_runs_in_smoke_mode_and_ends_with_its_json_line(script, smoke_outcomes) -> None:
    path = REPO / script
    if path.suffix == ".sh":
        assert script in SHELL_SMOKE, f"{script}: add its smoke command to SHELL_SMOKE (issue 24)"
    else:
        help_text = run([sys.executable, str(path), "--help"])
        assert help_text.returncode == 0, f"{script} --help failed:\n{help_text.stderr[-3000:]}"
        assert "--smoke" in help_text.stdout, (
            f"{script} has no --smoke mode: every script in benchmarks/ and scripts/ runs in seconds with "
            "--smoke (tiny sizes, a few steps) and ends with its JSON line (issue 24)"
        )
    outcome = smoke_outcomes[script]
    assert outcome.returncode == 0, (
        f"{' '.join(outcome.command)} exited {outcome.returncode}\n--- stdout\n{outcome.stdout[-3000:]}"
        f"\n--- stderr\n{outcome.stderr[-5000:]}"
    )
    figures = json_line(outcome.stdout)
    for where, key, number in leaves(figures):
        assert math.isfinite(number), f"{script}: {where} = {number}"
        if POSITIVE_KEY.search(key):
            assert number > 0, f"{script}: {where} = {number} (a time, speed or size)"
    for dotted in HEADLINES.get(script, []):
        values = select(figures, dotted)
        assert values, f"{script}: no {dotted} in its JSON line"
        assert all(isinstance(value, (int, float)) and value > 0 for value in values), f"{script}: {dotted} = {values}"


def test_every_script_with_headlines_exists() -> None:
    assert set(HEADLINES) <= {relative(path) for path in PYTHON_SCRIPTS + SHELL_SCRIPTS}
    assert set(SHELL_SMOKE) == {relative(path) for path in SHELL_SCRIPTS}


def test_the_json_checks_find_non_finite_and_non_positive_figures() -> None:
    figures = {"rows": [{"exact_ms": 0.5, "gap": -1.0}, {"exact_ms": float("nan")}], "wall_s": 0.0, "note": "x"}
    found = {where: (key, number) for where, key, number in leaves(figures)}
    assert set(found) == {"rows.0.exact_ms", "rows.0.gap", "rows.1.exact_ms", "wall_s"}
    assert found["rows.1.exact_ms"][0] == "exact_ms" and math.isnan(found["rows.1.exact_ms"][1])
    assert [bool(POSITIVE_KEY.search(key)) for key in ("exact_ms", "gap", "wall_s", "steps", "pairs_per_second")] == [
        True, False, True, False, True,
    ]  # fmt: skip
    assert select(figures, "rows.*.exact_ms")[0] == 0.5 and select(figures, "rows.*.missing") == []


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
@pytest.mark.parametrize("budget", [200, 420, 900])
def test_gpu_check_plans_step_limits_within_its_budget(mode, budget) -> None:
    environment = {**os.environ, "BUDGET_S": str(budget), "GPU_CHECK_CPU": "1" if mode == "cpu" else "0"}
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--plan"], cwd=REPO, env=environment,
                          capture_output=True, text=True, check=True)  # fmt: skip
    plan = json_line(done.stdout)
    limits = plan["step_limits_s"]
    assert list(limits) == ["install", "pytest-gpu", "throughput", "study", "text"]
    # the reserve: 5 s of kill grace past each limit, 30 s of probes, 30 s of summary, each under a timeout
    assert plan["reserve_s"] == 5 * len(limits) + 30 + 30
    assert sum(limits.values()) <= plan["steps_s"] == budget - plan["reserve_s"]


def test_gpu_check_refuses_a_budget_too_small_and_an_unknown_step() -> None:
    for environment, message in ((dict(BUDGET_S="60"), "give at least"), (dict(STEPS="sharded"), "unknown step")):
        done = subprocess.run(["bash", "scripts/gpu_check.sh", "--plan"], cwd=REPO, env={**os.environ, **environment},
                              capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 2 and message in done.stdout


@pytest.mark.skipif(
    os.environ.get("NOISYPREF_GPU_CHECK_DRY_RUN") != "1", reason="minutes: set NOISYPREF_GPU_CHECK_DRY_RUN=1"
)
def test_the_gpu_check_dry_run_passes(tmp_path) -> None:
    environment = {**os.environ, "GPU_CHECK_CPU": "1", "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
                   "WORK": str(tmp_path / "work"), "WHEELS": str(tmp_path / "no-wheels")}  # fmt: skip
    done = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, env=environment, capture_output=True,
                          text=True, check=False, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.count(" ok ") == 5, summary
