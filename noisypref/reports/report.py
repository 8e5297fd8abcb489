"""``write_report``: a study folder in, DIR/report/{report.html, report.md, figures, tables, CSVs} out.

The report leads with its findings: per condition a paragraph written from the numbers, the headline
table of each primary metric (each method against the baseline at each rate and on the AUC) and the
ranking by AUC; then the robustness figures of the primary metrics, the other metrics, the
diagnostics, the detailed numbers, and an appendix (configuration, study file, run status,
provenance). Each section that lacks its inputs is replaced by a note saying what is missing;
nothing optional makes the report fail.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from noisypref.reports.cleaning import (
    CLEANING_METRICS,
    cleaning_sections,
    fold_cleaning_into_labels,
    ranked_runs,
)
from noisypref.reports.declarations import (
    METRICS_FILE,
    MetricDeclarations,
    ReportSettings,
    read_metric_declarations,
    read_report_settings,
)
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
    SCATTER_MAX_POINTS,
    gamma_figure,
    method_styles,
    metric_name,
    robustness_figure,
    save_figure,
    save_pdf,
    training_figure,
)
from noisypref.reports.findings import BOOTSTRAP_RESAMPLES, findings, method_intervals, ranking
from noisypref.reports.narrative import condition_paragraphs
from noisypref.reports.provenance import provenance, run_provenance
from noisypref.reports.statistics import BOOTSTRAP_MIN_SEEDS, curve_runs, paired_tests, summarise
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
    headline_table,
    methods_table,
    paired_table,
    ranking_table,
    summary_table,
)

logger = logging.getLogger(__name__)

REPORT_FOLDER = "report"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
PDF_FILE = "figures.pdf"
GAMMA_PREFIX = "gamma_"
AUROC_METRICS = ("noise_detection_auroc_gamma", "noise_detection_auroc")
TRAINING_QUANTITIES = ("loss", "heldout_accuracy")
FINDINGS_TITLE = "Findings"


def write_report(
    study_dir: str | Path,
    baseline: str | None = None,
    metrics: list[str] | None = None,
    curve_rate: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Path:
    """Write DIR/report/ for the study folder DIR and return the path of report.html.

    ``baseline``: the method label to compare against (default: ``report.baseline`` of study.yaml,
    else ``"dpo"``; a default that is not a label falls back to the first label, with a note);
    ``metrics``: the metrics to report (default every metric with a value); ``curve_rate``: the
    target flip rate of the training curves and γ diagnostics (default the highest rate of each
    condition); ``resamples``: bootstrap replicates of every interval of the findings. Raises
    ``ValueError`` for a baseline, metric or rate the study does not have, ``FileNotFoundError``
    when DIR has no results.parquet.
    """
    study = load_study(study_dir)
    builder = _ReportBuilder(study, baseline, metrics, curve_rate, resamples)
    return builder.write()


class _ItemsCache:
    """Per-item values of the runs, read once per run: ``(run_id, metric) -> Series by item id``."""

    def __init__(self, study: Study):
        self.study = study
        self.by_run: dict[str, dict[str, pd.Series]] = {}

    def __call__(self, run_id: str, metric: str) -> pd.Series | None:
        if run_id not in self.by_run:
            self.by_run[run_id] = self.study.items(run_id) or {}
        return self.by_run[run_id].get(metric)

    def runs_with_items(self) -> int:
        return sum(bool(metrics) for metrics in self.by_run.values())


class _ReportBuilder:
    def __init__(
        self, study: Study, baseline: str | None, metrics: list[str] | None, curve_rate: float | None,
        resamples: int,
    ):  # fmt: skip
        self.study = study
        # a cleaned run is labelled "<cleaner>+<loss>"; the oracle judge's runs are a reference: only the
        # cleaning section reads them (noisypref.reports.cleaning)
        self.all_results = fold_cleaning_into_labels(study.results)
        self.results = ranked_runs(self.all_results)
        self.runs = curve_runs(self.results)
        self.resamples = resamples
        self.declarations: MetricDeclarations = read_metric_declarations(study.directory)
        self.settings: ReportSettings = read_report_settings(study.study_yaml)
        self.notes: list[str] = []
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
            declared = [name for name in self.declarations.metrics if name in available]
            self.metrics = declared + [name for name in available if name not in declared]
            self.metrics = [name for name in self.metrics if name not in CLEANING_METRICS]  # its own section
        labels = sorted(set(self.results[METHOD]))
        if baseline is not None and baseline not in labels:
            raise ValueError(
                f"baseline {baseline!r} is not a method label of the study (labels: {', '.join(labels)})"
            )
        if baseline is not None:
            self.baseline = baseline
        elif self.settings.baseline in labels:
            self.baseline = self.settings.baseline
        else:
            self.baseline = labels[0] if labels else None
            self.notes.append(
                f"The baseline {self.settings.baseline!r} is not a method label of this study; "
                f"{self.baseline!r}, the first label, is the baseline instead (`--baseline LABEL` to choose)."
            )
        self.primary = [name for name in self.settings.primary_metrics if name in self.metrics]
        skipped = [name for name in self.settings.primary_metrics if name not in self.metrics]
        if skipped:
            self.notes.append(f"Primary metric(s) {', '.join(skipped)} not in the results: skipped.")
        if not self.primary:
            self.primary = [name for name in self.metrics if not self.declarations.get(name).diagnostic][:1]
        if not self.declarations.found:
            self.notes.append(
                f"The study folder has no {METRICS_FILE} (an older study): no metric declares whether higher "
                "or lower is better, so differences are shown without better/worse verdicts or ranks."
            )
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
        self.figures: list = []
        self.stems: set[str] = set()
        self.items = _ItemsCache(study)

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

    def _figure(self, figure, *stem_parts):
        files = save_figure(figure, self.figures_dir, self._stem(*stem_parts))
        self.figures.append(figure)
        return files

    def write(self) -> Path:
        started = time.perf_counter()
        for folder in (self.figures_dir, self.tables_dir):
            if folder.exists():
                shutil.rmtree(folder)  # figures and tables of an earlier report, possibly of other metrics
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self.summary = summarise(self.results, self.metrics, self.declarations)
        self.summary.to_csv(self.report_dir / "summary.csv", index=False)
        if self.runs.empty:
            sections = [Section(FINDINGS_TITLE, [Note("No run has succeeded yet: no numbers to report.")])]
        else:
            self.intervals = method_intervals(self.runs, self.metrics, self.declarations, self.items, self.resamples)
            self.intervals.to_csv(self.report_dir / "intervals.csv", index=False)
            sections = [
                *self._findings(),
                *cleaning_sections(
                    self.all_results, self.baseline, self.primary, self.declarations, self.titles,
                    self._table, self._figure, self._stem,
                ),
                *self._robustness(),
                *self._gamma(),
                *self._training(),
                *self._summary_tables(),
                *self._paired(),
            ]
        sections += self._appendix()
        document = Document(f"noisypref report: {self.study.name}", sections)
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        for table in self.tables:
            (self.tables_dir / f"{table.stem}.md").write_text(table.to_markdown(), encoding="utf-8")
            (self.tables_dir / f"{table.stem}.tex").write_text(table.to_latex(), encoding="utf-8")
        if self.figures:
            save_pdf(self.figures, self.report_dir / PDF_FILE)
        html_path = self.report_dir / HTML_FILE
        html_path.write_text(render_html(document), encoding="utf-8")
        (self.report_dir / MARKDOWN_FILE).write_text(
            render_markdown(document, self.report_dir), encoding="utf-8"
        )
        logger.info("report of %d runs written to %s in %.1f s", len(self.results), self.report_dir,
                    time.perf_counter() - started)  # fmt: skip
        return html_path

    # Sections, in the order the report shows them.

    def _findings(self) -> list[Section]:
        seeds = sorted(set(self.runs[SEED]))
        blocks: list = []
        if self.baseline is None:
            return [Section(FINDINGS_TITLE, [Note("The study has no method label to compare against.")])]
        self.found = findings(self.runs, self.primary, self.baseline, self.declarations, self.items, self.resamples)
        self.found.to_csv(self.report_dir / "findings.csv", index=False)
        with_items = self.items.runs_with_items()
        blocks.append(Text(
            f"Which methods hold up under label noise, against {self.baseline}: {len(self.results)} runs, "
            f"{self.results[METHOD].nunique()} methods, {len(seeds)} seed(s), target flip rates "
            f"{', '.join(percent(rate) for rate in sorted(set(self.results[RATE])))}; primary metric(s) "
            f"{', '.join(self.primary) or 'none'}. "
            + (
                f"Intervals: 95 % paired hierarchical bootstrap ({self.resamples} replicates: seeds, then the "
                "items within each run); p-values: paired t-test over seeds, Holm-adjusted per table."
                if len(seeds) > 1 else "With one seed there are no intervals and no p-values."
            )
        ))  # fmt: skip
        if not with_items:
            self.notes.append(
                "No run has an items.parquet: the intervals resample seeds only (no item-level variance)."
            )
        unfinished = int((self.results["status"] != SUCCEEDED).sum())
        if unfinished:
            self.notes.append(f"{unfinished} run(s) did not succeed (appendix, 'Failed and pending runs'): "
                              "the numbers are partial.")  # fmt: skip
        if len(seeds) == 1:
            self.notes.append("One seed: no interval or p-value can be given; every verdict is 'too few seeds'.")
        blocks += [Note(text) for text in self.notes]
        sections = [Section(FINDINGS_TITLE, blocks)]
        for condition in self.conditions:
            title = self.titles[condition]
            ranked = {}
            ranking_blocks = []
            for metric in self.primary:
                declaration = self.declarations.get(metric)
                ranked[metric] = ranking(self.intervals, self.found, metric, condition, self.baseline, declaration)
                ranking_blocks.append(self._table(ranking_table(
                    ranked[metric], title, self._stem("ranking", metric, *condition), declaration, self.baseline,
                )))  # fmt: skip
            noise_model = condition[CONDITION_KEYS.index("noise_model")]
            paragraphs = condition_paragraphs(
                self.found, ranked, condition, noise_model, self.primary,
                {metric: self.declarations.get(metric) for metric in self.primary}, self.baseline,
            )  # fmt: skip
            blocks = []
            for metric in self.primary:  # per metric: its paragraph, then its headline table
                headline = self._table(headline_table(
                    self.found, metric, condition, title, self._stem("headline", metric, *condition),
                    self.declarations.get(metric),
                ))  # fmt: skip
                blocks += [block for block in (Text(paragraphs[metric]) if metric in paragraphs else None, headline)
                           if block is not None]  # fmt: skip
            if not blocks:
                blocks.append(Note(f"{title}: no comparison with {self.baseline}."))
            blocks += [block for block in ranking_blocks if block is not None]
            sections.append(Section(title, blocks, level=3))
        return sections

    def _robustness_block(self, metric: str, kind: str) -> FigureBlock | None:
        declaration = self.declarations.get(metric)
        figure = robustness_figure(self.intervals, metric, self.styles, self.titles, declaration)
        if figure is None:
            return None
        files = self._figure(figure, "robustness", metric)
        seeds = self.intervals.loc[self.intervals["metric"] == metric, "n_seeds"]
        band = (
            "band = 95 % hierarchical bootstrap interval of the mean"
            if seeds.max() > 1 else "one seed: no interval is drawn"
        )  # fmt: skip
        bounds = (
            f"; the axis shows the whole range [{declaration.low:g}, {declaration.high:g}]"
            if declaration.low is not None and declaration.high is not None else ""
        )  # fmt: skip
        return FigureBlock(files, (
            f"{kind}{declaration.label} ({metric}) against the realised flip rate: mean over seeds, {band}{bounds}. "
            "Methods are offset slightly along x so that coinciding lines stay visible."
        ))  # fmt: skip

    def _robustness(self) -> list[Section]:
        primary = [block for block in (self._robustness_block(m, "") for m in self.primary) if block]
        others = [name for name in self.metrics if name not in self.primary]
        ranked = [name for name in others if not self.declarations.get(name).diagnostic]
        diagnostics = [name for name in others if self.declarations.get(name).diagnostic]
        sections = [Section("Robustness curves", primary or [Note("No primary metric has a value.")])]
        blocks = [block for block in (self._robustness_block(m, "") for m in ranked) if block]
        if blocks:
            sections.append(Section("Other metrics", blocks))
        diagnostic_blocks = []
        for name in diagnostics:
            declaration = self.declarations.get(name)
            reason = (
                "measured against the noisy training labels" if declaration.noisy_labels
                else "not a measure of the trained policy's quality"
            )  # fmt: skip
            block = self._robustness_block(name, f"Diagnostic ({reason}; shown, not ranked): ")
            if block:
                diagnostic_blocks.append(block)
        intro = Text(
            "Diagnostics describe the runs rather than rank the methods (metrics measured against the noisy "
            "training labels, constants of the reference policy, γ margins, training curves): shown, never "
            "given a verdict or a best."
        )
        sections.append(Section("Diagnostics", [intro, *diagnostic_blocks]))
        return sections

    def _summary_tables(self) -> list[Section]:
        sections = [Section("Summary numbers", [Text(
            "Per method: mean ± std over seeds at each target flip rate (mean realised rate in "
            "parentheses), the normalised area under the robustness curve (AUC) and the drop from "
            "the lowest to the highest rate. Intervals: summary.csv (seed level) and intervals.csv "
            "(hierarchical bootstrap)."
        )])]  # fmt: skip
        for metric in self.metrics:
            blocks = []
            for condition in self.conditions:
                stem = self._stem("summary", metric, *condition)
                block = self._table(summary_table(
                    self.summary, metric, condition, self.titles[condition], stem, self.declarations.get(metric)
                ))  # fmt: skip
                if block:
                    blocks.append(block)
            if blocks:
                sections.append(Section(self.declarations.get(metric).label, blocks, level=3))
        return sections

    def _paired(self) -> list[Section]:
        if self.baseline is None:
            return []
        paired = paired_tests(self.results, self.baseline, self.metrics)
        paired.to_csv(self.report_dir / "paired_tests.csv", index=False)
        intro = Text(
            f"Each method against the baseline {self.baseline!r} on every metric: runs of one condition, "
            "target rate and seed share their flipped pairs, so they are paired by seed. Paired t-test "
            "(scipy.stats.ttest_rel) and Wilcoxon signed-rank test (scipy.stats.wilcoxon), two-sided, "
            "Holm-corrected over each table. All values: paired_tests.csv."
        )
        sections = [Section(f"Paired tests against {self.baseline}", [intro])]
        if paired.empty:
            sections[0].blocks.append(Note("No method shares a condition, rate and seed with the baseline."))
            return sections
        meaningless = int((~paired["t_meaningful"]).sum())
        if meaningless:
            sections[0].blocks.append(Note(
                f"{meaningless} of {len(paired)} comparisons have too few seeds (or constant "
                "differences) for a t-test; they carry no p-value."
            ))  # fmt: skip
        for metric in self.metrics:
            blocks = []
            for condition in self.conditions:
                stem = self._stem("paired", metric, *condition)
                block = self._table(paired_table(paired, metric, condition, self.titles[condition], stem))
                if block:
                    blocks.append(block)
            if blocks:
                sections.append(Section(f"{self.declarations.get(metric).label} vs {self.baseline}", blocks, level=3))
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
        section = Section("γ diagnostics", level=3)
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
            files = self._figure(gamma_figure(pairs_by_label), "gamma", *condition, rate)
            section.blocks.append(FigureBlock(files, (
                f"{title}, target flip rate {percent(rate)}, seeds pooled: target margin γ against the final "
                "reward gap (top; both classes as open marks drawn in a shuffled order, at most "
                f"{SCATTER_MAX_POINTS} pairs at random) and the histogram of γ "
                "of each class on one axis with shared bins, each normalised to its own count (bottom; clean "
                "filled, flipped as an outline)."
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
        summary = summarise(gamma_runs, [metric], self.declarations)
        figure = robustness_figure(
            summary, metric, self.styles, self.titles, self.declarations.get(metric), labels=gamma_labels,
            chance_level=0.5,
        )
        if figure is None:
            return Note(f"No value of {metric} for the γ runs.")
        files = self._figure(figure, "gamma", metric)
        band = "band = 95 % interval over seeds" if summary["n_seeds"].max() > 1 else "one seed: no interval"
        return FigureBlock(files, (
            f"Noise detection by the γ methods ({metric}): AUROC of separating flipped from clean training "
            f"pairs against the realised flip rate (0.5 = chance; undefined at 0 %); {band}. A diagnostic: "
            "shown, not ranked."
        ))  # fmt: skip

    def _training(self) -> list[Section]:
        section = Section("Training curves", level=3)
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
            for quantity, by_label in curves.items():
                label = metric_name(quantity)
                figure = training_figure(by_label, self.styles, title_with_rate, label)
                files = self._figure(figure, "training", quantity, *condition, rate)
                section.blocks.append(FigureBlock(files, (
                    f"{title_with_rate}: {label} by training step, mean over seeds; one panel per method, "
                    "each with its own y scale (values are not comparable across panels by height)."
                )))  # fmt: skip
        if records:
            pd.DataFrame(records).to_csv(self.report_dir / "training_curves.csv", index=False)
        return [section]

    def _appendix(self) -> list[Section]:
        counts = self.results["status"].value_counts()
        status_text = ", ".join(f"{count} {status}" for status, count in counts.items())
        seeds = sorted(set(self.results[SEED]))
        overview = [
            Text(
                f"Study {self.study.name!r} in {self.study.directory}: {len(self.results)} runs "
                f"({status_text}); {self.results[METHOD].nunique()} method labels, "
                f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), target flip rates "
                f"{', '.join(percent(rate) for rate in sorted(set(self.results[RATE])))}."
            ),
            Text(
                "Every number is over succeeded runs only. summary.csv's intervals are seed-level: Student's t "
                f"below {BOOTSTRAP_MIN_SEEDS} seeds, a seeded percentile bootstrap from there on; the findings, "
                "figures and intervals.csv use the paired hierarchical bootstrap."
            ),
            self._table(grid_table(self.results)),
        ]
        configuration = [self._table(methods_table(self.results))]
        declared = self._declarations_table()
        configuration.append(declared if declared else Note(f"No {METRICS_FILE}: no metric declarations."))
        if self.study.study_yaml is not None:
            configuration += [Text("The resolved study file (study.yaml):"), Code(self.study.study_yaml, "yaml")]
        else:
            configuration.append(Note("study.yaml not found in the study folder: the configuration is not shown."))
        table = failures_table(self.results)
        failures = [self._table(table) if table else Text("None: every run succeeded.")]
        entries = provenance(self.results) + run_provenance(self.study)
        provenance_table = Table(
            stem="provenance",
            caption=(
                "Software and machine that wrote this report, then those of the runs (from their "
                "result.json); each run's configuration is in runs/<run_id>/config.json."
            ),
            header=["item", "value"],
            rows=[[key, value] for key, value in entries],
            align="ll",
        )
        return [
            Section("Appendix", [Text("Run status, configuration and provenance of the numbers above.")]),
            Section("Run status", overview, level=3),
            Section("Configuration", configuration, level=3),
            Section("Failed and pending runs", failures, level=3),
            Section("Provenance", [self._table(provenance_table)], level=3),
        ]

    def _declarations_table(self) -> TableBlock | None:
        if not self.declarations.found:
            return None
        rows = []
        for name, declaration in self.declarations.metrics.items():
            bounds = "—" if declaration.low is None and declaration.high is None else (
                f"[{'−∞' if declaration.low is None else f'{declaration.low:g}'}, "
                f"{'∞' if declaration.high is None else f'{declaration.high:g}'}]"
            )  # fmt: skip
            rows.append([name, declaration.label, declaration.direction, bounds,
                         "yes" if declaration.noisy_labels else "no", "yes" if declaration.diagnostic else "no"])  # fmt: skip
        return self._table(Table(
            stem="metric_declarations",
            caption=f"Metric declarations ({METRICS_FILE}), as the benchmark wrote them.",
            header=["metric", "label", "direction", "bounds", "noisy labels", "diagnostic"],
            rows=rows, align="llllll",
        ))  # fmt: skip


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
