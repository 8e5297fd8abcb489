"""CPU-seconds of configs/clean_vs_robust.yaml: each judge's cleaning, one run of each method, the whole study.

Measures, in one process on one torch thread, with a fresh cache folder:

- ``testbed``: building the study's testbed (the reference policy and its pairs), once per study;
- ``cleaning <entry>``: building the cleaned data of each cleaning entry at one rate and seed, in the
  study's order (the ensemble after its members, whose DPO runs it then reads from the cache, as in a study);
- ``run <method>``: one run of each method on the first judge's cleaned data (``execute_run``, the
  cleaning a cache hit).

The study estimate is testbed + (rates x seeds) x the sum of the cleaning costs + runs x the mean run
cost, CPU-seconds; the wall time on 2 idle cores is half of it (two workers; the report, written after
the runs, is left out). ``--smoke`` measures the same on a tiny testbed and 2 steps, for the test that
keeps this script working.

    PYTHONPATH=. python benchmarks/cleaning_cost.py [--study configs/clean_vs_robust.yaml] [--smoke]

Prints a table; the last line is the same figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from noisypref.benchmark.config.run_config import parse_run_config
from noisypref.benchmark.run.execute import execute_run
from noisypref.benchmark.run.prepare import load_data_model_and_tokens, resolve_dataset
from noisypref.benchmark.study import load_study, parse_study, plan_runs
from noisypref.benchmark.study.yaml_io import read_yaml

STUDY = Path(__file__).resolve().parents[1] / "configs" / "clean_vs_robust.yaml"
SMOKE_TESTBED = {
    "num_topics": 2, "num_words": 8, "relevant_words_per_topic": 2, "off_topic_words_per_topic": 2,
    "max_response_words": 4, "hidden_size": 16, "num_attention_heads": 2, "num_layers": 1, "intermediate_size": 32,
    "sft_steps": 5, "sft_batch_size": 8, "num_train_pairs": 40, "num_heldout_pairs": 16, "num_eval_prompts": 8,
    "max_new_tokens": 5, "bt_temperature": 0.05,
}  # fmt: skip


def smoke_study(raw: dict) -> dict:
    """The study shrunk to the tiny testbed, 2 training steps and judges of 2 steps."""
    raw = json.loads(json.dumps(raw))
    raw["datasets"] = [{"label": "testbed", "kind": "testbed", "testbed": SMOKE_TESTBED}]
    raw["training"] = {"steps": 2, "batch_size": 8, "max_length": 16, "max_prompt_length": 4}
    short = {"reward_model": {"folds": 2, "steps": 2}, "small_loss": {"steps": 2}}
    for entry in raw.get("cleaning", []):
        if isinstance(entry, dict) and entry["judge"] in short:
            entry["options"] = {**entry.get("options", {}), **short[entry["judge"]]}
        if isinstance(entry, dict) and entry["judge"] == "ensemble":
            entry["options"] = {**entry.get("options", {}), "members": [
                {"judge": "reference_margin"}, {"judge": "reward_model", "options": short["reward_model"]},
                {"judge": "small_loss", "options": short["small_loss"]},
            ]}  # fmt: skip
    return raw


def cpu_seconds() -> float:
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--smoke", action="store_true", help="a tiny testbed and 2 steps (checks the script runs)")
    args = parser.parse_args()
    study = parse_study(smoke_study(read_yaml(args.study))) if args.smoke else load_study(args.study)
    planned = plan_runs(study)
    rate, seed = max(run.noise_rate for run in planned), min(run.seed for run in planned)
    at_point = [run for run in planned if run.noise_rate == rate and run.seed == seed]
    entries = list(dict.fromkeys(run.cleaning for run in at_point))
    methods = list(dict.fromkeys(run.method for run in at_point))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    costs: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            cache_dir, scratch = Path(scratch) / "cache", Path(scratch)
            first = parse_run_config(at_point[0].config)
            started = cpu_seconds()
            resolve_dataset(first, cache_dir)
            costs["testbed"] = cpu_seconds() - started
            for entry in entries:
                run = next(run for run in at_point if run.cleaning == entry)
                started = cpu_seconds()
                load_data_model_and_tokens(parse_run_config(run.config), scratch / "prepare", cache_dir, torch.device("cpu"))
                costs[f"cleaning {entry}"] = cpu_seconds() - started
            cleaned_entry = next(entry for entry in entries if entry != "none") if len(entries) > 1 else entries[0]
            for method in methods:
                run = next(run for run in at_point if run.cleaning == cleaned_entry and run.method == method)
                started = cpu_seconds()
                execute_run(run.config, scratch / f"run-{method}", cache_dir, device="cpu")
                costs[f"run {method}"] = cpu_seconds() - started
    finally:
        torch.set_num_threads(previous_threads)
    points = len({(run.noise_rate, run.seed) for run in planned})
    cleaning_total = sum(seconds for name, seconds in costs.items() if name.startswith("cleaning "))
    run_mean = sum(seconds for name, seconds in costs.items() if name.startswith("run ")) / len(methods)
    estimate = costs["testbed"] + points * cleaning_total + len(planned) * run_mean
    load = os.getloadavg()
    print(f"CPU-seconds of {args.study.name}{' (smoke)' if args.smoke else ''} at rate {rate}, seed {seed}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    for name, seconds in costs.items():
        print(f"  {name:<40} {seconds:8.2f}")
    print(f"study estimate: {costs['testbed']:.0f} (testbed) + {points} x {cleaning_total:.1f} (cleaning) + "
          f"{len(planned)} runs x {run_mean:.2f} = {estimate:.0f} CPU-s, ~{estimate / 2 / 60:.1f} min on 2 idle cores "
          "(report not included)")  # fmt: skip
    print(json.dumps({"study": str(args.study), "smoke": args.smoke, "cpu_seconds": costs, "points": points,
                      "runs": len(planned), "study_cpu_seconds_estimate": estimate, "load_average": load}))  # fmt: skip


if __name__ == "__main__":
    main()
