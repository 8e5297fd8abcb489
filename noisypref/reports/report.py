"""``write_report``: a study folder in, DIR/report/{report.html, report.md, figures, tables, CSVs} out.

The report leads with its findings (``findings_section``): the with/without comparisons, the headroom
recovered, the premise check, then per condition the tables and the paragraph of each primary metric;
then the figures (differences from the baseline with the intervals the tables print, the robustness
curves of the primary metrics), the other metrics, the diagnostics (``diagnostics``), the detailed
numbers, and an appendix (configuration, study file, run status, provenance). Each section that lacks
its inputs is replaced by a note saying what is missing; nothing optional makes the report fail.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from noisypref.report_settings import ReportSettings
from noisypref.reports.appendix import appendix_sections
from noisypref.reports.cleaning import CLEANING_METRICS, fold_cleaning_into_labels, ranked_runs
from noisypref.reports.cleaning_section import cleaning_sections
from noisypref.reports.declarations import (
    METRICS_FILE,
    MetricDeclarations,
    read_metric_declarations,
    read_report_settings,
)
from noisypref.reports.diagnostics import gamma_sections, training_sections
from noisypref.reports.difference_figures import difference_figure, is_constant, per_method_figure
from noisypref.reports.document import (
    Document,
    FigureBlock,
    Note,
    ReportSection,
    TableBlock,
    Text,
    render_html,
    render_markdown,
)
from noisypref.reports.figures import method_styles, robustness_figure, save_figure, save_pdf
from noisypref.reports.findings import paired_tests
from noisypref.reports.findings_section import FINDINGS_TITLE, findings_sections
from noisypref.reports.intervals import BOOTSTRAP_RESAMPLES, method_intervals
from noisypref.reports.statistics import curve_runs, summarise
from noisypref.reports.study import (
    CONDITION_KEYS,
    METHOD,
    MISSING_KEY,
    RATE,
    StudyResults,
    competitor_runs,
    load_study_results,
    metric_columns,
    reference_labels,
)
from noisypref.reports.tables import (
    Table,
    paired_table,
    summary_table,
)

logger = logging.getLogger(__name__)

REPORT_FOLDER = "report"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
PDF_FILE = "figures.pdf"


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
    study = load_study_results(study_dir)
    builder = _ReportBuilder(study, baseline, metrics, curve_rate, resamples)
    return builder.write()


class _ItemsCache:
    """Per-item values of the runs, read once per run: ``(run_id, metric) -> Series by item id``."""

    def __init__(self, study: StudyResults):
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
        self, study: StudyResults, baseline: str | None, metrics: list[str] | None, curve_rate: float | None,
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
        labels = sorted(set(competitor_runs(self.results)[METHOD]))
        references = reference_labels(self.results)
        if baseline is not None and baseline in references:
            raise ValueError(
                f"baseline {baseline!r} is a reference ({references[baseline]}): references are drawn, never "
                f"compared against (labels: {', '.join(labels)})"
            )
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
        self.references = set(references)
        self.styles = method_styles([*labels, *references], self.references)
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

    def new_stem(self, *parts) -> str:
        """A file name from ``parts``, unique within this report."""
        stem = re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(map(str, parts))).strip("-").lower() or "figure"
        unique, number = stem, 1
        while unique in self.stems:
            number += 1
            unique = f"{stem}-{number}"
        self.stems.add(unique)
        return unique

    def add_table(self, table: Table | None) -> TableBlock | None:
        if table is None:
            return None
        self.tables.append(table)
        return TableBlock(table)

    def add_figure(self, figure, *stem_parts):
        files = save_figure(figure, self.figures_dir, self.new_stem(*stem_parts))
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
        self.headroom = pd.DataFrame()
        self.found = pd.DataFrame()
        if self.runs.empty:
            sections = [ReportSection(FINDINGS_TITLE, [Note("No run has succeeded yet: no numbers to report.")])]
        else:
            self.intervals = method_intervals(self.runs, self.metrics, self.declarations, self.items, self.resamples)
            self.intervals.to_csv(self.report_dir / "intervals.csv", index=False)
            sections = [
                *findings_sections(self),
                *cleaning_sections(
                    self.all_results, self.baseline, self.primary, self.declarations, self.titles,
                    self.add_table, self.add_figure, self.new_stem, self.items,
                ),
                *self._robustness(),
                *gamma_sections(self),
                *training_sections(self),
                *self._summary_tables(),
                *self._paired(),
            ]
        sections += appendix_sections(self)
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

    def _robustness_block(self, metric: str, kind: str) -> FigureBlock | Note | None:
        declaration = self.declarations.get(metric)
        if is_constant(self.intervals, metric):
            value = self.intervals.loc[self.intervals["metric"] == metric, "mean"].dropna().iloc[0]
            return Note(f"{kind}{declaration.label} ({metric}) is {value:.4g} for every method and rate: a "
                        "constant, not drawn.")  # fmt: skip
        seeds = self.intervals.loc[self.intervals["metric"] == metric, "n_seeds"]
        band = (
            "band = 95 % hierarchical bootstrap interval of the mean"
            if seeds.max() > 1 else "one seed: no interval is drawn"
        )  # fmt: skip
        if not declaration.comparable:
            figure = per_method_figure(self.intervals, metric, self.styles, declaration)
            if figure is None:
                return None
            return FigureBlock(self.add_figure(figure, "per-method", metric), (
                f"{kind}{declaration.label} ({metric}) against the realised flip rate, one panel per method with "
                f"its own y scale: the values of different methods are not comparable; {band}."
            ))  # fmt: skip
        figure = robustness_figure(self.intervals, metric, self.styles, self.titles, declaration)
        if figure is None:
            return None
        files = self.add_figure(figure, "robustness", metric)
        references = f"; references ({', '.join(sorted(self.references))}) dashed grey" if self.references else ""
        return FigureBlock(files, (
            f"{kind}{declaration.label} ({metric}) against the realised flip rate: mean over seeds, {band}"
            f"{references}; the axis fits the values. Methods are offset slightly along x so that coinciding "
            "lines stay visible."
        ))  # fmt: skip

    def _difference_block(self, metric: str) -> FigureBlock | None:
        declaration = self.declarations.get(metric)
        figure = difference_figure(self.found, metric, self.styles, self.titles, declaration, self.baseline,
                                   self.headroom)  # fmt: skip
        if figure is None:
            return None
        files = self.add_figure(figure, "differences", metric)
        oracle = (
            " Dashed: the oracle minus the baseline (the headroom), with its 95 % interval."
            if not self.headroom.empty and (self.headroom["metric"] == metric).any() else ""
        )  # fmt: skip
        return FigureBlock(files, (
            f"{declaration.label} ({metric}): each method minus {self.baseline} against the realised flip rate, "
            "with the interval the headline table prints beside its verdict (the paired t interval at the test's "
            "Holm level: a bar that misses 0 is a verdict of better or worse); the axis fits the differences."
            + oracle
        ))  # fmt: skip

    def _robustness(self) -> list[ReportSection]:
        differences = [block for block in (self._difference_block(m) for m in self.primary) if block]
        primary = [block for block in (self._robustness_block(m, "") for m in self.primary) if block]
        others = [name for name in self.metrics if name not in self.primary]
        ranked = [name for name in others if not self.declarations.get(name).diagnostic]
        diagnostics = [name for name in others if self.declarations.get(name).diagnostic]
        sections = [ReportSection("Robustness curves", [*differences, *primary] or [Note("No primary metric has a value.")])]
        blocks = [block for block in (self._robustness_block(m, "") for m in ranked) if block]
        if blocks:
            sections.append(ReportSection("Other metrics", blocks))
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
        sections.append(ReportSection("Diagnostics", [intro, *diagnostic_blocks]))
        return sections

    def _summary_tables(self) -> list[ReportSection]:
        sections = [ReportSection("Summary numbers", [Text(
            "Per method: mean ± std over seeds at each target flip rate (mean realised rate in "
            "parentheses), the normalised area under the robustness curve (AUC) and the drop from "
            "the lowest to the highest rate. Intervals: summary.csv (seed level) and intervals.csv "
            "(hierarchical bootstrap)."
        )])]  # fmt: skip
        for metric in self.metrics:
            blocks = []
            for condition in self.conditions:
                stem = self.new_stem("summary", metric, *condition)
                block = self.add_table(summary_table(
                    self.summary, metric, condition, self.titles[condition], stem, self.declarations.get(metric),
                    self.references,
                ))  # fmt: skip
                if block:
                    blocks.append(block)
            if blocks:
                sections.append(ReportSection(self.declarations.get(metric).label, blocks, level=3))
        return sections

    def _paired(self) -> list[ReportSection]:
        if self.baseline is None:
            return []
        paired = paired_tests(self.results, self.baseline, self.metrics, self.declarations, self.items)
        paired.to_csv(self.report_dir / "paired_tests.csv", index=False)
        intro = Text(
            f"Each method against the baseline {self.baseline!r} on every comparable metric, by the one procedure "
            "of the findings: runs of one condition, target rate and seed share their flipped pairs and held-out "
            "items, so they are paired by seed; a paired t-test whose standard error also carries the item "
            "sampling where the runs wrote items.parquet, two-sided, Holm's step-down over each table (all "
            "methods, rates and the AUC of one metric in one condition). On a primary metric every number is the "
            "findings' own. All values: paired_tests.csv. References and metrics that are not comparable across "
            "methods are not tested."
        )
        sections = [ReportSection(f"Paired tests against {self.baseline}", [intro])]
        if paired.empty:
            sections[0].blocks.append(Note("No method shares a condition, rate and seed with the baseline."))
            return sections
        untested = int(paired["t_pvalue"].isna().sum())
        if untested:
            sections[0].blocks.append(Note(
                f"{untested} of {len(paired)} comparisons have too few seeds (or constant "
                "differences) for a t-test; they carry no p-value."
            ))  # fmt: skip
        for metric in self.metrics:
            blocks = []
            for condition in self.conditions:
                stem = self.new_stem("paired", metric, *condition)
                block = self.add_table(paired_table(paired, metric, condition, self.titles[condition], stem))
                if block:
                    blocks.append(block)
            if blocks:
                sections.append(ReportSection(f"{self.declarations.get(metric).label} vs {self.baseline}", blocks, level=3))
        return sections
