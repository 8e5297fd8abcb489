"""One procedure per verdict (#22): the interval beside a verdict and the test behind it agree by construction.

Property-based: hypothesis draws random results frames and random paired samples; the verdicts, Holm levels
and Fieller intervals are checked against their definitions written out here.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from noisypref.reports import paired_tests
from noisypref.reports.declarations import MetricDeclaration, MetricDeclarations, read_metric_declarations
from noisypref.reports.findings import BETTER, NO_DIFFERENCE, TOO_FEW, WORSE, findings
from noisypref.reports.procedure import fieller_interval, holm_levels, paired_t, sample
from noisypref.reports.statistics import curve_runs, holm_adjust
from noisypref.reports.study import normalise_results
from noisypref.reports.tables import format_interval, format_pvalue

ACCURACY = MetricDeclarations(
    {"heldout_accuracy": MetricDeclaration("heldout_accuracy", "held-out accuracy", "higher", 0.0, 1.0)}, found=True
)


def random_results(rng: np.random.Generator, methods: int, seeds: int, rates: int, effects: list[float], noise: float):
    rows = []
    for rate in np.linspace(0.0, 0.4, rates):
        for seed in range(seeds):
            shared = rng.normal(0, 0.02)
            for index in range(methods):
                label = "dpo" if index == 0 else f"m{index}"
                value = 0.7 - 0.4 * rate + (0.0 if index == 0 else effects[index - 1]) + shared + rng.normal(0, noise)
                rows.append({"method_label": label, "seed": seed, "target_flip_rate": float(rate),
                             "realised_flip_rate": float(rate), "heldout_accuracy": value, "run_id": f"{label}-{rate}-{seed}"})  # fmt: skip
    return normalise_results(pd.DataFrame(rows))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    methods=st.integers(2, 4),
    seeds=st.integers(2, 8),
    rates=st.integers(1, 3),
    effects=st.lists(st.sampled_from([0.0, 0.003, 0.01, -0.01, 0.03]), min_size=3, max_size=3),
    noise=st.sampled_from([0.001, 0.005, 0.02]),
)
def test_verdict_is_better_or_worse_exactly_when_the_printed_interval_excludes_zero(
    seed, methods, seeds, rates, effects, noise
):
    results = random_results(np.random.default_rng(seed), methods, seeds, rates, effects, noise)
    found = findings(curve_runs(results), ["heldout_accuracy"], "dpo", ACCURACY)
    assert len(found)
    for row in found.itertuples():
        if row.n_pairs < 3:
            assert row.verdict == TOO_FEW
            continue
        if math.isnan(row.t_pvalue):  # constant differences: no test, no interval
            assert row.verdict == NO_DIFFERENCE and math.isnan(row.ci_low)
            continue
        excludes = row.ci_low > 0 or row.ci_high < 0
        assert (row.verdict in (BETTER, WORSE)) == excludes
        assert row.verdict != BETTER or row.ci_low > 0
        assert row.verdict != WORSE or row.ci_high < 0
        if abs(row.t_pvalue_holm - 0.05) > 1e-9:
            assert excludes == (row.t_pvalue_holm < 0.05)
        assert row.ci_low <= row.mean_difference <= row.ci_high
    # The Holm p-values are those of the hand-written correction of the table's t-tests.
    tested = found["t_pvalue"].notna()
    assert found.loc[tested, "t_pvalue_holm"].tolist() == pytest.approx(holm_adjust(found.loc[tested, "t_pvalue"]))


def test_holm_levels_of_a_worked_example():
    # Sorted: 0.005·4 = 0.02 < 0.05 kept -> level 0.05/4; 0.01·3 = 0.03 -> 0.05/3; 0.03·2 = 0.06 stops -> 0.05/2,
    # and 0.04 shares the level of the first test not rejected.
    levels = holm_levels([0.01, 0.04, np.nan, 0.03, 0.005])
    assert levels[[0, 1, 3, 4]].tolist() == pytest.approx([0.05 / 3, 0.05 / 2, 0.05 / 2, 0.05 / 4])
    assert math.isnan(levels[2])


def test_the_interval_is_the_t_interval_at_its_level():
    values = np.array([0.02, 0.03, 0.01, 0.025, 0.015, 0.02])
    test = paired_t(sample(values))
    assert test.pvalue == pytest.approx(stats.ttest_1samp(values, 0.0).pvalue)
    low, high = test.interval(0.01)
    half = stats.t.ppf(0.995, 5) * values.std(ddof=1) / math.sqrt(6)
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), seeds=st.integers(3, 8), headroom=st.sampled_from([0.0, 0.005, 0.02, 0.1]),
       with_items=st.booleans())  # fmt: skip
def test_fieller_interval_is_bounded_exactly_when_the_headroom_interval_excludes_zero(seed, seeds, headroom, with_items):
    rng = np.random.default_rng(seed)
    denominator_items = headroom + rng.normal(0, 0.3, 200) if with_items else None
    numerator_items = 0.5 * headroom + rng.normal(0, 0.3, 200) if with_items else None
    denominator = sample(headroom + rng.normal(0, 0.02, seeds), denominator_items)
    numerator = sample(0.5 * headroom + rng.normal(0, 0.02, seeds), numerator_items)
    ratio = fieller_interval(numerator, denominator)
    low, high = paired_t(denominator).interval(0.05)
    assert ratio.defined == (low > 0 or high < 0)
    if ratio.defined:
        assert ratio.low <= ratio.estimate <= ratio.high
        assert ratio.estimate == pytest.approx(numerator.mean / denominator.mean)


def test_comparable_flag_is_declared_written_read_and_honoured(tmp_path):
    from noisypref.benchmark.config.metrics import METRICS, declarations_document
    from noisypref.benchmark.evaluation import metrics  # noqa: F401  (declares gold_reward_reference_mean)
    from noisypref.benchmark.run import execute  # noqa: F401  (declares final_loss)

    document = declarations_document(["final_loss", "gold_reward_reference_mean", "heldout_accuracy", "mystery"])
    assert document["metrics"]["final_loss"]["comparable"] is False
    assert document["metrics"]["gold_reward_reference_mean"]["comparable"] is False
    assert document["metrics"]["heldout_accuracy"]["comparable"] is True
    assert METRICS["heldout_accuracy"].comparable and not METRICS["final_loss"].comparable
    (tmp_path / "metrics.json").write_text(json.dumps(document), encoding="utf-8")
    declarations = read_metric_declarations(tmp_path)
    assert not declarations.get("final_loss").comparable and not declarations.get("final_loss").ranked
    # An older metrics.json without the flag: comparable.
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"final_loss": {"direction": "none"}}}))
    assert read_metric_declarations(tmp_path).get("final_loss").comparable
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {"final_loss": {"comparable": "no"}}}))
    with pytest.raises(ValueError, match=r"metrics.final_loss.comparable is 'no'; allowed: true or false"):
        read_metric_declarations(tmp_path)

    results = random_results(np.random.default_rng(2), methods=2, seeds=4, rates=2, effects=[0.0], noise=0.01)
    results["final_loss"] = 0.5
    loss = MetricDeclarations({"final_loss": MetricDeclaration("final_loss", "loss", comparable=False)}, found=True)
    assert paired_tests(results, "dpo", ["final_loss"], loss).empty
    assert findings(curve_runs(results), ["final_loss"], "dpo", loss).empty


def test_printed_numbers_never_hide_which_side_of_zero_or_of_alpha_they_are():
    assert format_interval(0.0003, 0.012) == "[0.0003, 0.012]"
    assert format_interval(-0.00004, 0.5) == "[-4e-05, 0.500]"
    assert format_pvalue(0.0499) == "0.0499" and format_pvalue(0.0501) == "0.0501" and format_pvalue(0.2) == "0.200"
