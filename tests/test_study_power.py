"""The power arithmetic of benchmarks/study_power.py (issue 14), against scipy's noncentral t distribution."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import study_power  # noqa: E402  (a script of benchmarks/, not a package module)


def scipy_nct_power(difference: float, sd: float, seeds: int, alpha: float) -> float:
    """Second implementation: scipy's noncentral t distribution (accurate at moderate noncentrality)."""
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = difference * np.sqrt(seeds) / sd
    return stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)


@pytest.mark.parametrize(("difference", "sd", "seeds"), [(0.02, 0.03, 8), (0.05, 0.03, 5), (0.01, 0.02, 20)])
def test_paired_t_power_matches_the_noncentral_t_distribution(difference, sd, seeds) -> None:
    assert study_power.paired_t_power(difference, sd, seeds, 0.05) == pytest.approx(
        scipy_nct_power(difference, sd, seeds, 0.05), abs=1e-7
    )


def test_power_at_no_difference_is_the_test_size() -> None:
    assert study_power.paired_t_power(0.0, 1.0, 6, 0.05) == pytest.approx(0.05, abs=1e-8)


@pytest.mark.parametrize("seeds", [5, 8, 12])
def test_minimum_detectable_difference_solves_the_power_equation(seeds) -> None:
    expected = optimize.brentq(lambda delta: scipy_nct_power(delta, 1.0, seeds, 0.05) - 0.8, 0.5, 2.0)
    assert study_power.minimum_detectable_difference(1.0, seeds) == pytest.approx(expected, rel=1e-6)


def test_two_seeds_need_a_difference_about_ten_times_larger_than_eight() -> None:
    # with one degree of freedom the critical t is 12.71: 80 % power needs a difference of ~11.5 sd
    two = study_power.minimum_detectable_difference(1.0, 2)
    eight = study_power.minimum_detectable_difference(1.0, 8)
    assert 11.0 < two < 12.0
    assert 1.1 < eight < 1.2
    # Monte Carlo check of the 2-seed value: paired differences N(two, 1), two-sided t-test at 0.05
    rng = np.random.default_rng(0)
    samples = rng.normal(two, 1.0, size=(200_000, 2))
    t = samples.mean(axis=1) / (samples.std(axis=1, ddof=1) / np.sqrt(2))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 1)) == pytest.approx(0.8, abs=0.005)


def test_power_table_pairs_methods_with_the_baseline_by_seed() -> None:
    rows = []
    for seed, (dpo, simpo) in enumerate([(0.70, 0.80), (0.72, 0.79), (0.69, 0.81), (0.71, 0.78)]):
        rows += [
            {"method_label": "dpo", "target_flip_rate": 0.0, "seed": seed, "heldout_accuracy": dpo},
            {"method_label": "simpo", "target_flip_rate": 0.0, "seed": seed, "heldout_accuracy": simpo},
        ]
    table = study_power.power_table(pd.DataFrame(rows), default_seeds=4)
    differences = np.array([0.10, 0.07, 0.12, 0.07])
    (row,) = table.to_dict(orient="records")
    assert row["method"] == "simpo" and row["seeds"] == 4
    assert row["mean_difference"] == pytest.approx(differences.mean())
    assert row["sd_difference"] == pytest.approx(differences.std(ddof=1))
    assert row["mdd_4_seeds"] == pytest.approx(
        study_power.minimum_detectable_difference(differences.std(ddof=1), 4)
    )
