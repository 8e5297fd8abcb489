"""The findings of a report (headline table, ranking, paragraph) against values computed here by hand.

The synthetic study has one real effect (``gamma``: +0.10 held-out accuracy at every rate) and one
null (``smooth``: the same accuracy as ``dpo``), per-item files whose means are the runs' metrics,
metric declarations and a study file with a ``report:`` section, as the benchmark writes them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from noisypref.cli import main
from noisypref.reports import write_report
from noisypref.reports.bootstrap import Part, hierarchical_bootstrap
from noisypref.reports.declarations import read_metric_declarations
from noisypref.reports.figures import (
    gamma_figure,
    method_styles,
    robustness_figure,
    texts_outside,
    training_figure,
)
from noisypref.reports.findings import findings
from noisypref.reports.intervals import method_intervals
from noisypref.reports.statistics import curve_runs
from noisypref.reports.tables import format_pvalue

RATES = (0.0, 0.2, 0.4)
EFFECTS = {"dpo": 0.0, "gamma": 0.10, "smooth": 0.0}  # held-out accuracy over dpo, at every rate
ITEMS = 400
METRICS_JSON = {
    "version": 1,
    "metrics": {
        "heldout_accuracy": {"label": "held-out accuracy", "direction": "higher", "bounds": [0.0, 1.0],
                             "noisy_labels": False, "diagnostic": False, "description": "clean held-out pairs"},
        "gold_win_rate": {"label": "gold win rate", "direction": "higher", "bounds": [0.0, 1.0],
                          "noisy_labels": False, "diagnostic": False, "description": "vs the reference"},
        "final_loss": {"label": "final training loss", "direction": "lower", "bounds": [0.0, None],
                       "noisy_labels": True, "diagnostic": True, "description": "last step"},
    },
}  # fmt: skip
STUDY_YAML = "name: synthetic\nseeds: [0, 1, 2, 3, 4, 5]\nreport:\n  primary_metrics: [heldout_accuracy, gold_win_rate]\n  baseline: dpo\n"


def make_study(directory: Path, seeds=range(6), effects=EFFECTS, with_items=True, declarations=True,
               study_yaml=STUDY_YAML, seed: int = 3) -> Path:  # fmt: skip
    """Write a study folder with known effects; every run's metric is the mean of its items."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for rate in RATES:
        for run_seed in seeds:
            seed_shift = 0.02 * rng.standard_normal()  # shared by the methods of a seed (same flips)
            # The same held-out pairs for every method of a seed: a shared difficulty and shared uniforms, so
            # that two methods of equal accuracy agree on most items, as trained models do.
            difficulty = rng.normal(0.0, 0.25, ITEMS)
            uniforms = rng.random(ITEMS)
            for label, effect in effects.items():
                run_id = f"{label}-r{rate:.1f}-s{run_seed}"
                accuracy = 0.72 - 0.4 * rate + effect + seed_shift + 0.01 * rng.standard_normal()
                correct = (uniforms < np.clip(accuracy + difficulty, 0, 1)).astype(float)
                win = rng.choice([0.0, 0.5, 1.0], size=ITEMS, p=_win_probabilities(0.9 - 0.5 * rate))
                rows.append({
                    "study": "synthetic", "run_id": run_id, "dataset": "testbed", "noise_model": "symmetric",
                    "target_flip_rate": rate, "realised_flip_rate": rate, "method_label": label,
                    "method_name": "gamma_dpo" if label == "gamma" else label, "hyperparameters": "{}",
                    "seed": run_seed, "model": "tiny", "heldout_accuracy": correct.mean(),
                    "gold_win_rate": win.mean(), "final_loss": 0.5 + rate + 0.01 * rng.standard_normal(),
                    "wall_time_s": 1.0, "status": "succeeded", "failure_reason": None,
                })  # fmt: skip
                if with_items:
                    run_dir = directory / "runs" / run_id
                    run_dir.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame({
                        "metric": ["heldout_accuracy"] * ITEMS + ["gold_win_rate"] * ITEMS,
                        "item": [f"pair-{i}" for i in range(ITEMS)] + [f"prompt-{i}" for i in range(ITEMS)],
                        "value": np.concatenate([correct, win]),
                    }).to_parquet(run_dir / "items.parquet", index=False)  # fmt: skip
    pd.DataFrame(rows).to_parquet(directory / "results.parquet", index=False)
    if declarations:
        (directory / "metrics.json").write_text(json.dumps(METRICS_JSON), encoding="utf-8")
    if study_yaml is not None:
        (directory / "study.yaml").write_text(study_yaml, encoding="utf-8")
    return directory


def _win_probabilities(win_rate: float) -> list[float]:
    tie = 0.1
    return [1 - win_rate - tie / 2, tie, win_rate - tie / 2]


def hand_holm(pvalues: list[float]) -> list[float]:
    """Holm (1979): the i-th smallest of m p-values times (m − i + 1), made monotone."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda index: pvalues[index])
    adjusted = [0.0] * m
    for rank, index in enumerate(order):
        adjusted[index] = min(1.0, max((m - j) * pvalues[order[j]] for j in range(rank + 1)))
    return adjusted


def per_seed(results: pd.DataFrame, label: str, rate: float, metric: str) -> pd.Series:
    rows = results[(results["method_label"] == label) & (results["target_flip_rate"] == rate)]
    return rows.set_index("seed")[metric].sort_index()


def trapezoid_weights(x) -> np.ndarray:
    """Σ w·y = trapezoid(y, x) / (x_max − x_min), written out."""
    x = list(x)
    weights = [0.0] * len(x)
    for i in range(len(x) - 1):
        weights[i] += (x[i + 1] - x[i]) / 2
        weights[i + 1] += (x[i + 1] - x[i]) / 2
    return np.array(weights) / (x[-1] - x[0])


def textbook_bootstrap(seeds_items: list[list[tuple[float, np.ndarray]]], resamples: int, rng) -> np.ndarray:
    """The two-stage bootstrap with explicit index draws: seeds, then items of each drawn seed."""
    replicates = np.empty(resamples)
    for b in range(resamples):
        total = 0.0
        for s in rng.integers(0, len(seeds_items), len(seeds_items)):
            total += sum(w * items[rng.integers(0, len(items), len(items))].mean() for w, items in seeds_items[s])
        replicates[b] = total / len(seeds_items)
    return replicates


def items_of(directory: Path, run_id: str, metric: str) -> np.ndarray:
    items = pd.read_parquet(directory / "runs" / run_id / "items.parquet")
    return items[items["metric"] == metric].sort_values("item")["value"].to_numpy()


# The findings table, number by number.


def hand_crossed_test(seed_values, item_means) -> tuple[float, float, float]:
    """p, se and df of a mean over seeds whose items are shared: se² = var_s/S + var_i/n, Welch–Satterthwaite
    degrees of freedom, written out."""
    seed_values, item_means = np.asarray(seed_values, dtype=float), np.asarray(item_means, dtype=float)
    s, n = len(seed_values), len(item_means)
    a = seed_values.var(ddof=1) / s
    b = item_means.var(ddof=1) / n
    df = (a + b) ** 2 / (a**2 / (s - 1) + b**2 / (n - 1))
    se = math.sqrt(a + b)
    return 2 * stats.t.sf(abs(seed_values.mean()) / se, df), se, df


def test_findings_differences_pvalues_and_holm_match_a_hand_computation(default_study):
    # #22 (one procedure per verdict): the test carries the item sampling of the shared held-out items.
    directory = default_study
    results = pd.read_parquet(directory / "results.parquet")
    found = pd.read_csv(directory / "report" / "findings.csv")
    accuracy = found[found["metric"] == "heldout_accuracy"].reset_index(drop=True)
    assert len(accuracy) == 2 * (len(RATES) + 1)  # gamma and smooth, each rate and the AUC
    weights = trapezoid_weights(RATES)
    expected_p = []
    for row in accuracy.itertuples():
        rates, rate_weights = ([row.target_flip_rate], [1.0]) if row.quantity == "value" else (RATES, weights)
        method = sum(w * per_seed(results, row.method_label, r, "heldout_accuracy") for w, r in zip(rate_weights, rates))
        baseline = sum(w * per_seed(results, "dpo", r, "heldout_accuracy") for w, r in zip(rate_weights, rates))
        item_means = np.mean([
            sum(w * (items_of(directory, f"{row.method_label}-r{r:.1f}-s{s}", "heldout_accuracy")
                     - items_of(directory, f"dpo-r{r:.1f}-s{s}", "heldout_accuracy")) for w, r in zip(rate_weights, rates))
            for s in range(6)
        ], axis=0)  # fmt: skip
        assert row.n_pairs == 6
        assert row.mean_difference == pytest.approx((method - baseline).mean())
        assert row.method_mean == pytest.approx(method.mean()) and row.baseline_mean == pytest.approx(baseline.mean())
        expected, se, df = hand_crossed_test((method - baseline).to_numpy(), item_means)
        assert row.t_pvalue == pytest.approx(expected, rel=1e-6)
        assert row.standard_error == pytest.approx(se) and row.df == pytest.approx(df)
        expected_p.append(expected)
    assert accuracy["t_pvalue_holm"].tolist() == pytest.approx(hand_holm(expected_p), rel=1e-6)


def test_paired_tests_section_gives_the_findings_p_values(default_study):
    # The "Paired tests against dpo" section and paired_tests.csv use the findings' procedure: a reader sees one p
    # per comparison. Expected values by hand (seeds and items, Holm over rates and the AUC of one table).
    directory = default_study
    results = pd.read_parquet(directory / "results.parquet")
    found = pd.read_csv(directory / "report" / "findings.csv")
    paired = pd.read_csv(directory / "report" / "paired_tests.csv")
    assert set(paired["metric"]) == {"heldout_accuracy", "gold_win_rate", "final_loss"}
    keys = ["metric", "method_label", "quantity", "target_flip_rate"]
    accuracy = paired[paired["metric"] == "heldout_accuracy"].sort_values(keys, na_position="last")
    assert len(accuracy) == 2 * (len(RATES) + 1)
    weights = trapezoid_weights(RATES)
    expected_p = []
    for row in accuracy.itertuples():
        rates, rate_weights = ([row.target_flip_rate], [1.0]) if row.quantity == "value" else (RATES, weights)
        differences = sum(
            w * (per_seed(results, row.method_label, r, "heldout_accuracy") - per_seed(results, "dpo", r, "heldout_accuracy"))
            for w, r in zip(rate_weights, rates)
        ).to_numpy()  # fmt: skip
        item_means = np.mean([
            sum(w * (items_of(directory, f"{row.method_label}-r{r:.1f}-s{s}", "heldout_accuracy")
                     - items_of(directory, f"dpo-r{r:.1f}-s{s}", "heldout_accuracy")) for w, r in zip(rate_weights, rates))
            for s in range(6)
        ], axis=0)  # fmt: skip
        expected, _, _ = hand_crossed_test(differences, item_means)
        assert row.t_pvalue == pytest.approx(expected, rel=1e-6)
        assert row.sd_difference == pytest.approx(differences.std(ddof=1))
        assert row.cohens_dz == pytest.approx(differences.mean() / differences.std(ddof=1))
        expected_p.append(expected)
    assert accuracy["t_pvalue_holm"].tolist() == pytest.approx(hand_holm(expected_p), rel=1e-6)
    # The same numbers as the findings, row by row.
    same = accuracy.merge(found, on=keys, suffixes=("", "_findings"))
    assert len(same) == len(accuracy)
    for column in ("t_pvalue", "t_pvalue_holm", "ci_low", "ci_high", "mean_difference"):
        assert same[column].tolist() == pytest.approx(same[f"{column}_findings"].tolist(), rel=1e-12)
    assert same["verdict"].tolist() == same["verdict_findings"].tolist()
    # The section's table prints those p-values.
    table = (directory / "report" / "tables" / "paired-heldout-accuracy-testbed-symmetric-tiny.md").read_text()
    gamma_20 = next(line for line in table.splitlines() if line.startswith("| gamma | 20 %"))
    row = accuracy[(accuracy["method_label"] == "gamma") & (accuracy["target_flip_rate"] == 0.2)].iloc[0]
    cells = [cell.strip() for cell in gamma_20.split("|")[1:-1]]
    assert cells[6:8] == [format_pvalue(row["t_pvalue"]), format_pvalue(row["t_pvalue_holm"])]


def write_and_read_findings(directory: Path) -> pd.DataFrame:
    write_report(directory)
    return pd.read_csv(directory / "report" / "findings.csv")


@pytest.fixture(scope="module")
def default_study(tmp_path_factory) -> Path:
    """The synthetic study with six seeds and items, its report written once for the tests that read it."""
    directory = make_study(tmp_path_factory.mktemp("default") / "study")
    write_report(directory)
    return directory


def test_the_real_effect_is_better_and_the_null_is_no_detectable_difference(default_study):
    directory = default_study
    found = pd.read_csv(directory / "report" / "findings.csv")
    accuracy = found[found["metric"] == "heldout_accuracy"]
    assert set(accuracy.loc[accuracy["method_label"] == "gamma", "verdict"]) == {"better"}
    assert set(accuracy.loc[accuracy["method_label"] == "smooth", "verdict"]) == {"no detectable difference"}
    gamma = accuracy[accuracy["method_label"] == "gamma"]
    assert (gamma["ci_low"] > 0).all() and (gamma["mean_difference"].between(0.05, 0.15)).all()
    smooth = accuracy[accuracy["method_label"] == "smooth"]
    assert ((smooth["ci_low"] < 0) & (smooth["ci_high"] > 0)).any()
    assert set(found["ci_method"]) == {"paired t (seeds and items)"}

    markdown = (directory / "report" / "report.md").read_text(encoding="utf-8")
    headline = markdown.split("*testbed · symmetric: held-out accuracy")[1].split("\n\n")[1]
    gamma_line = next(line for line in headline.splitlines() if line.startswith("| gamma"))
    smooth_line = next(line for line in headline.splitlines() if line.startswith("| smooth"))
    assert gamma_line.count("better") == len(RATES) + 1 and "worse" not in gamma_line
    assert smooth_line.count("no detectable difference") == len(RATES) + 1
    assert "**" not in headline  # no bold "best" in the headline


def hand_holm_levels(pvalues: list[float], alpha: float = 0.05) -> list[float]:
    """The level Holm's step-down tests each p at: α/(m − r) at 0-based rank r until the first test it
    keeps, whose level every later test shares (Holm 1979), written out."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda index: pvalues[index])
    levels, stopped = [0.0] * m, None
    for rank, index in enumerate(order):
        if stopped is None and pvalues[index] * (m - rank) >= alpha:
            stopped = alpha / (m - rank)
        levels[index] = alpha / (m - rank) if stopped is None else stopped
    return levels


def test_seed_only_interval_is_the_paired_t_interval_at_the_holm_level(tmp_path):
    # #22: the interval beside a verdict is the t interval at its Holm level (was a percentile bootstrap).
    directory = make_study(tmp_path / "study", with_items=False)
    results = pd.read_parquet(directory / "results.parquet")
    found = write_and_read_findings(directory)
    accuracy = found[found["metric"] == "heldout_accuracy"].reset_index(drop=True)
    weights = trapezoid_weights(RATES)
    differences = []
    for row in accuracy.itertuples():
        rates, rate_weights = ([row.target_flip_rate], [1.0]) if row.quantity == "value" else (RATES, weights)
        differences.append(sum(w * (per_seed(results, row.method_label, r, "heldout_accuracy")
                                    - per_seed(results, "dpo", r, "heldout_accuracy"))
                               for w, r in zip(rate_weights, rates)).to_numpy())  # fmt: skip
    pvalues = [stats.ttest_1samp(d, 0.0).pvalue for d in differences]
    assert accuracy["t_pvalue"].tolist() == pytest.approx(pvalues)
    for row, d, level in zip(accuracy.itertuples(), differences, hand_holm_levels(pvalues)):
        half = stats.t.ppf(1 - level / 2, 5) * d.std(ddof=1) / math.sqrt(6)
        assert [row.ci_low, row.ci_high] == pytest.approx([max(d.mean() - half, -1.0), min(d.mean() + half, 1.0)])
        assert row.ci_level == pytest.approx(1 - level)
        assert row.ci_method == "paired t (seeds)" and row.dominant_source == "seeds (no items)"
    markdown = (directory / "report" / "report.md").read_text(encoding="utf-8")
    assert "every interval and test is over seeds only" in markdown


def test_item_variance_of_a_comparison_and_the_method_bands_agree_with_hand_computations(tmp_path):
    # #22: a comparison's item variance is that of the seed-averaged item differences (the items are shared by
    # the seeds); a method's own interval (figure bands, ranking) stays the two-stage bootstrap.
    directory = make_study(tmp_path / "study", seeds=range(4))
    found = write_and_read_findings(directory)
    row = found[(found["metric"] == "heldout_accuracy") & (found["method_label"] == "gamma")
                & (found["target_flip_rate"] == 0.4)].iloc[0]  # fmt: skip
    item_differences = np.array([items_of(directory, f"gamma-r0.4-s{s}", "heldout_accuracy")
                                 - items_of(directory, f"dpo-r0.4-s{s}", "heldout_accuracy") for s in range(4)])  # fmt: skip
    assert row["item_variance"] == pytest.approx(item_differences.mean(axis=0).var(ddof=1) / ITEMS)
    seed_values = item_differences.mean(axis=1)
    assert row["seed_variance"] == pytest.approx(seed_values.var(ddof=1) / 4)
    intervals = pd.read_csv(directory / "report" / "intervals.csv")
    row = intervals[(intervals["metric"] == "heldout_accuracy") & (intervals["method_label"] == "gamma")
                    & (intervals["target_flip_rate"] == 0.4)].iloc[0]  # fmt: skip
    seeds_items = [[(1.0, items_of(directory, f"gamma-r0.4-s{s}", "heldout_accuracy"))] for s in range(4)]
    replicates = textbook_bootstrap(seeds_items, 4000, np.random.default_rng(2))
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert row["mean"] == pytest.approx(np.mean([items.mean() for ((_, items),) in seeds_items]))
    assert row["ci_low"] == pytest.approx(low, abs=0.08 * (high - low))
    assert row["ci_high"] == pytest.approx(high, abs=0.08 * (high - low))


def test_bootstrap_with_items_spreads_wider_than_seeds_alone_and_names_the_dominant_source():
    rng = np.random.default_rng(5)
    seeds = [[Part(1.0, items.mean(), items)] for items in (rng.integers(0, 2, 50).astype(float) for _ in range(5))]
    with_items = hierarchical_bootstrap(seeds, 4000)
    seeds_only = hierarchical_bootstrap([[Part(1.0, p[0].point)] for p in seeds], 4000)
    assert with_items.high - with_items.low > seeds_only.high - seeds_only.low
    # Binary items of 50 pairs: their sampling noise (var ≈ 0.25/50 per run) is all the seed-to-seed
    # variation there is here, so items dominate.
    assert with_items.dominant_source == "items" and seeds_only.dominant_source == "seeds (no items)"
    assert 0.0 <= with_items.low <= with_items.high <= 1.0


@pytest.mark.parametrize("kind, size", [("binary", 120), ("continuous", 120), ("continuous", 20)])
def test_every_way_of_resampling_items_agrees_with_the_textbook_bootstrap(kind, size):
    # Few distinct values: multinomial counts; many: the normal limit (≥ 30 items) or index draws.
    rng = np.random.default_rng(8)
    draw = (lambda: rng.integers(0, 2, size).astype(float)) if kind == "binary" else (lambda: rng.normal(2, 1, size))
    items = [draw() + 0.05 * seed for seed in range(5)]
    interval = hierarchical_bootstrap([[Part(1.0, values.mean(), values)] for values in items], 6000)
    replicates = textbook_bootstrap([[(1.0, values)] for values in items], 6000, np.random.default_rng(9))
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert interval.low == pytest.approx(low, abs=0.07 * (high - low))
    assert interval.high == pytest.approx(high, abs=0.07 * (high - low))


def test_intervals_of_bounded_metrics_stay_inside_their_bounds(tmp_path):
    directory = make_study(tmp_path / "study", seeds=range(3))
    results = pd.read_parquet(directory / "results.parquet")
    results.loc[results["target_flip_rate"] == 0.0, "gold_win_rate"] = 1.0 - 0.002 * results["seed"]
    results.to_parquet(directory / "results.parquet", index=False)
    declarations = read_metric_declarations(directory)
    intervals = method_intervals(curve_runs(results), ["gold_win_rate"], declarations)
    assert (intervals["ci_high"] <= 1.0).all() and (intervals["ci_low"] >= 0.0).all()
    summary = pd.read_csv(Path(write_report(directory)).with_name("summary.csv"))
    win = summary[(summary["metric"] == "gold_win_rate") & summary["quantity"].isin(["value", "auc"])]
    assert (win["ci_high"] <= 1.0).all() and win["ci_method"].str.contains("clipped").any()


def test_one_seed_claims_no_interval(tmp_path):
    directory = make_study(tmp_path / "study", seeds=(0,))
    found = write_and_read_findings(directory)
    assert set(found["verdict"]) == {"too few seeds"} and found["ci_low"].isna().all()
    markdown = (directory / "report" / "report.md").read_text(encoding="utf-8")
    robustness = markdown.split("## Robustness curves")[1].split("\n## ")[0]
    assert "95 %" not in robustness and "one seed: no interval" in robustness


def test_without_declarations_no_verdict_says_better(tmp_path):
    directory = make_study(tmp_path / "study", declarations=False)
    found = write_and_read_findings(directory)
    assert "better" not in set(found["verdict"]) and "differs" in set(found["verdict"])
    markdown = (directory / "report" / "report.md").read_text(encoding="utf-8")
    assert "has no metrics.json" in markdown and "without better/worse verdicts" in markdown


def test_baseline_falls_back_with_a_note_and_can_be_chosen(tmp_path):
    yaml_text = "name: synthetic\nreport:\n  primary_metrics: [heldout_accuracy, bleu]\n  baseline: ipo\n"
    directory = make_study(tmp_path / "study", study_yaml=yaml_text)
    markdown = Path(write_report(directory)).with_name("report.md").read_text(encoding="utf-8")
    assert "'ipo' is not a method label" in markdown and "'dpo', the first label" in markdown
    assert "bleu not in the results: skipped" in markdown
    found = pd.read_csv(directory / "report" / "findings.csv")
    assert set(found["metric"]) == {"heldout_accuracy"} and set(found["baseline"]) == {"dpo"}

    assert main(["report", str(directory), "--baseline", "smooth"]) == 0
    found = pd.read_csv(directory / "report" / "findings.csv")
    assert set(found["baseline"]) == {"smooth"}
    gamma = found[found["method_label"] == "gamma"]
    assert set(gamma["verdict"]) == {"better"}


# The report as a reader sees it.


def numbers_in(text: str) -> list[str]:
    return re.findall(r"[+-]?\d+\.\d+", text)


def test_findings_come_first_and_every_number_of_the_paragraph_is_in_a_table(default_study):
    markdown = (default_study / "report" / "report.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE)
    assert headings[0] == "Findings" and headings[1] == "Robustness curves" and headings[-1] == "Appendix"
    assert markdown.index("## Findings") < markdown.index("## Appendix") < markdown.index("name: synthetic")
    findings_section = markdown.split("## Findings")[1].split("\n## ")[0]
    paragraph = findings_section.split("### testbed · symmetric")[1].strip().split("\n\n")[0]
    assert paragraph.startswith("Under symmetric noise at 40 % flips, gamma keeps")
    tables = "\n".join(line for line in markdown.splitlines() if line.startswith("|"))
    missing = [number for number in numbers_in(paragraph) if number not in tables]
    assert numbers_in(paragraph) and missing == []
    assert "Ranking" not in paragraph and "smooth keeps" not in paragraph


def test_ranking_orders_by_auc_and_gives_breaking_points(default_study):
    directory = default_study
    table = (directory / "report" / "tables" / "ranking-heldout-accuracy-testbed-symmetric-tiny.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert lines[0].split("|")[2].strip() == "gamma"
    results = pd.read_parquet(directory / "results.parquet")
    intervals = pd.read_csv(directory / "report" / "intervals.csv")
    clean = per_seed(results, "dpo", 0.0, "heldout_accuracy").mean()
    for line in lines:
        label = line.split("|")[2].strip()
        rows = intervals[(intervals["metric"] == "heldout_accuracy") & (intervals["method_label"] == label)
                         & (intervals["quantity"] == "value")]  # fmt: skip
        highs = dict(zip(rows["target_flip_rate"], rows["ci_high"]))
        below = [rate for rate in RATES if highs[rate] < clean]  # the whole interval below dpo's clean mean
        expected = f"{100 * below[0]:.4g} %" if below else "none up to 40 %"
        if label == "dpo":  # #22: the baseline gets no breaking point
            expected = "—"
        assert line.rstrip(" |").endswith(expected)


def test_every_figure_is_png_svg_and_in_one_pdf(default_study):
    report = default_study / "report"
    pngs = sorted((report / "figures").glob("*.png"))
    assert pngs and all(path.with_suffix(".svg").is_file() for path in pngs)
    pdf = (report / "figures.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) == len(pngs)
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert "Diagnostic (measured against the noisy training labels; shown, not ranked)" in markdown


LONG_LABELS = {"dpo": 0.0, "gamma_simpo (γ0 0.4, τ 10)": 0.05, "simpo (γ0 0.5)": 0.0,
               "cdpo (ε 0.2)": 0.01, "rdpo (ε 0.2)": -0.02, "ipo (τ 0.1)": 0.0, "hinge": 0.0}  # fmt: skip


def test_no_legend_or_label_lies_outside_its_figure(tmp_path):
    directory = make_study(tmp_path / "study", seeds=range(3), effects=LONG_LABELS, with_items=False)
    results = pd.read_parquet(directory / "results.parquet")
    runs = curve_runs(results)
    declarations = read_metric_declarations(directory)
    intervals = method_intervals(runs, ["heldout_accuracy"], declarations)
    styles = method_styles(results["method_label"])
    titles = {("testbed", "symmetric", "tiny"): "testbed · symmetric"}
    figures = [robustness_figure(intervals, "heldout_accuracy", styles, titles, declarations.get("heldout_accuracy"))]
    steps = pd.DataFrame({"step": np.arange(1, 41), "mean": np.linspace(20, 1, 40)})
    figures.append(training_figure({label: steps for label in LONG_LABELS}, styles, "testbed, 40 % flips", "loss"))
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"is_flipped": rng.random(400) < 0.4, "reward_gap": rng.normal(size=400),
                          "gamma": rng.normal(1, 0.3, 400)})  # fmt: skip
    figures.append(gamma_figure({"gamma_simpo (γ0 0.4, τ 10)": pairs, "gamma_dpo": pairs}))
    for figure in figures:
        assert texts_outside(figure) == []
        legends = figure.legends
        if legends:
            shown = [text.get_text() for legend in legends for text in legend.get_texts()]
            assert all(not label.endswith("…") for label in shown)
    robustness = figures[0]
    # #22: the axis fits the values (inside the bounds), so that the differences the tables claim show.
    low, high = robustness.axes[0].get_ylim()
    assert 0.0 < low < intervals["ci_low"].min() and intervals["ci_high"].max() < high < 1.0
    assert len(figures[1].axes) >= len(LONG_LABELS)  # one panel per method


def test_method_lines_that_coincide_stay_apart(tmp_path):
    directory = make_study(tmp_path / "study", seeds=range(3), effects={"dpo": 0.0, "copy": 0.0}, with_items=False)
    results = pd.read_parquet(directory / "results.parquet")
    copy = results["method_label"] == "copy"
    results.loc[copy, "heldout_accuracy"] = results.loc[results["method_label"] == "dpo", "heldout_accuracy"].to_numpy()
    declarations = read_metric_declarations(directory)
    intervals = method_intervals(curve_runs(results), ["heldout_accuracy"], declarations)
    figure = robustness_figure(intervals, "heldout_accuracy", method_styles(["dpo", "copy"]),
                               {("testbed", "symmetric", "tiny"): "t"}, declarations.get("heldout_accuracy"))  # fmt: skip
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert not np.allclose(lines["dpo"].get_xdata(), lines["copy"].get_xdata())
    assert lines["dpo"].get_marker() != lines["copy"].get_marker()


def test_findings_need_no_items_lookup_beyond_the_files(tmp_path):
    # findings() on a table alone (no items) resamples seeds and still decides the real effect.
    directory = make_study(tmp_path / "study", with_items=False)
    results = pd.read_parquet(directory / "results.parquet")
    found = findings(curve_runs(results), ["heldout_accuracy"], "dpo", read_metric_declarations(directory))
    assert set(found.loc[found["method_label"] == "gamma", "verdict"]) == {"better"}
    assert math.isclose(found["seeds_with_items"].max(), 0)


def test_compare_puts_the_findings_of_two_studies_side_by_side(tmp_path, capsys):
    first = make_study(tmp_path / "a", seeds=range(4), with_items=False)
    second = make_study(tmp_path / "b", seeds=range(4), with_items=False, effects={"dpo": 0.0, "gamma": 0.0}, seed=9)
    results = pd.read_parquet(second / "results.parquet").assign(noise_model="adversarial", study="other")
    results.to_parquet(second / "results.parquet", index=False)
    out = tmp_path / "comparison.md"
    assert main(["compare", str(first), str(second), "--out", str(out)]) == 0
    markdown = capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == markdown
    assert "| ≠ noise_model | symmetric | adversarial |" in markdown and "| ≠ methods |" in markdown
    assert "| dataset | testbed | testbed |" in markdown
    table = markdown.split("## heldout_accuracy")[1].split("## ")[0]
    row = next(line for line in table.splitlines() if line.startswith("| gamma vs dpo | AUC"))
    synthetic, other = [cell.strip() for cell in row.split("|")[3:5]]
    assert synthetic.endswith("better") and other.endswith("no detectable difference")
    # The same cell as the study's own report.
    write_report(first)
    found = pd.read_csv(first / "report" / "findings.csv")
    auc = found[(found["metric"] == "heldout_accuracy") & (found["method_label"] == "gamma")
                & (found["quantity"] == "auc")].iloc[0]  # fmt: skip
    assert synthetic.startswith(f"{auc['mean_difference']:+.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]")
    assert main(["compare", str(first)]) == 2
