"""How fast the command line answers: `noisypref --help`, `--version` and `status DIR` (issue 25, point 8).

Each command runs as its own process (``python -m noisypref ...``, the interpreter running this script),
``--repeats`` times; the table gives the median wall time and the median CPU time (user + sys of the
child, which on an idle core is its wall time, and which a loaded machine inflates less). The target is
under 1 s each on an idle core. ``python -c pass`` is timed beside them: the interpreter's own start,
which every command pays. ``status`` reads a small study folder written here (8 runs: one done, one
failed, one running -- its lock held by this process -- and five pending). The last row counts the modules
``import noisypref.cli`` loads, and those loaded once every command's parser is built (what ``--help``
imports), and says whether torch or transformers is among the latter.

    PYTHONPATH=. python benchmarks/cli_startup.py [--repeats 7]
    PYTHONPATH=. python benchmarks/cli_startup.py --smoke     # one repeat each

Prints a table; the last line is the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = {
    "name": "startup",
    "noise": [{"model": "symmetric", "rates": [0.1, 0.3]}],
    "methods": [{"name": "dpo"}, {"name": "ipo"}],
    "seeds": [0, 1],
}
IMPORT_PROBE = (  # what `import noisypref.cli` loads, then what building every command's parser (--help) adds
    "import sys; import noisypref.cli; print(len(sys.modules)); noisypref.cli.build_parser(); "
    "print(len(sys.modules), 'torch' in sys.modules, 'transformers' in sys.modules)"
)


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run of ``command``, which must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def study_folder(root: Path):
    """A study folder of STUDY with one run done, one failed, the others pending; returns (folder, a
    pending run's folder, whose lock the caller holds to make it running)."""
    from noisypref.benchmark.storage import write_json_atomic
    from noisypref.benchmark.study import StudyFolder, parse_study, plan_runs

    study = parse_study(STUDY)
    folder = StudyFolder(root)
    folder.prepare(study)
    done, failed, running = (run.run_id for run in plan_runs(study)[:3])
    write_json_atomic(folder.run_dir(done) / "result.json", {"status": "succeeded", "metrics": {}})
    write_json_atomic(
        folder.run_dir(failed) / "failure.json", {"reason": "RuntimeError: a benchmark's failure"}
    )
    return folder, folder.run_dir(running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--smoke", action="store_true", help="one run of each command")
    args = parser.parse_args()
    repeats = 1 if args.smoke else args.repeats
    environment_note = f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    python = sys.executable
    from noisypref.benchmark.study.folder import claim_run

    with tempfile.TemporaryDirectory() as temporary:
        folder, running_dir = study_folder(Path(temporary) / "study")
        commands = {
            "python -c pass": [python, "-c", "pass"],
            "noisypref --help": [python, "-m", "noisypref", "--help"],
            "noisypref --version": [python, "-m", "noisypref", "--version"],
            "noisypref status DIR": [python, "-m", "noisypref", "status", str(folder.root)],
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        with claim_run(running_dir, wait=True):
            for _ in range(repeats):  # interleaved, so that a change of load touches every command alike
                for name, command in commands.items():
                    samples[name].append(timed(command))
    probe = subprocess.run(
        [python, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    modules, parser_modules = int(probe[0]), int(probe[1])
    imports_torch, imports_transformers = probe[2] == "True", probe[3] == "True"

    figures: dict[str, dict[str, float]] = {}
    print(f"noisypref command line start-up: median of {repeats} run(s) each, {environment_note}")
    print(f"{'command':<24}{'wall s':>10}{'CPU s':>10}")
    for name, runs in samples.items():
        wall = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        figures[name] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
        print(f"{name:<24}{wall:>10.3f}{cpu:>10.3f}")
    print(
        f"import noisypref.cli: {modules} modules in sys.modules; {parser_modules} with every command's parser "
        f"built (torch: {imports_torch}, transformers: {imports_transformers})"
    )
    print(
        json.dumps(
            {
                "repeats": repeats,
                "load_average": os.getloadavg()[0],
                "commands": figures,
                "cli_import_modules": modules,
                "cli_parser_modules": parser_modules,
                "cli_imports_torch": imports_torch,
                "cli_imports_transformers": imports_transformers,
            }
        )
    )


if __name__ == "__main__":
    main()
