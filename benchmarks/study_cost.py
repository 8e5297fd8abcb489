"""CPU-seconds of one run of the default study, split by phase, with each saving switched on and off.

Columns, side by side in one call (the same runs in each, one process, one torch thread, caches warm):

- ``default``: the embedded default study's settings with every saving on;
- ``- width 16``, ``- fused AdamW``, ``- kept samples``: the same with one saving off — packed rows
  as wide as their longest sequence (``batches.PACKED_WIDTH_MULTIPLE = 1``), AdamW's per-parameter loop
  (``train.FUSED_ADAMW_ON_CPU``), the reference policy's gold-reward samples drawn afresh every run
  (``run.evaluate.REFERENCE_SAMPLES_KEPT = 0``);
- ``before``: the settings of the default study before issue 14 (200 steps x 64 pairs at lr 1e-3,
  2,048 training and 512 held-out pairs, a one-sample KL estimate) with every saving off.

Rows: per-run CPU-seconds (user + sys of this process, ``time.process_time``) in resolving the data,
noise, model and tokens (``data``), the reference log-probs (``reference``: a cache read after the first
run), training without the γ solve (``training``), the γ margin solve in training and evaluation
(``γ solve``, γ methods only, so its mean over the runs), evaluation without the γ solve
(``evaluation``) and the rest of ``execute_run`` (result files, ``other``). ``start-up`` is the import
cost of one worker process (``python -c "import noisypref.benchmark.run.execute"``, measured in a child
process); a study pays it once per worker and once in the parent. The runs are every method of the
default study at a flip rate of 0.2 and seed 0, after one warm-up run per column that fills the caches
(testbed, tokens, reference log-probs, kept samples) as the study's first runs would. The estimate
of the whole study is runs x per-run + 3 x start-up, divided by 2 cores for the wall time; it leaves out
the one-off testbed build and the report.

    PYTHONPATH=. python benchmarks/study_cost.py [--methods dpo,gamma_dpo] [--cache-dir .cache/study_cost]
    PYTHONPATH=. python benchmarks/study_cost.py --smoke      # seconds: dpo and gamma_dpo, 2 steps of a small
                                                              # testbed, the default and before columns

Prints a table; the last line is the same figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import noisypref.benchmark.engine.batches as batches_module
import noisypref.benchmark.engine.train as train_module
import noisypref.benchmark.run.evaluate as evaluate_module
import noisypref.benchmark.run.execute as run_module
import noisypref.benchmark.run.prepare as prepare_module
import noisypref.methods.margins as margins_module
from noisypref.benchmark.study import default_study_path, load_study, plan_runs

PHASES = ("data", "reference", "training", "γ solve", "evaluation", "other")
WRAPPED = (  # (module, function, phase)
    (prepare_module, "load_data_model_and_tokens", "data"),
    (prepare_module, "reference_logps", "reference"),
    (run_module, "train", "training"),
    (run_module, "evaluate_run", "evaluation"),
)
RATE = 0.2
SEED = 0
BEFORE_ISSUE_14 = {  # the default study's settings before issue 14
    "training": {"steps": 200, "batch_size": 64, "learning_rate": 1e-3},
    "testbed": {"num_train_pairs": 2048, "num_heldout_pairs": 512},
    "evaluation": {"kl_samples": 1},
}
# --smoke: runs of seconds (a small testbed with the default's words and topics, 2 steps, 8 prompts)
SMOKE_SETTINGS = {
    "training": {"steps": 2, "batch_size": 16},
    "testbed": {"sft_steps": 10, "num_train_pairs": 64, "num_heldout_pairs": 16, "num_eval_prompts": 8},
    "evaluation": {"num_eval_prompts": 8},
}
SAVINGS = {  # column -> module attributes that switch the savings off
    "- width 16": [(batches_module, "PACKED_WIDTH_MULTIPLE", 1)],
    "- fused AdamW": [(train_module, "FUSED_ADAMW_ON_CPU", False)],
    "- kept samples": [(evaluate_module, "REFERENCE_SAMPLES_KEPT", 0)],
}


class PhaseClock:
    """CPU-seconds per phase; time in the γ solve is taken out of the phase it happens in."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._gamma_seconds = 0.0

    def wrap(self, function: Callable, phase: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, gamma_before = time.process_time(), self._gamma_seconds
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.process_time() - started
                if phase == "γ solve":
                    self._gamma_seconds += elapsed
                    self.seconds[phase] += elapsed
                else:
                    self.seconds[phase] += elapsed - (self._gamma_seconds - gamma_before)

        return timed


@contextlib.contextmanager
def patched(replacements: list[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(module, name, getattr(module, name)) for module, name, _ in replacements]
    for module, name, value in replacements:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def with_settings(config: dict[str, Any], settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["training"].update(settings["training"])
    config["dataset"]["testbed"].update(settings["testbed"])
    config["evaluation"].update(settings["evaluation"])
    return config


def measure_runs(configs: list[dict[str, Any]], cache_dir: Path) -> dict[str, float]:
    """Mean CPU-seconds per phase over ``configs``, after one warm-up run of the first."""
    clock = PhaseClock()
    replacements = [
        (module, name, clock.wrap(getattr(module, name), phase)) for module, name, phase in WRAPPED
    ]
    replacements.append(
        (margins_module, "solve_margins", clock.wrap(margins_module.solve_margins, "γ solve"))
    )
    totals = dict.fromkeys(PHASES, 0.0)
    with tempfile.TemporaryDirectory() as scratch, patched(replacements):
        run_module.execute_run(configs[0], Path(scratch) / "warm-up", cache_dir, device="cpu")
        for index, config in enumerate(configs):
            clock.seconds = dict.fromkeys(PHASES, 0.0)
            started = time.process_time()
            run_module.execute_run(config, Path(scratch) / f"run-{index}", cache_dir, device="cpu")
            total = time.process_time() - started
            clock.seconds["other"] = total - sum(clock.seconds[phase] for phase in PHASES if phase != "other")
            for phase in PHASES:
                totals[phase] += clock.seconds[phase]
    return {phase: seconds / len(configs) for phase, seconds in totals.items()}


def measure_columns(configs: list[dict[str, Any]], cache_dir: Path, *, smoke: bool) -> dict[str, dict[str, float]]:
    """Per-phase CPU-seconds of each column (--smoke: the default and before columns only, both at the
    smoke sizes)."""
    columns: dict[str, dict[str, float]] = {"default": measure_runs(configs, cache_dir)}
    for column, switches in SAVINGS.items():
        if smoke:
            continue
        with patched(switches):
            columns[column] = measure_runs(configs, cache_dir)
    with patched([switch for switches in SAVINGS.values() for switch in switches]):
        before = [with_settings(config, BEFORE_ISSUE_14) for config in configs]
        if smoke:
            before = [with_settings(config, SMOKE_SETTINGS) for config in before]
        columns["before"] = measure_runs(before, cache_dir)
    return columns


def start_up_seconds() -> float:
    """CPU-seconds of a fresh interpreter importing the engine, as a worker process does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import noisypref.benchmark.run.execute"], check=True, env=os.environ)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", help="comma-separated method labels (default: all of the default study)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/study_cost"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, for CI: dpo and gamma_dpo on a small testbed in a scratch cache, 2 of the 5 columns",
    )
    args = parser.parse_args()

    study = load_study(default_study_path())
    planned = plan_runs(study)
    methods = (
        args.methods.split(",") if args.methods else [variant.label for variant in study.method_variants()]
    )
    if args.smoke:
        methods = args.methods.split(",") if args.methods else ["dpo", "gamma_dpo"]
    configs = [
        run.config for run in planned if run.noise_rate == RATE and run.seed == SEED and run.method in methods
    ]
    with contextlib.ExitStack() as scratch:
        if args.smoke:
            args.cache_dir = Path(scratch.enter_context(tempfile.TemporaryDirectory()))
            configs = [with_settings(config, SMOKE_SETTINGS) for config in configs]
        columns = measure_columns(configs, args.cache_dir, smoke=args.smoke)
    start_up = None if args.smoke else start_up_seconds()  # a child interpreter: 5-10 CPU-s

    load = os.getloadavg()
    study_runs = {"default": len(planned), "before (2 seeds)": len(planned) * 2 // len(study.seeds)}
    print(
        f"per-run CPU-seconds, mean of {len(configs)} runs ({', '.join(methods)}; rate {RATE}, seed {SEED})"
    )
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    width = max(len(column) for column in columns) + 2
    print(f"{'phase':<12}" + "".join(f"{column:>{width}}" for column in columns))
    for phase in PHASES:
        print(f"{phase:<12}" + "".join(f"{columns[column][phase]:>{width}.3f}" for column in columns))
    per_run = {column: sum(seconds.values()) for column, seconds in columns.items()}
    print(f"{'total':<12}" + "".join(f"{per_run[column]:>{width}.3f}" for column in columns))
    if start_up is None:
        print("start-up: not measured (--smoke); the estimates below leave it out")
    else:
        print(f"start-up: {start_up:.2f} CPU-s per process (each worker and the parent)")
    estimates = {
        "default": study_runs["default"] * per_run["default"] + 3 * (start_up or 0.0),
        "before": study_runs["before (2 seeds)"] * per_run["before"] + 3 * (start_up or 0.0),
    }
    print(
        f"study estimate without testbed build and report: default {study_runs['default']} runs "
        f"{estimates['default']:.0f} CPU-s (~{estimates['default'] / 2 / 60:.1f} min on 2 cores); "
        f"before, {study_runs['before (2 seeds)']} runs at its 2 seeds: {estimates['before']:.0f} CPU-s"
    )
    print(
        json.dumps(
            {
                "per_run_cpu_seconds": columns,
                "per_run_total": per_run,
                "start_up_cpu_seconds": start_up,
                "study_cpu_seconds_estimate": estimates,
                "study_runs": study_runs,
                "runs_measured": len(configs),
                "methods": methods,
                "load_average": load,
            }
        )
    )


if __name__ == "__main__":
    main()
