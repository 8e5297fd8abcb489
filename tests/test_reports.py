"""noisypref.reports against numbers computed here by hand, and the report as files and in a browser."""

from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import matplotlib.text
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from noisypref.cli import USER_ERROR_STATUS, main
from noisypref.reports import holm_adjust, mean_interval, paired_tests, summarise, write_report
from noisypref.reports.declarations import MetricDeclaration
from noisypref.reports.figures import PANEL_HEIGHT_IN, method_styles, robustness_figure, save_figure
from noisypref.reports.tables import summary_table

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = {"dpo": "dpo", "cdpo (ε 0.2)": "cdpo", "γ-DPO": "gamma_dpo"}
RATES = (0.0, 0.2, 0.4)
STUDY_YAML = "name: tiny\nrates: [0.0, 0.2, 0.4]\nseeds: [0, 1, 2, 3]\n"


# A hand-made study folder, as the study runner writes it.


def make_results(seeds=(0, 1, 2, 3), rates=RATES, methods=METHODS, seed: int = 7) -> pd.DataFrame:
    """One succeeded run per (method, rate, seed) with made-up metrics that worsen with the rate.

    The realised rate differs from the target per seed but is shared by the methods of a seed,
    as it is when the same seed flips the same pairs.
    """
    rng = np.random.default_rng(seed)
    skill = {label: 0.05 * index for index, label in enumerate(sorted(methods))}
    rows = []
    for rate in rates:
        for run_seed in seeds:
            realised = rate + (0.01 * rng.standard_normal() if rate > 0 else 0.0)
            for label, name in methods.items():
                rows.append(
                    {
                        "study": "tiny",
                        "run_id": f"{name}-r{rate:.2f}-s{run_seed}",
                        "dataset": "testbed",
                        "noise_model": "symmetric",
                        "target_flip_rate": rate,
                        "realised_flip_rate": realised,
                        "method_label": label,
                        "method_name": name,
                        "hyperparameters": json.dumps({"beta": 0.1}),
                        "hp_beta": 0.1,
                        "seed": run_seed,
                        "model": "tiny-llama",
                        "heldout_accuracy": 0.72 - (0.4 - skill[label]) * rate + 0.02 * rng.standard_normal(),
                        "gold_win_rate": 0.95 - 0.6 * rate + 0.03 * rng.standard_normal(),
                        "final_loss": 0.45 + 0.5 * rate + 0.02 * rng.standard_normal(),
                        "noise_detection_auroc_gamma": (
                            0.7 + 0.05 * rng.standard_normal() if name == "gamma_dpo" and rate > 0 else np.nan
                        ),
                        "wall_time_s": 3.0 + rng.random(),
                        "status": "succeeded",
                        "failure_reason": None,
                    }
                )
    return pd.DataFrame(rows)


def add_failed_run(results: pd.DataFrame) -> pd.DataFrame:
    failed = {**results.iloc[0].to_dict(), "run_id": "dpo-failed", "seed": 99, "status": "failed",
              "failure_reason": "out of memory", "heldout_accuracy": np.nan}  # fmt: skip
    return pd.concat([results, pd.DataFrame([failed])], ignore_index=True)


def write_study(directory: Path, results: pd.DataFrame, with_run_files: bool = True) -> Path:
    """results.parquet; with ``with_run_files`` also study.yaml, metrics.jsonl for every run and
    pairs.parquet for the γ runs with flips."""
    directory.mkdir(parents=True, exist_ok=True)
    results.to_parquet(directory / "results.parquet", index=False)
    if not with_run_files:
        return directory
    (directory / "study.yaml").write_text(STUDY_YAML, encoding="utf-8")
    rng = np.random.default_rng(11)
    for row in results.itertuples():
        run_dir = directory / "runs" / row.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps({"run_id": row.run_id}), encoding="utf-8")
        if row.status == "succeeded":
            result = {
                "run_id": row.run_id,
                "device": "cpu",
                "versions": {"torch": "2.13.0+cpu", "python": "3.11.7"},
            }
            (run_dir / "result.json").write_text(json.dumps(result), encoding="utf-8")
        with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as log:
            for step in range(1, 41):
                record = {"step": step, "loss": 0.69 * math.exp(-step / 30) + 0.05 * rng.random(),
                          "train_accuracy": 0.5 + step / 100, "learning_rate": 1e-3}  # fmt: skip
                log.write(json.dumps(record) + "\n")
                if step % 10 == 0:
                    log.write(json.dumps({"step": step, "heldout_accuracy": 0.5 + step / 200}) + "\n")
        if row.method_name.startswith("gamma_") and row.target_flip_rate > 0:
            flipped = rng.random(300) < row.target_flip_rate
            reward_gap = np.where(flipped, -0.5, 0.8) + rng.standard_normal(300)
            pairs = pd.DataFrame({"pair_id": [f"p{i}" for i in range(300)], "is_flipped": flipped,
                                  "reward_gap": reward_gap, "gamma": 1.0 + 0.5 * np.tanh(reward_gap)})  # fmt: skip
            pairs.to_parquet(run_dir / "pairs.parquet", index=False)
    return directory


def cell(results: pd.DataFrame, label: str, rate: float, metric: str) -> pd.Series:
    """The metric of one method at one rate, indexed by seed."""
    rows = results[(results["method_label"] == label) & (results["target_flip_rate"] == rate)]
    return rows.set_index("seed")[metric].sort_index()


def hand_t_interval(values) -> tuple[float, float, float, float]:
    values = np.asarray(values, dtype=float)
    n, mean, sd = len(values), values.mean(), values.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def hand_holm(pvalues: list[float]) -> list[float]:
    """Holm (1979) written out: the i-th smallest of m p-values times (m − i + 1), made monotone."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda index: pvalues[index])
    adjusted = [0.0] * m
    for rank, index in enumerate(order):
        candidates = [(m - j) * pvalues[order[j]] for j in range(rank + 1)]
        adjusted[index] = min(1.0, max(candidates))
    return adjusted


def summary_row(summary, label, metric, quantity, rate=None) -> pd.Series:
    rows = summary[(summary["method_label"] == label) & (summary["metric"] == metric)
                   & (summary["quantity"] == quantity)]  # fmt: skip
    if rate is not None:
        rows = rows[rows["target_flip_rate"] == rate]
    assert len(rows) == 1, rows
    return rows.iloc[0]


# Summary numbers.


def test_summary_values_auc_and_drop_match_a_hand_computation():
    results = make_results()
    summary = summarise(results)
    realised = {
        rate: results.loc[results["target_flip_rate"] == rate, "realised_flip_rate"].mean() for rate in RATES
    }
    for label in METHODS:
        per_seed = {rate: cell(results, label, rate, "heldout_accuracy") for rate in RATES}
        for rate in RATES:
            row = summary_row(summary, label, "heldout_accuracy", "value", rate)
            mean, sd, low, high = hand_t_interval(per_seed[rate])
            assert row["n_seeds"] == 4 and row["ci_method"] == "t"
            assert row["realised_flip_rate"] == pytest.approx(realised[rate])
            assert [row["mean"], row["std"], row["ci_low"], row["ci_high"]] == pytest.approx(
                [mean, sd, low, high]
            )

        x = [realised[rate] for rate in RATES]
        aucs, drops = [], []
        for seed in range(4):
            y = [per_seed[rate][seed] for rate in RATES]
            area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
            aucs.append(area / (x[-1] - x[0]))
            drops.append(y[0] - y[-1])
        for quantity, per_seed_values in (("auc", aucs), ("drop", drops)):
            row = summary_row(summary, label, "heldout_accuracy", quantity)
            expected = hand_t_interval(per_seed_values)
            assert [row["mean"], row["std"], row["ci_low"], row["ci_high"]] == pytest.approx(list(expected))


def test_summary_leaves_out_failed_runs_and_unmeasured_metrics():
    results = add_failed_run(make_results())
    summary = summarise(results, ["heldout_accuracy", "noise_detection_auroc_gamma"])
    assert summary_row(summary, "dpo", "heldout_accuracy", "value", 0.0)["n_seeds"] == 4
    auroc = summary[summary["metric"] == "noise_detection_auroc_gamma"]
    assert set(auroc["method_label"]) == {"γ-DPO"}
    assert set(auroc.loc[auroc["quantity"] == "value", "target_flip_rate"]) == {0.2, 0.4}
    # AUC over the rates the metric exists at: 20 % to 40 %.
    assert "20 %–40 %" in summary_row(summary, "γ-DPO", "noise_detection_auroc_gamma", "auc")["note"]


def test_runs_without_flips_start_the_curve_of_every_noise_model():
    # The study runner runs rate 0 once, as noise model "none", for all noise models.
    symmetric = make_results()
    symmetric.loc[symmetric["target_flip_rate"] == 0, "noise_model"] = "none"
    adversarial = make_results(rates=(0.2, 0.4), seed=8).assign(noise_model="adversarial")
    adversarial["run_id"] += "-adversarial"
    results = pd.concat([symmetric, adversarial], ignore_index=True)
    summary = summarise(results, ["heldout_accuracy"])
    assert set(summary["noise_model"]) == {"symmetric", "adversarial"}
    clean = cell(symmetric, "dpo", 0.0, "heldout_accuracy")
    for noise_model, runs in (("symmetric", symmetric), ("adversarial", adversarial)):
        rows = summary[summary["noise_model"] == noise_model]
        row = summary_row(rows, "dpo", "heldout_accuracy", "value", 0.0)
        assert row["mean"] == pytest.approx(clean.mean()) and row["n_seeds"] == 4
        drop = clean - cell(runs, "dpo", 0.4, "heldout_accuracy")
        assert summary_row(rows, "dpo", "heldout_accuracy", "drop")["mean"] == pytest.approx(drop.mean())
    paired = paired_tests(results, "dpo", ["heldout_accuracy"])
    assert len(paired[paired["target_flip_rate"] == 0]) == 2 * 2  # two methods, two noise models


def test_bootstrap_interval_from_ten_seeds_is_seeded_and_matches_its_definition():
    results = make_results(seeds=range(12))
    first, second = summarise(results, ["heldout_accuracy"]), summarise(results, ["heldout_accuracy"])
    pd.testing.assert_frame_equal(first, second)
    assert set(first["ci_method"]) == {"bootstrap"}
    values = cell(results, "dpo", 0.2, "heldout_accuracy").to_numpy()
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, len(values), size=(10_000, len(values)))].mean(axis=1)
    row = summary_row(first, "dpo", "heldout_accuracy", "value", 0.2)
    assert [row["ci_low"], row["ci_high"]] == pytest.approx(list(np.quantile(means, [0.025, 0.975])))
    # Close to the t-interval for well-behaved data, but not it.
    _, _, t_low, t_high = hand_t_interval(values)
    assert row["ci_low"] != pytest.approx(t_low, rel=1e-9)
    assert row["ci_high"] - row["ci_low"] == pytest.approx(t_high - t_low, rel=0.35)

    nine = summarise(make_results(seeds=range(9)), ["heldout_accuracy"])
    assert set(nine["ci_method"]) == {"t"}


def test_mean_interval_of_one_value_has_no_spread():
    interval = mean_interval([0.5, np.nan])
    assert interval.n == 1 and interval.mean == 0.5 and math.isnan(interval.std)
    assert math.isnan(interval.low) and interval.method == "none"


# Paired tests.


def test_paired_tests_match_scipy_and_a_hand_holm_correction():
    # Without items the procedure of the findings is scipy's paired t-test over seeds; Holm runs over the table
    # of one metric in one condition: both methods, every rate and the AUC (the findings' family).
    results = make_results(seeds=range(8))
    paired = paired_tests(results, "dpo", ["heldout_accuracy"])
    assert len(paired) == 2 * (len(RATES) + 1)
    assert "wilcoxon_pvalue" not in paired.columns  # one test per comparison
    x = results.groupby("target_flip_rate")["realised_flip_rate"].mean().sort_index().to_numpy()
    expected_t = []
    for row in paired.itertuples():
        if row.quantity == "auc":
            def auc(label):
                values = np.column_stack([cell(results, label, rate, "heldout_accuracy") for rate in RATES])
                return pd.Series(np.trapezoid(values, x, axis=1) / (x[-1] - x[0]))
            method, baseline = auc(row.method_label), auc("dpo")
        else:
            method = cell(results, row.method_label, row.target_flip_rate, "heldout_accuracy")
            baseline = cell(results, "dpo", row.target_flip_rate, "heldout_accuracy")
        differences = (method - baseline).to_numpy()
        assert row.n_pairs == 8
        assert row.mean_difference == pytest.approx(differences.mean())
        assert row.sd_difference == pytest.approx(differences.std(ddof=1))
        assert row.cohens_dz == pytest.approx(differences.mean() / differences.std(ddof=1))
        assert row.t_pvalue == pytest.approx(stats.ttest_rel(method, baseline).pvalue)
        expected_t.append(row.t_pvalue)
    assert paired["t_pvalue_holm"].tolist() == pytest.approx(hand_holm(expected_t))


def test_holm_adjustment_of_a_worked_example():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06.
    adjusted = holm_adjust([0.01, 0.04, np.nan, 0.03, 0.005])
    assert adjusted[[0, 1, 3, 4]].tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[2])
    assert holm_adjust([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_too_few_seeds_give_no_p_value(tmp_path):
    two = paired_tests(make_results(seeds=(0, 1)), "dpo", ["heldout_accuracy"])
    assert two["t_pvalue"].isna().all() and two["t_pvalue_holm"].isna().all()
    assert (two["verdict"] == "too few seeds").all()
    assert two["note"].str.contains("too few for a t-test").all()

    three = paired_tests(make_results(seeds=range(3)), "dpo", ["heldout_accuracy"])
    assert three["t_pvalue"].notna().all()

    # The report shows no p-value for them.
    write_study(tmp_path / "study", make_results(seeds=(0, 1)), with_run_files=False)
    write_report(tmp_path / "study", metrics=["heldout_accuracy"])
    table = (
        tmp_path / "study/report/tables/paired-heldout-accuracy-testbed-symmetric-tiny-llama.md"
    ).read_text()
    rows = [line for line in table.splitlines() if line.startswith("| cdpo") or line.startswith("| γ-DPO")]
    assert len(rows) == 2 * (len(RATES) + 1)
    for line in rows:
        p_cell, holm_cell = [text.strip() for text in line.split("|")[7:9]]
        assert p_cell == "—" and holm_cell == "—"
        assert "too few" in line


def test_constant_differences_give_no_t_test():
    results = make_results(seeds=range(4))
    dpo = results["method_label"] == "dpo"
    other = results["method_label"] == "cdpo (ε 0.2)"
    results.loc[other, "heldout_accuracy"] = results.loc[dpo, "heldout_accuracy"].to_numpy() + 0.01
    paired = paired_tests(results, "dpo", ["heldout_accuracy"])
    constant = paired[paired["method_label"] == "cdpo (ε 0.2)"]
    assert constant["t_pvalue"].isna().all()
    assert constant["note"].str.contains("constant differences").all()


def test_unknown_baseline_is_an_error():
    with pytest.raises(ValueError, match="baseline"):
        paired_tests(make_results(), "ipo")


# Tables and styles.


def test_best_value_is_bold_only_where_its_interval_is_apart_and_the_metric_is_ranked():
    results = make_results()
    gamma = results["method_label"] == "γ-DPO"
    results.loc[gamma, "heldout_accuracy"] += 0.3
    results.loc[gamma, "final_loss"] -= 0.3
    summary = summarise(results, ["heldout_accuracy", "final_loss", "gold_win_rate"])
    condition = ("testbed", "symmetric", "tiny-llama")
    higher = MetricDeclaration("heldout_accuracy", "held-out accuracy", "higher", 0.0, 1.0)
    lower = MetricDeclaration("final_loss", "final loss", "lower", 0.0, None)
    for metric, declaration in (("heldout_accuracy", higher), ("final_loss", lower)):
        table = summary_table(summary, metric, condition, "t", "stem", declaration)
        column = 1  # 0 % flips
        bold = [row[0] for r, row in enumerate(table.rows) if table.is_bold(r, column)]
        assert bold == ["γ-DPO"]
        assert f"**{table.rows[[row[0] for row in table.rows].index('γ-DPO')][column]}**" in table.to_markdown()
        latex = table.to_latex()
        assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
        assert "\\textbf{" in latex and "$\\gamma$-DPO" in latex
        # The same numbers as a diagnostic, or without a declared direction: nothing is bold.
        for unranked in (replace(declaration, diagnostic=True), replace(declaration, direction="none")):
            table = summary_table(summary, metric, condition, "t", "stem", unranked)
            assert not any(table.is_bold(r, c) for r in range(len(table.rows)) for c in range(len(table.header)))
    # Win rates of all methods drawn alike: their intervals overlap, so no "best".
    table = summary_table(summary, "gold_win_rate", condition, "t", "stem", replace(higher, name="gold_win_rate"))
    assert not any(table.is_bold(r, c) for r in range(len(table.rows)) for c in range(len(table.header)))


def test_method_styles_are_fixed_by_sorted_labels_and_distinct():
    labels = [f"method {index}" for index in range(11)]
    assert method_styles(labels) == method_styles(list(reversed(labels)) + labels[:3])
    styles = method_styles(labels).values()
    assert len({(s.colour, s.marker, s.line_style) for s in styles}) == 11
    assert len({s.marker for s in styles}) == 11  # apart in greyscale too


def test_robustness_figure_panels_are_a_column_wide_with_readable_text():
    results = make_results()
    summary = summarise(results, ["heldout_accuracy"])
    titles = {("testbed", "symmetric", "tiny-llama"): "testbed · symmetric"}
    declaration = MetricDeclaration("heldout_accuracy", "held-out accuracy", "higher", 0.0, 1.0)
    figure = robustness_figure(summary, "heldout_accuracy", method_styles(results["method_label"]), titles, declaration)
    assert figure.get_size_inches()[0] == pytest.approx(3.3)
    texts = [text for text in figure.findobj(matplotlib.text.Text) if text.get_text()]
    assert texts and min(text.get_fontsize() for text in texts) >= 7
    lines = [line for line in figure.axes[0].get_lines() if line.get_label() in METHODS]
    styles = method_styles(METHODS)
    assert {
        line.get_label(): (line.get_color(), line.get_marker(), line.get_linestyle()) for line in lines
    } == {label: (style.colour, style.marker, style.line_style) for label, style in styles.items()}



def test_a_legend_of_many_labels_grows_the_figure_instead_of_squashing_its_panel(tmp_path):
    # A cleaning study's cleaner+loss labels: 15 entries, one legend column on a one-panel figure
    labels = {f"judge{index}+dpo": "dpo" for index in range(15)}
    results = make_results(methods=labels)
    summary = summarise(results, ["heldout_accuracy"])
    titles = {("testbed", "symmetric", "tiny-llama"): "testbed · symmetric"}
    declaration = MetricDeclaration("heldout_accuracy", "held-out accuracy", "higher", 0.0, 1.0)
    figure = robustness_figure(summary, "heldout_accuracy", method_styles(labels), titles, declaration)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_figure(figure, tmp_path, "many")
    assert not [warning for warning in caught if "constrained_layout" in str(warning.message)]
    legend_height = figure.legends[0].get_window_extent().height / figure.dpi
    assert figure.get_size_inches()[1] > PANEL_HEIGHT_IN + legend_height * 0.9  # room for both
    panel_height = figure.axes[0].get_position().height * figure.get_size_inches()[1]
    assert panel_height > 0.5 * PANEL_HEIGHT_IN  # the panel keeps most of its height

# The report on disk.


def test_write_report_writes_every_part(tmp_path):
    study = write_study(tmp_path / "study", add_failed_run(make_results()))
    html_path = write_report(study)
    report = study / "report"
    assert html_path == report / "report.html"
    markdown = (report / "report.md").read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")

    figures = sorted((report / "figures").glob("*.png"))
    stems = {path.stem for path in figures}
    for metric in ("heldout_accuracy", "gold_win_rate", "final_loss", "noise_detection_auroc_gamma"):
        assert f"robustness-{metric.replace('_', '-')}" in stems
    assert any(stem.startswith("training-") for stem in stems)
    assert any(stem.startswith("gamma-testbed") for stem in stems)
    assert all(path.with_suffix(".svg").is_file() for path in figures)

    # Markdown refers to every figure by a relative path; HTML embeds every one and nothing else.
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", markdown)
    assert sorted(referenced) == sorted(f"figures/{path.name}" for path in figures)
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(figures) and all(src.startswith("data:image/png;base64,") for src in sources)
    assert "<script" not in html and "<link" not in html

    for text in (markdown, html):
        assert "name: tiny" in text  # the study file
        assert "out of memory" in text  # the failed run
        assert "git revision" in text and "total wall time" in text
        assert "runs: torch" in text and "2.13.0+cpu" in text
        assert "Paired tests against dpo" in text and "γ diagnostics" in text
    summary = pd.read_csv(report / "summary.csv")
    expected = summarise(add_failed_run(make_results()))
    assert summary["mean"].to_numpy() == pytest.approx(expected["mean"].to_numpy())
    assert (report / "paired_tests.csv").is_file() and (report / "gamma_diagnostics.csv").is_file()
    assert (report / "tables" / "summary-heldout-accuracy-testbed-symmetric-tiny-llama.tex").is_file()


def test_missing_optional_pieces_become_notes(tmp_path):
    methods = {"ipo": "ipo", "hinge": "hinge"}
    study = write_study(tmp_path / "study", make_results(methods=methods), with_run_files=False)
    markdown = write_report(study).with_name("report.md").read_text(encoding="utf-8")
    assert "study.yaml not found" in markdown
    assert "The baseline 'dpo' is not a method label" in markdown and "'hinge', the first label" in markdown
    assert "--baseline" in markdown and "Paired tests against hinge" in markdown
    assert "No γ method" in markdown
    assert "have no metrics.jsonl" in markdown and "no training curves" in markdown

    markdown = write_report(study, baseline="ipo").with_name("report.md").read_text(encoding="utf-8")
    assert "Paired tests against ipo" in markdown


def test_a_study_with_no_succeeded_run_still_gets_a_report(tmp_path):
    results = make_results(seeds=(0,))
    results["status"] = "pending"
    markdown = write_report(write_study(tmp_path / "study", results)).with_name("report.md").read_text()
    assert "No run has succeeded yet" in markdown


def test_report_command(tmp_path, capsys):
    study = write_study(tmp_path / "study", make_results())
    argv = ["report", str(study), "--baseline", "dpo", "--metric", "heldout_accuracy", "--rate", "0.2"]
    assert main(argv) == 0
    assert str(study / "report" / "report.html") in capsys.readouterr().out
    assert (study / "report" / "figures" / "training-loss-testbed-symmetric-tiny-llama-0.2.png").is_file()
    assert not (study / "report" / "figures" / "robustness-final-loss.png").exists()

    for bad in (["--metric", "bleu"], ["--rate", "0.3"], ["--baseline", "ipo"]):
        assert main(["report", str(study), *bad]) == USER_ERROR_STATUS
    assert main(["report", str(tmp_path / "absent")]) == USER_ERROR_STATUS
    assert "error" in capsys.readouterr().err


def test_reports_never_import_torch(tmp_path):
    study = write_study(tmp_path / "study", make_results(seeds=(0, 1)), with_run_files=False)
    code = (
        "import sys, noisypref.reports as reports; "
        f"reports.write_report({str(study)!r}); "
        "assert 'torch' not in sys.modules, 'noisypref.reports imported torch'; "
        "assert not [m for m in sys.modules if m.startswith('noisypref.benchmark')], 'it imported the benchmark'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert completed.returncode == 0, completed.stderr


# The HTML report in a real browser, driven through the DevTools protocol on a pipe.

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)  # fmt: skip


class DevToolsPipe:
    """Chromium started with --remote-debugging-pipe: JSON messages ended by NUL on fds 3 (in) and 4 (out)."""

    def __init__(self, executable: str, profile: Path):
        command_read, self.command_write = os.pipe()
        self.response_read, response_write = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]  # fmt: skip
        actions = [
            (os.POSIX_SPAWN_DUP2, command_read, 3),
            (os.POSIX_SPAWN_DUP2, response_write, 4),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ]
        self.pid = os.posix_spawn(executable, [executable, *flags], os.environ, file_actions=actions)
        os.close(command_read)
        os.close(response_write)
        self.buffer = b""
        self.events: list[dict] = []
        self.next_id = 0

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.command_write, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda m: m.get("id") == self.next_id)
        assert "error" not in reply, reply
        return reply.get("result", {})

    def wait_for(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                message = json.loads(raw)
                if predicate(message):
                    return message
                if "method" in message:
                    self.events.append(message)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.response_read], [], [], remaining)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.response_read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError, AssertionError):
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.command_write)
        os.close(self.response_read)


def console_errors(events: list[dict]) -> list[str]:
    errors = []
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Runtime.exceptionThrown":
            errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
        elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(json.dumps(params.get("args", []))[:300])
        elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", "")[:300])
    return errors


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install -y chromium)")
def test_html_report_shows_every_figure_in_headless_chromium(tmp_path):
    study = write_study(tmp_path / "study", add_failed_run(make_results()))
    declarations = {"heldout_accuracy": {"label": "held-out accuracy", "direction": "higher", "bounds": [0, 1]},
                    "final_loss": {"label": "final loss", "direction": "lower", "bounds": [0, None],
                                   "noisy_labels": True, "diagnostic": True}}  # fmt: skip
    (study / "metrics.json").write_text(json.dumps({"version": 1, "metrics": declarations}), encoding="utf-8")
    html_path = write_report(study)
    figure_count = len(list((study / "report" / "figures").glob("*.png")))
    browser = DevToolsPipe(CHROMIUM, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": html_path.as_uri()}, session=session)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        expression = (
            "JSON.stringify(Array.from(document.images).map(image => ({complete: image.complete, "
            "width: image.naturalWidth, height: image.naturalHeight, "
            "shown: image.getBoundingClientRect().width * image.getBoundingClientRect().height})))"
        )
        result = browser.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
        )
        images = json.loads(result["result"]["value"])
        title = browser.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                             session=session)["result"]["value"]  # fmt: skip
        # Document order: the section headings, and where the first table, paragraph and figure stand.
        order = (
            "JSON.stringify({headings: Array.from(document.querySelectorAll('h2')).map(h => h.textContent), "
            "captions: Array.from(document.querySelectorAll('table caption')).map(c => c.textContent), "
            "tableBeforeFigure: !!(document.querySelector('table').compareDocumentPosition("
            "document.querySelector('figure')) & Node.DOCUMENT_POSITION_FOLLOWING), "
            "firstParagraph: document.querySelector('h3 ~ p').textContent, "
            "findingsTop: document.querySelector('h2').getBoundingClientRect().top, "
            "viewport: window.innerHeight})"
        )
        layout = json.loads(browser.send("Runtime.evaluate", {"expression": order, "returnByValue": True},
                                         session=session)["result"]["value"])  # fmt: skip
    finally:
        browser.close()
    assert title == "noisypref report: tiny"
    assert layout["headings"][0] == "Findings" and layout["headings"][-1] == "Appendix", layout["headings"]
    assert layout["headings"].index("Robustness curves") == 1
    # The findings lead with the premise check, then the primary metric's table, before any figure.
    assert layout["captions"][0].startswith("testbed · symmetric: the premise check"), layout["captions"][0]
    assert layout["captions"][1].startswith("testbed · symmetric: held-out accuracy (heldout_accuracy; higher")
    assert layout["tableBeforeFigure"]
    assert layout["firstParagraph"].startswith("Under symmetric noise at 40 % flips")
    assert layout["findingsTop"] < layout["viewport"]  # the findings start on the first screen
    assert len(images) == figure_count > 0
    assert all(image["complete"] and image["width"] > 0 and image["height"] > 0 for image in images), images
    assert all(image["shown"] > 0 for image in images), images
    assert console_errors(browser.events) == []
