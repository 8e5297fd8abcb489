"""Statistical power of the default study: how large a paired difference its seeds can resolve.

Runs the embedded default study's grid on a subset (default: dpo, simpo and gamma_dpo at flip rates 0
and 0.4, every seed of the default; one process, caches in ``--cache-dir``), or reads a finished study
folder (``--results runs/default``). For the main metric (held-out accuracy) and each method against
dpo at each rate it prints the mean paired difference over seeds, the seed-to-seed standard deviation
of the paired differences ``sd``, and the smallest true difference that the report's paired t-test
detects with 80 % power at α = 0.05 (two-sided), for the default's number of seeds and for 2 seeds
(the default before issue 14), both with this ``sd``; and the same at α = 0.05 / m, the Bonferroni
bound of the report's Holm family of one metric in one condition: m = competitors other than the
baseline x rates of the default study (6 x 3 = 18). Power of the paired t-test
with n seeds at difference δ: P(|T| > t_{1-α/2, n-1}) for T noncentral t with n − 1 degrees of freedom
and noncentrality δ·√n / sd.

    PYTHONPATH=. python benchmarks/study_power.py [--methods dpo,simpo] [--rates 0,0.4] [--results DIR]
    PYTHONPATH=. python benchmarks/study_power.py --smoke    # seconds: dpo and gamma_dpo at 0.4, seeds 0 and 1,
                                                            # 2 steps of a small testbed

Prints a table; the last line is the same figures as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import integrate, optimize, stats

from noisypref.benchmark.run.execute import execute_run
from noisypref.benchmark.study import default_study_path, load_study, plan_runs

METRIC = "heldout_accuracy"
BASELINE = "dpo"
ALPHA = 0.05
POWER = 0.8
# --smoke: runs of seconds (a small testbed with the default's words and topics, 2 steps, 8 prompts)
SMOKE_SEEDS = (0, 1)
SMOKE_SETTINGS = {
    "training": {"steps": 2, "batch_size": 16},
    "testbed": {"sft_steps": 10, "num_train_pairs": 64, "num_heldout_pairs": 16, "num_eval_prompts": 8},
    "evaluation": {"num_eval_prompts": 8},
}


def paired_t_power(difference: float, sd: float, seeds: int, alpha: float) -> float:
    """Power of the two-sided paired t-test with ``seeds`` pairs when the true mean difference is
    ``difference`` and the differences' standard deviation ``sd``.

    T = (Z + λ) / √(V/ν), Z standard normal, V χ² with ν = n − 1 degrees of freedom, λ = δ√n/sd, so
    P(|T| > c) = E_V[Φ(λ − c√(V/ν)) + Φ(−λ − c√(V/ν))], integrated over V (scipy's noncentral t
    loses its accuracy at the large λ that 2 seeds need)."""
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = difference * math.sqrt(seeds) / sd

    def rejection_given(v: float) -> float:
        scale = critical * math.sqrt(v / df)
        return (
            stats.norm.cdf(noncentrality - scale) + stats.norm.cdf(-noncentrality - scale)
        ) * stats.chi2.pdf(v, df)

    return float(integrate.quad(rejection_given, 0, np.inf, limit=200)[0])


def minimum_detectable_difference(sd: float, seeds: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The difference the paired t-test detects with probability ``power`` (needs seeds >= 2)."""
    if not sd > 0:
        return 0.0
    upper = sd
    while paired_t_power(upper, sd, seeds, alpha) < power:
        upper *= 2
    return float(optimize.brentq(lambda delta: paired_t_power(delta, sd, seeds, alpha) - power, 0.0, upper))


def run_subset(methods: list[str], rates: list[float], cache_dir: Path, smoke: bool = False) -> pd.DataFrame:
    study = load_study(default_study_path())
    runs = [run for run in plan_runs(study) if run.method in methods and run.noise_rate in rates]
    if smoke:
        runs = [run for run in runs if run.seed in SMOKE_SEEDS]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, run in enumerate(runs):
            config = smoke_sized(run.config) if smoke else run.config
            result = execute_run(config, Path(scratch) / run.run_id, cache_dir, device="cpu")
            rows.append(
                {
                    "method_label": run.method,
                    "target_flip_rate": run.noise_rate,
                    "seed": run.seed,
                    METRIC: result["metrics"][METRIC],
                }
            )
            print(f"run {index + 1}/{len(runs)}: {run.describe()}: {METRIC} {result['metrics'][METRIC]:.4f}")
    return pd.DataFrame(rows)


def smoke_sized(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["training"].update(SMOKE_SETTINGS["training"])
    config["dataset"]["testbed"].update(SMOKE_SETTINGS["testbed"])
    config["evaluation"].update(SMOKE_SETTINGS["evaluation"])
    return config


def read_results(folder: Path) -> pd.DataFrame:
    frame = pd.read_parquet(folder / "results.parquet")
    return frame[frame["status"] == "succeeded"][["method_label", "target_flip_rate", "seed", METRIC]]


def holm_family(study) -> int:
    """Tests of one metric in one condition of ``study``'s headline table: each competitor but the baseline
    at each rate."""
    competitors = [variant for variant in study.method_variants() if variant.reference_kind == "none"]
    rates = {rate for noise in study.noise for rate in noise.rates}
    return (len(competitors) - 1) * len(rates)


def power_table(results: pd.DataFrame, default_seeds: int, family: int | None = None) -> pd.DataFrame:
    """One row per method and rate; ``family``: the Holm family for the Bonferroni columns (default: the
    default study's, `holm_family`)."""
    family = family if family is not None else holm_family(load_study(default_study_path()))
    values = results.pivot_table(index=["target_flip_rate", "seed"], columns="method_label", values=METRIC)
    rows = []
    for rate, per_seed in values.groupby(level="target_flip_rate"):
        for method in per_seed.columns:
            if method == BASELINE:
                continue
            differences = (per_seed[method] - per_seed[BASELINE]).dropna().to_numpy()
            sd = float(np.std(differences, ddof=1))
            rows.append(
                {
                    "rate": rate,
                    "method": method,
                    "seeds": len(differences),
                    "mean_difference": float(differences.mean()),
                    "sd_difference": sd,
                    f"mdd_{default_seeds}_seeds": minimum_detectable_difference(sd, default_seeds),
                    "mdd_2_seeds": minimum_detectable_difference(sd, 2),
                    f"mdd_{default_seeds}_seeds_bonferroni": minimum_detectable_difference(
                        sd, default_seeds, ALPHA / family
                    ),
                    "mdd_2_seeds_bonferroni": minimum_detectable_difference(sd, 2, ALPHA / family),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default="dpo,simpo,gamma_dpo", help="method labels; must include dpo")
    parser.add_argument("--rates", default="0,0.4", help="flip rates of the default study")
    parser.add_argument("--results", type=Path, help="a finished study folder to read instead of running")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/study_power"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds, for CI: dpo and gamma_dpo at rate 0.4, seeds 0 and 1, a small testbed in a scratch cache",
    )
    args = parser.parse_args()
    if args.smoke:
        args.methods, args.rates = "dpo,gamma_dpo", "0.4"

    default_study = load_study(default_study_path())
    default_seeds, family = len(default_study.seeds), holm_family(default_study)
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    if args.results is not None:
        results = read_results(args.results)
    else:
        methods = args.methods.split(",")
        if BASELINE not in methods:
            parser.error(f"--methods must include the baseline {BASELINE}")
        rates = [float(rate) for rate in args.rates.split(",")]
        with contextlib.ExitStack() as scratch:
            cache_dir = Path(scratch.enter_context(tempfile.TemporaryDirectory())) if args.smoke else args.cache_dir
            results = run_subset(methods, rates, cache_dir, smoke=args.smoke)
    table = power_table(results, default_seeds, family)
    load = os.getloadavg()

    print(
        f"\n{METRIC}: paired differences against {BASELINE} over seeds; smallest difference detectable with "
        f"{POWER:.0%} power by the paired t-test at alpha {ALPHA} (and {ALPHA}/{family}, Bonferroni)"
    )
    header = (
        f"{'rate':>5} {'method':<12} {'seeds':>5} {'mean diff':>10} {'sd diff':>8} "
        f"{f'MDD {default_seeds} seeds':>12} {'MDD 2 seeds':>12} {f'MDD {default_seeds}, /{family}':>12} {f'MDD 2, /{family}':>11}"
    )
    print(header)
    for row in table.itertuples(index=False):
        row = row._asdict()
        print(
            f"{row['rate']:>5.2f} {row['method']:<12} {row['seeds']:>5d} {row['mean_difference']:>+10.4f} "
            f"{row['sd_difference']:>8.4f} {row[f'mdd_{default_seeds}_seeds']:>12.4f} {row['mdd_2_seeds']:>12.4f} "
            f"{row[f'mdd_{default_seeds}_seeds_bonferroni']:>12.4f} {row['mdd_2_seeds_bonferroni']:>11.4f}"
        )
    elapsed = {"wall_s": time.perf_counter() - started_wall, "cpu_s": time.process_time() - started_cpu}
    print(
        f"{len(results)} runs, {elapsed['wall_s']:.0f} s wall, {elapsed['cpu_s']:.0f} CPU-s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        json.dumps(
            {
                "metric": METRIC,
                "baseline": BASELINE,
                "default_seeds": default_seeds,
                "rows": table.to_dict(orient="records"),
                "runs": len(results),
                **elapsed,
                "load_average": load,
            }
        )
    )


if __name__ == "__main__":
    main()
