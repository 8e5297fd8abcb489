"""Does a study's regime answer the question of issue 22? The premise numbers of a testbed setting.

For a study file (default: the embedded default study) with optional overrides, runs DPO at each flip
rate and seed, and the oracle: DPO trained on the clean pairs only. Until studies have the
``clean_only`` reference, the oracle is emulated: a rate-0 run on the first round((1 − rate)·N) training
pairs (``dataset.max_pairs``), with the same training settings. Symmetric exact flips pick a uniformly
random set of pairs and the testbed's pairs are drawn independently, so the pairs left after removing
the flipped ones and the first (1 − rate)·N pairs are equal in distribution.

Per rate it prints, as mean (seed-to-seed sd) over the seeds:

- ``agree``: share of the training labels that agree with the gold order (``label_gold_agreement``;
  at rate 0 the testbed's own Bradley–Terry labels, the issue's target ≥ 0.90);
- ``auroc gold`` / ``auroc dpo``: AUROC with which the gold reward gap / DPO's final reward gap
  separate flipped from clean training pairs (target for DPO ≥ 0.75 at 20 %);
- ``acc dpo`` / ``acc oracle`` / ``headroom``: held-out accuracy of DPO, of the oracle, and the
  difference oracle − DPO of the same seed (target ≥ 0.10 at 40 %);
- ``win dpo`` / ``win oracle``: gold win rate against the reference policy (watch for saturation);
- further methods named by ``--methods``: their held-out accuracy and detection AUROC (γ methods: of γ
  too), to compare a γ method with its base in the same regime;
- CPU-seconds per run (user + sys of this process, ``time.process_time``, one torch thread, caches warm
  after the testbed build, which is timed separately), by method.

Settings: ``--set SECTION.FIELD=VALUE`` with SECTION one of ``testbed``, ``training``, ``evaluation``
or a method label (its hyperparameters), the value read as YAML; repeatable.

    PYTHONPATH=. python benchmarks/regime_probe.py --set testbed.bt_temperature=0.05 \\
        --set training.steps=96 --rates 0,0.2,0.4 --seeds 0,1,2 [--methods dpo,gamma_dpo]
    PYTHONPATH=. python benchmarks/regime_probe.py --smoke     # a tiny testbed, seconds (CI)

Prints a table; the last line is the same figures as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import transformers
import yaml

from noisypref.benchmark.config.run_config import parse_run_config
from noisypref.benchmark.run.execute import execute_run
from noisypref.benchmark.study import default_study_path, parse_study, plan_runs
from noisypref.benchmark.study.yaml_io import read_yaml
from noisypref.benchmark.testbed import build_testbed

BASELINE = "dpo"
ORACLE = "oracle"
SETTING_SECTIONS = ("testbed", "training", "evaluation")
SMOKE_SETTINGS = {  # a testbed and training small enough for seconds: checks the script, measures nothing
    "testbed": {"sft_steps": 10, "num_train_pairs": 64, "num_heldout_pairs": 32, "num_eval_prompts": 8},
    "training": {"steps": 2, "batch_size": 16},
    "evaluation": {"num_eval_prompts": 8},
}


def usage_error(message: str) -> None:
    """A mistake in the command line: say so and exit 2, having run nothing."""
    print(f"regime_probe.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_settings(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """``SECTION.FIELD=VALUE`` strings -> {section: {field: value}}; exits 2 on a malformed one."""
    settings: dict[str, dict[str, Any]] = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        section, dot, field = name.partition(".")
        if not separator or not dot or not section or not field:
            usage_error(f"--set {assignment!r}: expected SECTION.FIELD=VALUE, e.g. testbed.bt_temperature=0.05")
        settings.setdefault(section, {})[field] = setting_value(value)
    return settings


def setting_value(text: str) -> Any:
    """The value of ``--set``, read as YAML, where 3e-3 is a number (YAML 1.1 reads it as text)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def probe_study(
    raw_study: dict[str, Any], settings: dict[str, dict[str, Any]], methods: list[str], rates: list[float], seeds: list[int]
) -> dict[str, Any]:
    """The study restricted to ``methods`` (labels), symmetric exact flips at ``rates`` and ``seeds``, with
    ``settings`` applied: testbed fields to every testbed dataset, method settings to that label's
    hyperparameters."""
    raw = copy.deepcopy(raw_study)
    raw["name"] = "regime-probe"
    raw["noise"] = [{"model": "symmetric", "rates": rates, "options": {"mode": "exact"}}]
    raw["seeds"] = seeds
    for section in ("training", "evaluation"):
        raw[section] = {**raw.get(section, {}), **settings.get(section, {})}
    datasets = raw.get("datasets", [{"kind": "testbed"}])
    testbeds = [dataset for dataset in datasets if dataset.get("kind", "testbed") == "testbed"]
    if len(testbeds) != 1:
        usage_error(f"the study has {len(testbeds)} testbed datasets; the probe needs exactly one")
    testbeds[0]["testbed"] = {**testbeds[0].get("testbed", {}), **settings.get("testbed", {})}
    raw["datasets"] = testbeds
    labels = {entry.get("label", entry["name"]) for entry in raw["methods"]}
    if set(methods) - labels:
        usage_error(f"--methods {sorted(set(methods) - labels)} are not in the study; it has {sorted(labels)}")
    unknown_sections = set(settings) - set(SETTING_SECTIONS) - labels
    if unknown_sections:
        usage_error(
            f"--set sections {sorted(unknown_sections)}: a section is one of {', '.join(SETTING_SECTIONS)} "
            f"or a method label of the study ({', '.join(sorted(labels))})"
        )
    if BASELINE not in methods:
        usage_error(f"--methods must include {BASELINE!r}: the oracle and the headroom are measured against it")
    raw["methods"] = [entry for entry in raw["methods"] if entry.get("label", entry["name"]) in methods]
    for entry in raw["methods"]:
        overrides = settings.get(entry.get("label", entry["name"]), {})
        entry["hyperparameters"] = {**entry.get("hyperparameters", {}), **overrides}
    return raw


def planned_configs(raw: dict[str, Any]) -> list[tuple[str, float, int, dict[str, Any]]]:
    """(method label, rate, seed, run config) of the study's runs and of the emulated oracle."""
    study = parse_study(raw, source="the probe's study")
    runs = [(run.method, run.noise_rate, run.seed, run.config) for run in plan_runs(study)]
    oracles = []
    for method, rate, seed, _ in runs:
        if method != BASELINE or rate == 0:
            continue
        clean = next(c for m, r, s, c in runs if m == BASELINE and r == 0 and s == seed)
        testbed = parse_run_config(clean).dataset.testbed
        oracle = copy.deepcopy(clean)
        oracle["dataset"]["max_pairs"] = round((1 - rate) * testbed.num_train_pairs)
        oracles.append((ORACLE, rate, seed, oracle))
    return runs + oracles


def measure(configs: list[tuple[str, float, int, dict[str, Any]]], cache_dir: Path) -> tuple[list[dict], float]:
    """Runs every config in this process; rows of metrics and CPU-seconds, and the testbed build's CPU-s."""
    started = time.process_time()
    build_testbed(parse_run_config(configs[0][3]).dataset.testbed, cache_dir)
    build_seconds = time.process_time() - started
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (method, rate, seed, config) in enumerate(configs):
            started = time.process_time()
            run_dir = Path(scratch) / f"run-{index}"
            result = execute_run(config, run_dir, cache_dir, device="cpu")
            cpu_seconds = time.process_time() - started
            rows.append(
                {
                    "method": method,
                    "rate": rate,
                    "seed": seed,
                    "cpu_seconds": cpu_seconds,
                    **result["metrics"],
                    **gap_statistics(pd.read_parquet(run_dir / "pairs.parquet")),
                }
            )
            print(
                f"  {method:<14} rate {rate:.2f} seed {seed}: held-out accuracy {result['metrics']['heldout_accuracy']:.3f}"
                f", {cpu_seconds:.1f} CPU-s",
                file=sys.stderr,
                flush=True,
            )
    return rows, build_seconds


def gap_statistics(pairs: pd.DataFrame) -> dict[str, float]:
    """Spread of the final reward gaps of the training pairs (pairs.parquet) and, for γ methods, how far γ
    is a straight line in the gap: its slope and correlation (docs/methods.md, small-gap analysis)."""
    gaps = pairs["reward_gap"].to_numpy()
    statistics = {"reward_gap_sd": float(gaps.std())}
    if "gamma" in pairs:
        gamma = pairs["gamma"].to_numpy()
        statistics["gamma_gap_slope"] = float(np.polyfit(gaps, gamma, 1)[0])
        statistics["gamma_gap_correlation"] = float(np.corrcoef(gaps, gamma)[0, 1])
    return statistics


def summarise(rows: list[dict], methods: list[str], rates: list[float]) -> dict[str, Any]:
    """Per rate: means and seed-to-seed sds of the premise numbers; CPU-seconds per run by method."""

    def values(method: str, rate: float, metric: str) -> dict[int, float]:
        return {
            row["seed"]: row[metric]
            for row in rows
            if row["method"] == method and row["rate"] == rate and metric in row
        }

    def stats(by_seed: dict[int, float]) -> list[float] | None:
        if not by_seed:
            return None
        array = np.array(list(by_seed.values()))
        return [float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0]

    per_rate = {}
    for rate in rates:
        dpo = values(BASELINE, rate, "heldout_accuracy")
        oracle = values(ORACLE, rate, "heldout_accuracy") if rate > 0 else dpo
        entry = {
            "label_gold_agreement": stats(values(BASELINE, rate, "label_gold_agreement")),
            "noise_detection_auroc_gold": stats(values(BASELINE, rate, "noise_detection_auroc_gold")),
            "dpo_noise_detection_auroc": stats(values(BASELINE, rate, "noise_detection_auroc")),
            "dpo_heldout_accuracy": stats(dpo),
            "oracle_heldout_accuracy": stats(oracle),
            "headroom": stats({seed: oracle[seed] - dpo[seed] for seed in dpo if seed in oracle}),
            "dpo_gold_win_rate": stats(values(BASELINE, rate, "gold_win_rate")),
            "dpo_reward_gap_sd": stats(values(BASELINE, rate, "reward_gap_sd")),
            "oracle_gold_win_rate": stats(
                values(ORACLE if rate > 0 else BASELINE, rate, "gold_win_rate")
            ),
        }
        for method in methods:
            if method == BASELINE:
                continue
            for metric in (
                "heldout_accuracy",
                "gold_win_rate",
                "noise_detection_auroc",
                "noise_detection_auroc_gamma",
                "reward_gap_sd",
                "gamma_gap_slope",
                "gamma_gap_correlation",
            ):
                found = stats(values(method, rate, metric))
                if found is not None:
                    entry[f"{method}_{metric}"] = found
        per_rate[f"{rate:g}"] = entry
    cpu = {}
    for method in [*methods, ORACLE]:
        seconds = [row["cpu_seconds"] for row in rows if row["method"] == method]
        if seconds:
            cpu[method] = float(np.mean(seconds))
    return {"per_rate": per_rate, "cpu_seconds_per_run": cpu}


def print_table(summary: dict[str, Any], methods: list[str]) -> None:
    def show(pair: list[float] | None) -> str:
        return "—" if pair is None else f"{pair[0]:.3f} ({pair[1]:.3f})"

    columns = [
        ("agree", "label_gold_agreement"),
        ("auroc gold", "noise_detection_auroc_gold"),
        ("auroc dpo", "dpo_noise_detection_auroc"),
        ("acc dpo", "dpo_heldout_accuracy"),
        ("acc oracle", "oracle_heldout_accuracy"),
        ("headroom", "headroom"),
        ("win dpo", "dpo_gold_win_rate"),
        ("win oracle", "oracle_gold_win_rate"),
        ("gap sd dpo", "dpo_reward_gap_sd"),
    ]
    print("mean (seed-to-seed sd) over seeds")
    print_columns(summary, columns, show)
    for method in methods:
        if method == BASELINE:
            continue
        names = ("heldout_accuracy", "gold_win_rate", "noise_detection_auroc", "noise_detection_auroc_gamma",
                 "reward_gap_sd", "gamma_gap_slope", "gamma_gap_correlation")  # fmt: skip
        titles = ("acc", "win", "auroc", "auroc γ", "gap sd", "γ slope", "γ corr")
        present = [
            (title, f"{method}_{name}")
            for title, name in zip(titles, names, strict=True)
            if any(f"{method}_{name}" in entry for entry in summary["per_rate"].values())
        ]
        print(method)
        print_columns(summary, present, show)
    print(
        "CPU-s per run: "
        + ", ".join(f"{method} {seconds:.2f}" for method, seconds in summary["cpu_seconds_per_run"].items())
    )


def print_columns(summary: dict[str, Any], columns: list[tuple[str, str]], show: Any) -> None:
    width = max(16, *(len(title) + 2 for title, _ in columns))
    print(f"{'rate':<6}" + "".join(f"{title:>{width}}" for title, _ in columns))
    for rate, entry in summary["per_rate"].items():
        print(f"{rate:<6}" + "".join(f"{show(entry.get(key)):>{width}}" for _, key in columns))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", type=Path, default=None, help="a study file (default: the embedded default)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="settings")
    parser.add_argument("--methods", default=BASELINE, help="comma-separated method labels of the study (must include dpo)")
    parser.add_argument("--rates", default="0,0.2,0.4", help="comma-separated flip rates (default 0,0.2,0.4)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/regime_probe"))
    parser.add_argument("--smoke", action="store_true", help="a tiny testbed, one seed, rates 0 and 0.4: seconds")
    args = parser.parse_args(argv)

    settings = parse_settings(args.settings)
    try:
        rates = sorted({float(rate) for rate in args.rates.split(",")})
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError as error:
        parser.error(f"--rates / --seeds: {error}")
    if any(not 0 <= rate < 1 for rate in rates) or 0.0 not in rates:
        parser.error(f"--rates {args.rates}: rates in [0, 1), including 0 (the clean level)")
    methods = args.methods.split(",")
    raw_study = read_yaml(args.study or default_study_path())
    smoke_cache = None
    if args.smoke:
        for section, values in SMOKE_SETTINGS.items():
            settings[section] = {**values, **settings.get(section, {})}
        rates, seeds = [0.0, 0.4], [0]
        smoke_cache = tempfile.TemporaryDirectory()
        args.cache_dir = Path(smoke_cache.name)

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    load_before = os.getloadavg()
    configs = planned_configs(probe_study(raw_study, settings, methods, rates, seeds))
    rows, build_seconds = measure(configs, args.cache_dir)
    load_after = os.getloadavg()
    summary = summarise(rows, methods, rates)
    print(f"regime probe: {len(rows)} runs; settings {json.dumps(settings)}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print_table(summary, methods)
    print(f"testbed build (or cache read): {build_seconds:.1f} CPU-s")
    print(
        json.dumps(
            {
                "settings": settings,
                "methods": methods,
                "rates": rates,
                "seeds": seeds,
                "runs": len(rows),
                **summary,
                "testbed_build_cpu_seconds": build_seconds,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "smoke": args.smoke,
            }
        )
    )
    if smoke_cache is not None:
        smoke_cache.cleanup()


if __name__ == "__main__":
    main()
