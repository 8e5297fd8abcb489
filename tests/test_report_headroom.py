"""The #22 parts of a report — with/without pairs, headroom recovered, the premise check, references — against
values computed here by hand from a synthetic study with known effects.

The study has two conditions. Under ``symmetric`` noise the oracle (``clean_only``) keeps its clean accuracy
while ``dpo`` loses 0.43 per unit of flip rate: clear headroom; ``cdpo`` recovers half of it, ``gamma_dpo``
and ``robust_dpo`` none, the known-rate reference 80 %, and dpo's reward gap barely detects the flips
(AUROC 0.55: the premise rule fires). Under ``adversarial`` noise the oracle is no better than dpo (no
headroom: every share is undefined) and dpo detects the flips (AUROC 0.8). The held-out items are shared by
every run of a condition, as the benchmark's are; their difficulty is fixed across seeds.
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

from noisypref.report_settings import DeclaredPair, ReportSettings
from noisypref.reports import write_report
from noisypref.reports.declarations import read_metric_declarations, read_report_settings
from noisypref.reports.headroom import headroom
from noisypref.reports.pairs import resolve_pairs
from noisypref.reports.premise import premise_rows, premise_table
from noisypref.reports.statistics import curve_runs
from noisypref.reports.study import load_study_results, normalise_results

SEEDS = range(6)
RATES = (0.0, 0.1, 0.2, 0.4)
ITEMS = 300
# label: method name, reference, base label, β, share of the headroom recovered, level offset, gold offset
METHODS = {
    "dpo": ("dpo", "none", None, 0.1, 0.0, 0.0, 0.0),
    "clean_only": ("dpo", "clean_only", None, 0.1, 1.0, 0.0, 0.0),
    "cdpo": ("cdpo", "none", None, 0.1, 0.5, 0.0, 0.0),
    "gamma_dpo": ("gamma_dpo", "none", "dpo", 0.1, 0.0, 0.0, 0.0),
    "robust_dpo": ("rdpo", "none", None, 0.1, 0.0, 0.0, 0.0),
    "gamma_dpo_b1": ("gamma_dpo", "none", "dpo", 1.0, 0.0, 0.0, 0.0),
    "simpo": ("simpo", "none", None, 2.0, 0.0, 0.08, -0.25),
    "gamma_simpo": ("gamma_simpo", "none", "simpo", 2.0, 0.0, 0.08, -0.25),
    "cdpo_known_rate": ("cdpo", "known_rate", None, 0.1, 0.8, 0.0, 0.0),
}
COMPETITORS = [label for label, spec in METHODS.items() if spec[1] == "none"]
METRICS_JSON = {
    "version": 1,
    "metrics": {
        "heldout_accuracy": {"label": "held-out accuracy", "direction": "higher", "bounds": [0.0, 1.0]},
        "gold_win_rate": {"label": "gold win rate", "direction": "higher", "bounds": [0.0, 1.0]},
        "final_loss": {"label": "final training loss", "direction": "none", "noisy_labels": True,
                       "diagnostic": True, "comparable": False},
        "gold_reward_reference_mean": {"label": "mean gold reward of the reference policy", "direction": "none",
                                       "diagnostic": True, "comparable": False},
        "noise_detection_auroc": {"label": "noise detection AUROC (reward gap)", "direction": "higher",
                                  "bounds": [0.0, 1.0]},
        "noise_detection_auroc_gamma": {"label": "noise detection AUROC (γ)", "direction": "higher",
                                        "bounds": [0.0, 1.0]},
        "noise_detection_auroc_gold": {"label": "noise detection AUROC (gold reward)", "direction": "none",
                                       "bounds": [0.0, 1.0], "diagnostic": True, "comparable": False},
        "label_gold_agreement": {"label": "labels agreeing with the gold order", "direction": "none",
                                 "bounds": [0.0, 1.0], "diagnostic": True, "comparable": False},
    },
}  # fmt: skip
STUDY_YAML = """name: references
seeds: [0, 1, 2, 3, 4, 5]
report:
  primary_metrics: [heldout_accuracy, gold_win_rate]
  baseline: dpo
  pairs: [{method: gamma_dpo, base: robust_dpo}]
"""


def make_reference_study(directory: Path, seed: int = 5) -> Path:
    """Write the study folder described in the module docstring; every held-out accuracy is its items' mean."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    difficulty = {noise: rng.normal(0.0, 0.2, ITEMS) for noise in ("symmetric", "adversarial")}
    rows = []
    for noise, auroc in (("symmetric", 0.55), ("adversarial", 0.8)):
        for rate in RATES:
            if rate == 0 and noise == "adversarial":
                continue  # the 0 % runs are the study runner's noise model "none", shared by both
            noise_model = "none" if rate == 0 else noise
            for run_seed in SEEDS:
                seed_shift = 0.015 * rng.standard_normal()
                uniforms = rng.random(ITEMS)
                win_shift = 0.02 * rng.standard_normal()
                dpo = 0.73 - 0.43 * rate
                oracle = 0.73 - 0.02 * rate if noise == "symmetric" else dpo
                for label, (name, reference, base, beta, share, offset, gold_offset) in METHODS.items():
                    if reference != "none" and rate == 0:
                        continue  # references exist only at rates above 0
                    accuracy = dpo + share * (oracle - dpo) + offset + seed_shift + 0.004 * rng.standard_normal()
                    correct = (uniforms < np.clip(accuracy + difficulty[noise], 0, 1)).astype(float)
                    run_id = f"{label}-{noise_model}-r{rate:.1f}-s{run_seed}"
                    gap_auroc = auroc + 0.01 * rng.standard_normal() if rate > 0 else np.nan
                    rows.append({
                        "study": "references", "run_id": run_id, "dataset": "testbed", "noise_model": noise_model,
                        "target_flip_rate": rate, "realised_flip_rate": rate, "method_label": label,
                        "method_name": name, "hyperparameters": json.dumps({"beta": beta}), "hp_beta": beta,
                        "seed": run_seed, "model": "tiny", "reference": reference, "base_label": base,
                        "heldout_accuracy": correct.mean(),
                        "gold_win_rate": 0.9 - 0.5 * rate + share * (0.3 * rate if noise == "symmetric" else 0.0)
                        + gold_offset + win_shift + 0.01 * rng.standard_normal(),
                        "final_loss": (25.0 if name == "simpo" else 0.6) + rate + 0.01 * rng.standard_normal(),
                        "gold_reward_reference_mean": 0.3,
                        "noise_detection_auroc": gap_auroc,
                        "noise_detection_auroc_gamma": gap_auroc if name.startswith("gamma_") else np.nan,
                        "noise_detection_auroc_gold": 0.82 if rate > 0 else np.nan,
                        "label_gold_agreement": 0.9 * (1 - rate) + 0.1 * rate if reference != "clean_only" else 0.9,
                        "wall_time_s": 1.0, "status": "succeeded", "failure_reason": None,
                    })  # fmt: skip
                    run_dir = directory / "runs" / run_id
                    run_dir.mkdir(parents=True, exist_ok=True)
                    pd.DataFrame({"metric": "heldout_accuracy", "item": [f"pair-{i}" for i in range(ITEMS)],
                                  "value": correct}).to_parquet(run_dir / "items.parquet", index=False)  # fmt: skip
    pd.DataFrame(rows).to_parquet(directory / "results.parquet", index=False)
    (directory / "metrics.json").write_text(json.dumps(METRICS_JSON), encoding="utf-8")
    (directory / "study.yaml").write_text(STUDY_YAML, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    directory = make_reference_study(tmp_path_factory.mktemp("references") / "study")
    write_report(directory)
    return directory


def per_seed(results: pd.DataFrame, label: str, noise: str, rate: float, metric: str) -> pd.Series:
    noise_model = "none" if rate == 0 else noise
    rows = results[(results["method_label"] == label) & (results["noise_model"] == noise_model)
                   & (results["target_flip_rate"] == rate)]  # fmt: skip
    return rows.set_index("seed")[metric].sort_index()


def items(directory: Path, label: str, noise: str, rate: float, seed: int) -> np.ndarray:
    noise_model = "none" if rate == 0 else noise
    frame = pd.read_parquet(directory / "runs" / f"{label}-{noise_model}-r{rate:.1f}-s{seed}" / "items.parquet")
    return frame.sort_values("item")["value"].to_numpy()


def item_means(directory: Path, label: str, base: str, noise: str, rate: float) -> np.ndarray:
    """Mean over seeds of each held-out item's (label − base)."""
    return np.mean([items(directory, label, noise, rate, s) - items(directory, base, noise, rate, s) for s in SEEDS],
                   axis=0)  # fmt: skip


def variance_of_mean(seed_values: np.ndarray, item_values: np.ndarray) -> float:
    return seed_values.var(ddof=1) / len(seed_values) + item_values.var(ddof=1) / len(item_values)


def satterthwaite_df(seed_values: np.ndarray, item_values: np.ndarray) -> float:
    a = seed_values.var(ddof=1) / len(seed_values)
    b = item_values.var(ddof=1) / len(item_values)
    return (a + b) ** 2 / (a**2 / (len(seed_values) - 1) + b**2 / (len(item_values) - 1))


def fieller_by_inversion(n_seeds, d_seeds, n_items, d_items, q: float) -> tuple[float, float]:
    """The ρ whose test of N − ρ·D does not reject at the quantile q, found by a scan and bisection: the
    variance of N − ρD computed from the combined per-seed and per-item values (no quadratic formula)."""

    def accepted(rho: float) -> bool:
        z_seeds, z_items = n_seeds - rho * d_seeds, n_items - rho * d_items
        return abs(z_seeds.mean()) <= q * math.sqrt(variance_of_mean(z_seeds, z_items))

    grid = np.linspace(-5, 5, 20001)
    inside = np.array([accepted(rho) for rho in grid])
    assert inside.any() and not inside[0] and not inside[-1]
    first, last = np.flatnonzero(inside)[[0, -1]]

    def edge(outside: float, within: float) -> float:
        for _ in range(60):
            middle = (outside + within) / 2
            outside, within = (outside, middle) if accepted(middle) else (middle, within)
        return within

    return edge(grid[first - 1], grid[first]), edge(grid[last + 1], grid[last])


# Headroom recovered.


def test_headroom_and_recovered_shares_match_a_hand_computation(study):
    results = pd.read_parquet(study / "results.parquet")
    headroom = pd.read_csv(study / "report" / "headroom.csv")
    rows = headroom[(headroom["noise_model"] == "symmetric") & (headroom["metric"] == "heldout_accuracy")]
    assert sorted(set(rows["target_flip_rate"])) == [0.1, 0.2, 0.4]  # rates of at least 10 %
    oracle = per_seed(results, "clean_only", "symmetric", 0.4, "heldout_accuracy")
    dpo = per_seed(results, "dpo", "symmetric", 0.4, "heldout_accuracy")
    at_top = rows[rows["target_flip_rate"] == 0.4].set_index("method_label")
    assert at_top.loc["clean_only", "headroom"] == pytest.approx((oracle - dpo).mean())
    assert at_top.loc["clean_only", "headroom"] == pytest.approx(0.41 * 0.4, abs=0.03)
    q = stats.t.ppf(0.975, satterthwaite_df((oracle - dpo).to_numpy(), item_means(study, "clean_only", "dpo",
                                                                                     "symmetric", 0.4)))  # fmt: skip
    half = q * math.sqrt(variance_of_mean((oracle - dpo).to_numpy(), item_means(study, "clean_only", "dpo", "symmetric", 0.4)))
    assert [at_top.loc["clean_only", "headroom_low"], at_top.loc["clean_only", "headroom_high"]] == pytest.approx(
        [(oracle - dpo).mean() - half, (oracle - dpo).mean() + half])  # fmt: skip
    for label, true_share in (("cdpo", 0.5), ("gamma_dpo", 0.0), ("robust_dpo", 0.0), ("cdpo_known_rate", 0.8)):
        method = per_seed(results, label, "symmetric", 0.4, "heldout_accuracy")
        share = (method - dpo).mean() / (oracle - dpo).mean()
        assert at_top.loc[label, "share"] == pytest.approx(share)
        assert at_top.loc[label, "share"] == pytest.approx(true_share, abs=0.12)
        assert at_top.loc[label, "share_low"] < true_share < at_top.loc[label, "share_high"]
    assert at_top.loc["cdpo_known_rate", "reference"] == "known_rate"
    assert at_top.loc["gamma_dpo", "share_low"] < 0 < at_top.loc["gamma_dpo", "share_high"]  # the null one


def test_share_interval_is_the_inverted_test_found_by_a_scan(study):
    results = pd.read_parquet(study / "results.parquet")
    headroom = pd.read_csv(study / "report" / "headroom.csv")
    for label, rate in (("cdpo", 0.4), ("gamma_dpo", 0.2), ("cdpo_known_rate", 0.1)):
        row = headroom[(headroom["noise_model"] == "symmetric") & (headroom["metric"] == "heldout_accuracy")
                       & (headroom["target_flip_rate"] == rate) & (headroom["method_label"] == label)].iloc[0]  # fmt: skip
        dpo = per_seed(results, "dpo", "symmetric", rate, "heldout_accuracy").to_numpy()
        numerator = per_seed(results, label, "symmetric", rate, "heldout_accuracy").to_numpy() - dpo
        denominator = per_seed(results, "clean_only", "symmetric", rate, "heldout_accuracy").to_numpy() - dpo
        n_items = item_means(study, label, "dpo", "symmetric", rate)
        d_items = item_means(study, "clean_only", "dpo", "symmetric", rate)
        q = stats.t.ppf(0.975, satterthwaite_df(denominator, d_items))
        low, high = fieller_by_inversion(numerator, denominator, n_items, d_items, q)
        assert [row["share_low"], row["share_high"]] == pytest.approx([low, high], abs=1e-6)


def headroom_of(directory: Path) -> pd.DataFrame:
    study = load_study_results(directory)
    runs = curve_runs(study.results)
    found, _ = headroom(runs, ["heldout_accuracy"], "dpo", read_metric_declarations(directory),
                        lambda run_id, metric: (study.items(run_id) or {}).get(metric))  # fmt: skip
    return found[found["noise_model"] == "symmetric"].set_index(["target_flip_rate", "method_label"])


def test_a_share_over_seeds_only_says_which_side_lacks_items(tmp_path):
    directory = make_reference_study(tmp_path / "study")
    # cdpo lacks the items of two runs at 40 %; the oracle evaluated other items in one run at 20 %.
    for seed in (0, 1):
        (directory / "runs" / f"cdpo-symmetric-r0.4-s{seed}" / "items.parquet").unlink()
    oracle_items = directory / "runs" / "clean_only-symmetric-r0.2-s3" / "items.parquet"
    frame = pd.read_parquet(oracle_items)
    frame.assign(item="other-" + frame["item"]).to_parquet(oracle_items, index=False)  # the same mean
    rows = headroom_of(directory)

    note = rows.loc[(0.4, "cdpo"), "note"]
    assert note == "interval over seeds only: cdpo has no per-item values in 2 of its 6 runs"
    assert rows.loc[(0.4, "gamma_dpo"), "note"] == "" and rows.loc[(0.4, "cdpo_known_rate"), "note"] == ""
    for label in ("cdpo", "gamma_dpo", "cdpo_known_rate"):
        assert rows.loc[(0.2, label), "note"] == (
            "interval over seeds only: the oracle clean_only evaluated other items than the baseline dpo in 1 of 6 seeds"
        )

    # The seeds-only interval is Fieller's over the per-seed values alone, found by the scan.
    results = pd.read_parquet(directory / "results.parquet")
    dpo = per_seed(results, "dpo", "symmetric", 0.4, "heldout_accuracy").to_numpy()
    numerator = per_seed(results, "cdpo", "symmetric", 0.4, "heldout_accuracy").to_numpy() - dpo
    denominator = per_seed(results, "clean_only", "symmetric", 0.4, "heldout_accuracy").to_numpy() - dpo
    no_items = np.zeros(2)
    low, high = fieller_by_inversion(numerator, denominator, no_items, no_items, stats.t.ppf(0.975, len(dpo) - 1))
    assert [rows.loc[(0.4, "cdpo"), "share_low"], rows.loc[(0.4, "cdpo"), "share_high"]] == pytest.approx(
        [low, high], abs=1e-6)  # fmt: skip


def test_share_is_undefined_where_the_headroom_interval_includes_zero(study):
    headroom = pd.read_csv(study / "report" / "headroom.csv")
    rows = headroom[headroom["noise_model"] == "adversarial"]
    oracle = rows[rows["reference"] == "clean_only"]
    assert len(oracle) and ((oracle["headroom_low"] <= 0) & (oracle["headroom_high"] >= 0)).all()
    assert not oracle["headroom_defined"].any()
    assert rows.loc[rows["reference"] != "clean_only", "share"].isna().all()
    markdown = (study / "report" / "report.md").read_text(encoding="utf-8")
    findings = markdown.split("## Findings")[1].split("\n## ")[0]
    sentence = next(line for line in findings.splitlines() if line.startswith("adversarial: At 40 %")
                    and "held-out accuracy" in line)  # fmt: skip
    assert "is not measurable" in sentence and "recovers" not in sentence and "%]" not in sentence
    table = (study / "report" / "tables" / "headroom-heldout-accuracy-testbed-adversarial-tiny.md").read_text()
    shares = [line.split("|")[5].strip() for line in table.splitlines() if line.startswith("| ") and "%" in line.split("|")[1]]
    assert shares and set(shares) == {"oracle", "undefined"}


# With and without.


def test_with_without_pairs_are_the_same_beta_bases_and_the_declared_pairs(study):
    results = normalise_results(pd.read_parquet(study / "results.parquet"))
    settings = read_report_settings((study / "study.yaml").read_text())
    assert settings.pairs == (DeclaredPair("gamma_dpo", "robust_dpo"),)
    pairs, notes = resolve_pairs(results, settings.pairs)
    # By hand: every competitor with a base_label whose base has the same β, then the declared ones.
    expected = []
    for label in sorted(COMPETITORS):
        name, _, base, beta, *_ = METHODS[label]
        if base is not None and METHODS[base][3] == beta:
            expected.append((label, base, False))
    expected.append(("gamma_dpo", "robust_dpo", True))
    assert [(pair.method, pair.base, pair.declared) for pair in pairs] == expected
    assert any("gamma_dpo_b1" in note and "β" in note for note in notes)

    found = pd.read_csv(study / "report" / "with_without.csv")
    assert {tuple(key) for key in found[["method_label", "baseline"]].drop_duplicates().to_numpy()} == {
        (method, base) for method, base, _ in expected
    }
    raw = pd.read_parquet(study / "results.parquet")
    for method, base, _ in expected:
        row = found[(found["noise_model"] == "symmetric") & (found["metric"] == "heldout_accuracy")
                    & (found["method_label"] == method) & (found["baseline"] == base)
                    & (found["target_flip_rate"] == 0.4)].iloc[0]  # fmt: skip
        difference = (per_seed(raw, method, "symmetric", 0.4, "heldout_accuracy")
                      - per_seed(raw, base, "symmetric", 0.4, "heldout_accuracy"))  # fmt: skip
        assert row["mean_difference"] == pytest.approx(difference.mean())
        assert row["verdict"] == "no detectable difference"  # no method here has a true effect over its base


# The premise check.


def test_premise_rule_fires_below_its_threshold_and_not_above(study):
    premise = pd.read_csv(study / "report" / "premise.csv")
    results = pd.read_parquet(study / "results.parquet")
    for noise, fires in (("symmetric", True), ("adversarial", False)):
        gap = premise[(premise["noise_model"] == noise) & (premise["quantity"] == "gap_auroc")
                      & (premise["target_flip_rate"] == 0.1)]  # fmt: skip
        assert gap["mean"].iloc[0] == pytest.approx(per_seed(results, "dpo", noise, 0.1, "noise_detection_auroc").mean())
        assert (gap["mean"].iloc[0] < 0.6) == fires
    markdown = (study / "report" / "report.md").read_text(encoding="utf-8")
    findings = markdown.split("## Findings")[1].split("\n## ")[0]
    symmetric = next(line for line in findings.splitlines() if line.startswith("symmetric: Premise"))
    adversarial = next(line for line in findings.splitlines() if line.startswith("adversarial: Premise"))
    assert "robust losses can only change how strongly gaps are held near zero, not find noisy pairs" in symmetric
    assert "not find noisy pairs" not in adversarial and "It does not fire" in adversarial
    assert "gold reward's: 0.820" in symmetric and "90.0 % at 0 %" in symmetric


def test_premise_says_what_could_not_be_checked_without_gold_or_oracle(tmp_path):
    directory = make_reference_study(tmp_path / "study")
    results = pd.read_parquet(directory / "results.parquet")
    results = results[results["reference"] != "clean_only"].drop(
        columns=["noise_detection_auroc_gold", "label_gold_agreement"])  # fmt: skip
    results.to_parquet(directory / "results.parquet", index=False)
    markdown = write_report(directory, metrics=["heldout_accuracy", "noise_detection_auroc"]).with_name(
        "report.md").read_text(encoding="utf-8")  # fmt: skip
    findings = markdown.split("## Findings")[1].split("\n## ")[0]
    assert "Headroom: not measured — the study has no clean_only reference" in findings
    assert ("Not checked: no gold reward (noise_detection_auroc_gold and label_gold_agreement absent): what a "
            "perfect reward model would detect and how many labels agree with the gold order") in findings


def test_premise_finds_gamma_methods_by_their_gamma_auroc_not_by_their_name(tmp_path):
    # A γ method registered under a name without the gamma_ prefix still gets its γ AUROC in the premise check;
    # a method named gamma_* without a γ AUROC gets none.
    directory = make_reference_study(tmp_path / "study")
    results = pd.read_parquet(directory / "results.parquet")
    plugin = results["method_label"] == "gamma_dpo"
    results.loc[plugin, ["method_label", "method_name"]] = ["margin_plugin", "margin_plugin_dpo"]
    results.loc[results["method_label"] == "gamma_simpo", "noise_detection_auroc_gamma"] = np.nan
    runs = curve_runs(normalise_results(results))
    premise = premise_rows(runs, "dpo")
    gamma = premise[premise["quantity"] == "gamma_auroc"]
    assert set(gamma["method_label"]) == {"margin_plugin", "gamma_dpo_b1"}
    row = gamma[(gamma["method_label"] == "margin_plugin") & (gamma["noise_model"] == "symmetric")
                & (gamma["target_flip_rate"] == 0.2)].iloc[0]  # fmt: skip
    values = per_seed(results, "margin_plugin", "symmetric", 0.2, "noise_detection_auroc_gamma").to_numpy()
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    assert row["n_seeds"] == 6 and row["mean"] == pytest.approx(values.mean())
    assert [row["ci_low"], row["ci_high"]] == pytest.approx([values.mean() - half, values.mean() + half])
    table = premise_table(premise, ("testbed", "symmetric", "tiny"), "symmetric", "premise", "dpo")
    assert "margin_plugin AUROC (γ)" in table.header and "gamma_simpo AUROC (γ)" not in table.header


# References and the order of the findings.


def test_references_are_never_compared_ranked_or_given_a_breaking_point(study):
    report = study / "report"
    references = {"clean_only", "cdpo_known_rate"}
    for name in ("findings.csv", "paired_tests.csv", "with_without.csv", "drops.csv"):
        frame = pd.read_csv(report / name)
        assert not references & set(frame["method_label"]) and not references & set(frame.get("baseline", []))
    for path in (report / "tables").glob("ranking-*.md"):
        text = path.read_text()
        assert "clean_only" not in text and "cdpo_known_rate" not in text
        baseline_line = next(line for line in text.splitlines() if "| dpo |" in line)
        assert baseline_line.rstrip(" |").endswith("—")  # the baseline has no breaking point
    summary = (report / "tables" / "summary-heldout-accuracy-testbed-symmetric-tiny.md").read_text()
    reference_lines = [line for line in summary.splitlines() if "(reference)" in line]
    assert len(reference_lines) == 2 and not any("**" in line for line in reference_lines)


def test_findings_open_with_with_without_then_headroom_then_premise(study):
    markdown = (study / "report" / "report.md").read_text(encoding="utf-8")
    findings = markdown.split("## Findings\n")[1].split("\n### ")[0]
    paragraphs = [text for text in findings.split("\n\n") if text.strip() and not text.startswith("> **Note.**")]
    kinds = []
    for text in paragraphs:
        if "Dynamic margins on" in text:
            kinds.append("with/without")
        elif "noise costs dpo" in text or "headroom" in text:
            kinds.append("headroom")
        elif "Premise check" in text:
            kinds.append("premise")
        else:
            kinds.append("rest")
    assert kinds[0] == "with/without"
    order = [kind for index, kind in enumerate(kinds) if kind not in kinds[:index]]
    assert order[:3] == ["with/without", "headroom", "premise"]
    first = paragraphs[0]
    assert re.search(r"Dynamic margins on dpo \(gamma_dpo − dpo\): held-out accuracy at 40 % flips [+−-]", first)
    assert "on simpo (gamma_simpo − simpo)" in first and "declared pair gamma_dpo − robust_dpo" in first
    headroom = next(text for text in paragraphs if "noise costs dpo" in text)
    assert re.search(r"At 40 % flips, noise costs dpo 0\.1\d\d held-out accuracy \(oracle clean_only 0\.7\d\d vs 0\.5\d\d", headroom)
    assert re.search(r"cdpo recovers \+[45]\d %", headroom) and "references (not ranked): cdpo_known_rate recovers" in headroom


def test_drops_and_the_disagreement_of_the_primary_metrics_are_said(study):
    results = pd.read_parquet(study / "results.parquet")
    drops = pd.read_csv(study / "report" / "drops.csv")
    row = drops[(drops["noise_model"] == "symmetric") & (drops["metric"] == "heldout_accuracy")
                & (drops["method_label"] == "simpo")].iloc[0]  # fmt: skip
    clean = per_seed(results, "simpo", "symmetric", 0.0, "heldout_accuracy")
    top = per_seed(results, "simpo", "symmetric", 0.4, "heldout_accuracy")
    assert row["drop"] == pytest.approx((clean - top).mean()) and row["clean_mean"] == pytest.approx(clean.mean())
    markdown = (study / "report" / "report.md").read_text(encoding="utf-8")
    section = markdown.split("### symmetric")[1].split("\n### ")[0]
    first = section.strip().split("\n\n")[0]
    # simpo is ahead on held-out accuracy at every rate and behind on the gold win rate: one sentence says so.
    assert first.startswith("The primary metrics disagree against dpo:")
    assert "simpo at 40 % flips is better on held-out accuracy" in first and "but worse on gold win rate" in first
    assert "Drop of held-out accuracy from each method's own 0 % level to 40 % flips" in section


def test_figures_show_differences_and_leave_out_constants_duplicates_and_shared_scales(study):
    figures = {path.stem for path in (study / "report" / "figures").glob("*.png")}
    assert {"differences-heldout-accuracy", "differences-gold-win-rate"} <= figures
    assert "per-method-final-loss" in figures and "robustness-final-loss" not in figures
    assert not any("gold-reward-reference-mean" in stem for stem in figures)
    assert not any(stem.startswith("gamma-noise-detection-auroc-gamma") for stem in figures)
    markdown = (study / "report" / "report.md").read_text(encoding="utf-8")
    assert "is 0.3 for every method and rate: a constant, not drawn" in markdown
    assert "its figure would repeat the reward gap's, not drawn" in markdown


def test_a_report_section_the_schema_would_refuse_leaves_the_defaults_and_says_so(caplog):
    # a hand-edited study.yaml: the report still comes out, with its default settings, and says why
    defaults = ReportSettings()
    for text, culprit in (("report: {pairs: null}", "report.pairs"), ("report: {baseline: dpo, what: 1}", "what")):
        caplog.clear()
        assert read_report_settings(text) == defaults
        assert culprit in caplog.text and "uses its default settings" in caplog.text
    assert read_report_settings("report: {baseline: ipo}").baseline == "ipo"  # a valid section is read
