"""``write_report``: a study folder in, DIR/report/{report.html, report.md, figures, tables, CSVs} out.

Each section that lacks its inputs (no baseline, no γ method, no per-pair file, no training log) is
replaced by a note saying what is missing; nothing optional makes the report fail.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from noisypref.reports.document import (
    Code,
    Document,
    FigureBlock,
    Note,
    Section,
    TableBlock,
    Text,
    render_html,
    render_markdown,
)
from noisypref.reports.figures import (
    gamma_figure,
    method_styles,
    metric_name,
    robustness_figure,
    save_figure,
    training_figure,
)
from noisypref.reports.provenance import provenance, run_provenance
from noisypref.reports.statistics import (
    BOOTSTRAP_MIN_SEEDS,
    curve_runs,
    default_baseline,
    paired_tests,
    summarise,
)
from noisypref.reports.study import (
    CONDITION_KEYS,
    METHOD,
    MISSING_KEY,
    RATE,
    SEED,
    SUCCEEDED,
    Study,
    load_study,
    metric_columns,
    percent,
)
from noisypref.reports.tables import (
    Table,
    condition_rows,
    failures_table,
    format_number,
    grid_table,
    methods_table,
    paired_table,
    summary_table,
)

logger = logging.getLogger(__name__)

REPORT_FOLDER = "report"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
GAMMA_PREFIX = "gamma_"
AUROC_METRICS = ("noise_detection_auroc_gamma", "noise_detection_auroc")
TRAINING_QUANTITIES = ("loss", "heldout_accuracy")


def write_report(
    study_dir: str | Path,
    baseline: str | None = None,
    metrics: list[str] | None = None,
    curve_rate: float | None = None,
) -> Path:
    """Write DIR/report/ for the study folder DIR and return the path of report.html.

    ``baseline``: the method label the paired tests compare against (default ``"dpo"`` where that
    label exists); ``metrics``: the metrics to report (default every metric with a value);
    ``curve_rate``: the target flip rate of the training curves and γ diagnostics (default the
    highest rate of each condition). Raises ``ValueError`` for a baseline, metric or rate the
    study does not have, ``FileNotFoundError`` when DIR has no results.parquet.
    """
    study = load_study(study_dir)
    builder = _ReportBuilder(study, baseline, metrics, curve_rate)
    return builder.write()


class _ReportBuilder:
    def __init__(
        self, study: Study, baseline: str | None, metrics: list[str] | None, curve_rate: float | None
    ):
        self.study = study
        self.results = study.results
        self.runs = curve_runs(self.results)
        available = metric_columns(self.results)
        if metrics:
            unknown = [name for name in metrics if name not in available]
            if unknown:
                raise ValueError(
                    f"metric(s) {', '.join(unknown)} not in the results or without any value "
                    f"(available: {', '.join(available) or 'none'})"
                )
            self.metrics = list(dict.fromkeys(metrics))
        else:
            self.metrics = available
        labels = sorted(set(self.results[METHOD]))
        if baseline is not None and baseline not in labels:
            raise ValueError(
                f"baseline {baseline!r} is not a method label of the study (labels: {', '.join(labels)})"
            )
        self.baseline = baseline if baseline is not None else default_baseline(self.results)
        rates = sorted(set(self.results[RATE]))
        if curve_rate is not None and not any(np.isclose(curve_rate, rate) for rate in rates):
            raise ValueError(
                f"rate {curve_rate} is not a target flip rate of the study (rates: {', '.join(map(str, rates))})"
            )
        self.curve_rate = curve_rate
        self.styles = method_styles(labels)
        self.conditions = sorted(set(map(tuple, self.runs[list(CONDITION_KEYS)].itertuples(index=False))))
        self.titles = {condition: self._title(condition) for condition in self.conditions}
        self.report_dir = study.directory / REPORT_FOLDER
        self.figures_dir = self.report_dir / "figures"
        self.tables_dir = self.report_dir / "tables"
        self.tables: list[Table] = []
        self.stems: set[str] = set()

    def _title(self, condition: tuple) -> str:
        varying = [i for i, key in enumerate(CONDITION_KEYS) if self.runs[key].nunique() > 1]
        shown = varying or [0, 1]
        parts = [str(condition[i]) for i in shown if condition[i] != MISSING_KEY]
        return " · ".join(parts) or "all runs"

    def _stem(self, *parts) -> str:
        """A file name from ``parts``, unique within this report."""
        stem = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(map(str, parts))).strip("-").lower() or "figure"
        unique, number = stem, 1
        while unique in self.stems:
            number += 1
            unique = f"{stem}-{number}"
        self.stems.add(unique)
        return unique

    def _table(self, table: Table | None) -> TableBlock | None:
        if table is None:
            return None
        self.tables.append(table)
        return TableBlock(table)

    def write(self) -> Path:
        for folder in (self.figures_dir, self.tables_dir):
            if folder.exists():
                shutil.rmtree(folder)  # figures and tables of an earlier report, possibly of other metrics
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.summary = summarise(self.results, self.metrics)
        self.summary.to_csv(self.report_dir / "summary.csv", index=False)
        sections = [self._overview(), self._configuration()]
        if self.runs.empty:
            sections.append(Section("Results", [Note("No run has succeeded yet: no numbers to report.")]))
        else:
            sections += [
                *self._robustness(),
                *self._summary_tables(),
                *self._paired(),
                *self._gamma(),
                *self._training(),
            ]
        sections += [self._failures(), self._provenance()]
        document = Document(f"noisypref report: {self.study.name}", sections)
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        for table in self.tables:
            (self.tables_dir / f"{table.stem}.md").write_text(table.to_markdown(), encoding="utf-8")
            (self.tables_dir / f"{table.stem}.tex").write_text(table.to_latex(), encoding="utf-8")
        html_path = self.report_dir / HTML_FILE
        html_path.write_text(render_html(document), encoding="utf-8")
        (self.report_dir / MARKDOWN_FILE).write_text(
            render_markdown(document, self.report_dir), encoding="utf-8"
        )
        logger.info("report of %d runs written to %s", len(self.results), self.report_dir)
        return html_path

    # Sections, in the order the report shows them.

    def _overview(self) -> Section:
        counts = self.results["status"].value_counts()
        status_text = ", ".join(f"{count} {status}" for status, count in counts.items())
        seeds = sorted(set(self.results[SEED]))
        blocks = [
            Text(
                f"Study {self.study.name!r} in {self.study.directory}: {len(self.results)} runs "
                f"({status_text}); {self.results[METHOD].nunique()} method labels, "
                f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), target flip rates "
                f"{', '.join(percent(rate) for rate in sorted(set(self.results[RATE])))}."
            ),
            Text(
                "Every number is over succeeded runs only. Means over seeds carry a 95 % confidence "
                f"interval: Student's t below {BOOTSTRAP_MIN_SEEDS} seeds, a seeded percentile "
                "bootstrap from there on. Curves plot each metric against the mean realised flip "
                "rate of each target rate."
            ),
        ]
        unfinished = int((self.results["status"] != SUCCEEDED).sum())
        if unfinished:
            blocks.append(Note(f"{unfinished} run(s) did not succeed (see 'Failed and pending runs'): "
                               "the numbers below are partial."))  # fmt: skip
        blocks.append(self._table(grid_table(self.results)))
        return Section("Overview", blocks)

    def _configuration(self) -> Section:
        blocks = [self._table(methods_table(self.results))]
        if self.study.study_yaml is not None:
            blocks += [Text("The resolved study file (study.yaml):"), Code(self.study.study_yaml, "yaml")]
        else:
            blocks.append(Note("study.yaml not found in the study folder: the configuration is not shown."))
        return Section("Configuration", blocks)

    def _robustness(self) -> list[Section]:
        blocks = []
        if not self.metrics:
            blocks.append(Note("The results have no metric column with a value."))
        for metric in self.metrics:
            figure = robustness_figure(self.summary, metric, self.styles, self.titles)
            if figure is None:
                continue
            files = save_figure(figure, self.figures_dir, self._stem("robustness", metric))
            blocks.append(
                FigureBlock(
                    files,
                    f"{metric_name(metric)} ({metric}) against the realised flip rate: mean over "
                    "seeds, band = 95 % confidence interval.",
                )  # fmt: skip
            )
        return [Section("Robustness curves", blocks)]

    def _summary_tables(self) -> list[Section]:
        sections = [Section("Summary numbers", [Text(
            "Per method: mean ± std over seeds at each target flip rate (mean realised rate in "
            "parentheses), the normalised area under the robustness curve (AUC) and the drop from "
            "the lowest to the highest rate. All numbers with their 95 % intervals: summary.csv."
        )])]  # fmt: skip
        for metric in self.metrics:
            blocks = []
            for condition in self.conditions:
                stem = self._stem("summary", metric, *condition)
                block = self._table(
                    summary_table(self.summary, metric, condition, self.titles[condition], stem)
                )
                if block:
                    blocks.append(block)
            if blocks:
                sections.append(Section(metric_name(metric), blocks, level=3))
        return sections

    def _paired(self) -> list[Section]:
        if self.baseline is None:
            labels = ", ".join(sorted(set(self.results[METHOD])))
            return [Section("Paired tests", [Note(
                f"No method label 'dpo' to compare against: pass --baseline LABEL (labels: {labels})."
            )])]  # fmt: skip
        paired = paired_tests(self.results, self.baseline, self.metrics)
        paired.to_csv(self.report_dir / "paired_tests.csv", index=False)
        intro = Text(
            f"Each method against the baseline {self.baseline!r}: runs of one condition, target rate and "
            "seed share their flipped pairs, so they are paired by seed. Paired t-test "
            "(scipy.stats.ttest_rel) and Wilcoxon signed-rank test (scipy.stats.wilcoxon), two-sided, "
            "Holm-corrected over each table. All values: paired_tests.csv."
        )
        sections = [Section(f"Paired tests against {self.baseline}", [intro])]
        if paired.empty:
            sections[0].blocks.append(Note("No method shares a condition, rate and seed with the baseline."))
            return sections
        meaningless = int((~paired["t_meaningful"]).sum())
        if meaningless:
            sections[0].blocks.append(
                Note(
                    f"{meaningless} of {len(paired)} comparisons have too few seeds (or constant "
                    "differences) for a t-test; they carry no p-value."
                )  # fmt: skip
            )
        for metric in self.metrics:
            blocks = []
            for condition in self.conditions:
                stem = self._stem("paired", metric, *condition)
                block = self._table(paired_table(paired, metric, condition, self.titles[condition], stem))
                if block:
                    blocks.append(block)
            if blocks:
                sections.append(Section(f"{metric_name(metric)} vs {self.baseline}", blocks, level=3))
        return sections

    def _rate_for(self, condition_runs: pd.DataFrame) -> float:
        rates = sorted(set(condition_runs[RATE]))
        if self.curve_rate is None:
            return rates[-1]
        matching = [rate for rate in rates if np.isclose(rate, self.curve_rate)]
        return matching[0] if matching else float("nan")

    def _gamma(self) -> list[Section]:
        gamma_labels = sorted(
            set(self.results.loc[self.results["method_name"].str.startswith(GAMMA_PREFIX), METHOD])
        )
        section = Section("γ diagnostics")
        if not gamma_labels:
            section.blocks.append(Note("No γ method (method name starting with 'gamma_') in the study."))
            return [section]
        gamma_runs = self.runs[self.runs[METHOD].isin(gamma_labels)]
        section.blocks.append(self._gamma_auroc(gamma_runs, gamma_labels))
        rows = []
        for condition in self.conditions:
            condition_runs = condition_rows(gamma_runs, condition)
            if condition_runs.empty:
                continue
            rate = self._rate_for(condition_runs)
            title = self.titles[condition]
            if np.isnan(rate):
                section.blocks.append(Note(f"{title}: no γ run at rate {self.curve_rate}."))
                continue
            pairs_by_label = {}
            for label, label_runs in condition_runs[condition_runs[RATE] == rate].groupby(METHOD, sort=True):
                frames = [self.study.pairs(run_id) for run_id in label_runs["run_id"]]
                frames = [frame for frame in frames if frame is not None and "gamma" in frame]
                if frames:
                    pairs_by_label[label] = pd.concat(frames, ignore_index=True)
                    rows += _gamma_rows(condition, label, rate, len(frames), pairs_by_label[label])
            if not pairs_by_label:
                section.blocks.append(Note(
                    f"{title}: no runs/<run_id>/pairs.parquet with a gamma column for the γ runs at "
                    f"{percent(rate)}: the margin plots are skipped."
                ))  # fmt: skip
                continue
            files = save_figure(
                gamma_figure(pairs_by_label), self.figures_dir, self._stem("gamma", *condition, rate)
            )
            section.blocks.append(FigureBlock(files, (
                f"{title}, target flip rate {percent(rate)}, seeds pooled: target margin γ against the final "
                "reward gap (top; flipped pairs as crosses) and histograms of γ for flipped and clean pairs "
                "(bottom; flipped dashed)."
            )))  # fmt: skip
        if rows:
            gamma_table = pd.DataFrame(rows)
            gamma_table.to_csv(self.report_dir / "gamma_diagnostics.csv", index=False)
            section.blocks.append(self._table(_gamma_table(gamma_table, self.titles)))
        return [section]

    def _gamma_auroc(self, gamma_runs: pd.DataFrame, gamma_labels: list[str]):
        metric = next(
            (name for name in AUROC_METRICS if name in gamma_runs and gamma_runs[name].notna().any()), None
        )
        if metric is None:
            return Note(
                "The results have no noise_detection_auroc_gamma or noise_detection_auroc for the γ runs."
            )
        summary = summarise(gamma_runs, [metric])
        figure = robustness_figure(
            summary, metric, self.styles, self.titles, labels=gamma_labels, chance_level=0.5
        )
        if figure is None:
            return Note(f"No value of {metric} for the γ runs.")
        files = save_figure(figure, self.figures_dir, self._stem("gamma", metric))
        return FigureBlock(files, (
            f"Noise detection by the γ methods ({metric}): AUROC of separating flipped from clean training "
            "pairs against the realised flip rate (0.5 = chance; undefined at 0 %). Numbers in summary.csv "
            "when the metric is selected."
        ))  # fmt: skip

    def _training(self) -> list[Section]:
        section = Section("Training curves")
        records = []
        for condition in self.conditions:
            condition_runs = condition_rows(self.runs, condition)
            rate = self._rate_for(condition_runs)
            title = self.titles[condition]
            if np.isnan(rate):
                section.blocks.append(Note(f"{title}: no run at rate {self.curve_rate}."))
                continue
            curves: dict[str, dict[str, pd.DataFrame]] = {}
            missing = 0
            for label, label_runs in condition_runs[condition_runs[RATE] == rate].groupby(METHOD, sort=True):
                logs = []
                for run_id, seed in zip(label_runs["run_id"], label_runs[SEED]):
                    log = self.study.metrics_log(run_id)
                    if log is None:
                        missing += 1
                    else:
                        logs.append(log.assign(seed=seed))
                if not logs:
                    continue
                log = pd.concat(logs, ignore_index=True)
                for quantity in TRAINING_QUANTITIES:
                    if quantity not in log or log[quantity].isna().all():
                        continue
                    # Mean over seeds at each logged step.
                    curve = (
                        log.dropna(subset=[quantity])
                        .groupby("step")[quantity]
                        .agg(["mean", "size"])
                        .reset_index()
                    )
                    curves.setdefault(quantity, {})[label] = curve
                    records += [
                        {**dict(zip(CONDITION_KEYS, condition)), RATE: rate, METHOD: label, "quantity": quantity,
                         "step": step, "mean": mean, "n_seeds": size}
                        for step, mean, size in curve.itertuples(index=False)
                    ]  # fmt: skip
            if missing:
                section.blocks.append(
                    Note(f"{title}: {missing} run(s) at {percent(rate)} have no metrics.jsonl.")
                )
            if not curves:
                section.blocks.append(
                    Note(f"{title}: no training log at {percent(rate)}: no training curves.")
                )
                continue
            title_with_rate = f"{title}, {percent(rate)} flips"
            figure = training_figure(curves, self.styles, title_with_rate)
            files = save_figure(figure, self.figures_dir, self._stem("training", *condition, rate))
            logged = " and ".join(metric_name(quantity) for quantity in curves)
            section.blocks.append(
                FigureBlock(files, f"{title_with_rate}: {logged} by training step, mean over seeds.")
            )
        if records:
            pd.DataFrame(records).to_csv(self.report_dir / "training_curves.csv", index=False)
        return [section]

    def _failures(self) -> Section:
        table = failures_table(self.results)
        return Section(
            "Failed and pending runs", [self._table(table) if table else Text("None: every run succeeded.")]
        )

    def _provenance(self) -> Section:
        entries = provenance(self.results) + run_provenance(self.study)
        table = Table(
            stem="provenance",
            caption=(
                "Software and machine that wrote this report, then those of the runs (from their "
                "result.json); each run's configuration is in runs/<run_id>/config.json."
            ),
            header=["item", "value"],
            rows=[[key, value] for key, value in entries],
            align="ll",
        )
        return Section("Provenance", [self._table(table)])


def _gamma_rows(condition: tuple, label: str, rate: float, runs: int, pairs: pd.DataFrame) -> list[dict]:
    flipped = pairs["is_flipped"].astype(bool)
    row = {
        **dict(zip(CONDITION_KEYS, condition)),
        METHOD: label,
        RATE: rate,
        "runs": runs,
        "pairs": len(pairs),
        "flipped_pairs": int(flipped.sum()),
        "gamma_mean_flipped": float(pairs.loc[flipped, "gamma"].mean()) if flipped.any() else np.nan,
        "gamma_mean_clean": float(pairs.loc[~flipped, "gamma"].mean()) if (~flipped).any() else np.nan,
    }
    return [row]


def _gamma_table(rows: pd.DataFrame, titles: dict[tuple, str]) -> Table:
    cells = [
        [
            titles[tuple(row[key] for key in CONDITION_KEYS)],
            row[METHOD],
            percent(row[RATE]),
            str(row["runs"]),
            f"{row['flipped_pairs']} / {row['pairs']}",
            format_number(row["gamma_mean_flipped"]),
            format_number(row["gamma_mean_clean"]),
        ]
        for _, row in rows.iterrows()
    ]
    return Table(
        stem="gamma_margins",
        caption="Mean target margin γ of flipped and clean training pairs (seeds pooled).",
        header=["condition", "method", "rate", "runs", "flipped / pairs", "mean γ flipped", "mean γ clean"],
        rows=cells,
        align="llrrrrr",
    )
